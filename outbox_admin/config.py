"""Settings: one frozen object, read from the environment only when asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigurationError
from .payload import DEFAULT_MAX_PAYLOAD_BYTES

DEFAULT_DATABASE_FILE = "outbox.db"
DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_BATCH_SIZE = 50
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LEASE_SECONDS = 60.0


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
    return value


#: The spellings of "retry forever" (``max_attempts=None``) for OUTBOX_MAX_ATTEMPTS and ``--max-attempts``.
FOREVER = ("none", "forever", "0")


def parse_max_attempts(
    raw: str, name: str = "OUTBOX_MAX_ATTEMPTS", *, forever: tuple[str, ...] = FOREVER
) -> int | None:
    """A positive number of attempts, or None for one of ``forever`` (``none``, ``forever``, ``0``): retry forever.

    One parser for the variable and the CLI's option; ``name`` is what a refusal (``ConfigurationError``)
    names. The CLI passes ``forever=("none", "forever")``: an option's ``0`` reads as a typo, not as a wish.
    """
    text = raw.strip().lower()
    if text in forever:
        return None
    return int(_number({name: text}, name, DEFAULT_MAX_ATTEMPTS, int, 1))


@dataclass(frozen=True)
class Settings:
    """Everything the CLI, the dashboard and the service need to know.

    ``Settings()`` gives the defaults; ``Settings.from_env()`` reads ``OUTBOX_*``
    variables. ``max_attempts=None`` retries forever, as the original does.
    """

    database_url: str | None = None  # None: SQLite file outbox.db in the working directory
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    batch_size: int = DEFAULT_BATCH_SIZE
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``OUTBOX_*`` environment variables (or the given mapping)."""
        env = os.environ if env is None else env
        max_attempts = parse_max_attempts(env.get("OUTBOX_MAX_ATTEMPTS", ""))
        return cls(
            database_url=env.get("OUTBOX_DATABASE_URL") or None,
            interval_seconds=_number(env, "OUTBOX_INTERVAL_SECONDS", DEFAULT_INTERVAL_SECONDS, float, 0.01),
            batch_size=int(_number(env, "OUTBOX_BATCH_SIZE", DEFAULT_BATCH_SIZE, int, 1)),
            max_attempts=max_attempts,
            lease_seconds=_number(env, "OUTBOX_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, float, 0.1),
            max_payload_bytes=int(_number(env, "OUTBOX_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES, int, 1)),
        )
