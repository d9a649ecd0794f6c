"""The message every sink sends: a CloudEvents 1.0 envelope, in the JSON event format.

Consumers on any platform can read it with a CloudEvents SDK or plain JSON::

    {
      "specversion": "1.0",
      "id": "0190f3a2-...",                 # the outbox event id: de-duplicate on it
      "source": "/outbox-admin",
      "type": "PROJECT.CREATED",
      "subject": "Project/p-1",             # entity_type/entity_id
      "time": "2024-07-01T12:00:00.123456Z",
      "datacontenttype": "application/json",
      "orgid": "org-1",                     # extension attributes: lower-case letters and digits only
      "entitytype": "Project",
      "entityid": "p-1",
      "traceparent": "00-4bf9...-01",       # only for an event published inside a span
      "data": {"name": "Apollo"}            # the payload
    }

An event published inside an OpenTelemetry span carries the CloudEvents distributed
tracing extension: ``traceparent`` (and ``tracestate``) of that publishing span, the
event's origin, as the extension defines them. The sinks send the delivery's own hop
in their transport headers (``outbox_admin.tracing.trace_headers``). So the envelope
depends only on the event, and a redelivery carries the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ..errors import ConfigurationError
from .base import DeliveredEvent

SPECVERSION = "1.0"
DEFAULT_SOURCE = "/outbox-admin"
#: The content type of an encoded envelope (CloudEvents "structured mode").
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
DATA_CONTENT_TYPE = "application/json"
#: Our CloudEvents extension attributes (the spec allows only ``[a-z0-9]`` names).
ORG_ID = "orgid"
ENTITY_TYPE = "entitytype"
ENTITY_ID = "entityid"
#: The CloudEvents distributed tracing extension's attributes (W3C Trace Context).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def check_source(source: str) -> str:
    """``source`` must be a non-empty URI-reference without spaces (CloudEvents requires one)."""
    if not isinstance(source, str) or not source or any(c.isspace() for c in source):
        raise ConfigurationError(f"source must be a non-empty URI reference without spaces, not {source!r}")
    return source


def rfc3339(moment: dt.datetime) -> str:
    """UTC with a ``Z``, as CloudEvents' ``time`` wants; a naive time is taken as UTC (our columns are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def to_envelope(event: DeliveredEvent, *, source: str = DEFAULT_SOURCE) -> dict[str, Any]:
    """The CloudEvents 1.0 attributes of ``event``, with its payload as ``data``."""
    envelope: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": source,
        "type": event.event_type,
        "subject": f"{event.entity_type}/{event.entity_id}",
        "time": rfc3339(event.created_at),
        "datacontenttype": DATA_CONTENT_TYPE,
        ORG_ID: event.org_id,
        ENTITY_TYPE: event.entity_type,
        ENTITY_ID: event.entity_id,
    }
    trace = event.trace_context
    if trace:  # the distributed tracing extension: the publishing span, as stored
        envelope.update({key: trace[key] for key in (TRACEPARENT, TRACESTATE) if trace.get(key)})
    envelope["data"] = event.payload
    return envelope


def encode_envelope(envelope: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; the publisher already made the payload plain JSON."""
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
