"""The dashboard's pages, one module each; they read like a description of the screen.

All data comes from ``analytics`` and every write goes through ``admin`` or
``demo``; nothing here knows SQL.
"""

from .events import events
from .failures import failures
from .live import live
from .overview import overview
from .publish import publish

__all__ = ["events", "failures", "live", "overview", "publish"]
