"""Reaching the real servers the tests use: skip with a reason, or fail under CI.

``OUTBOX_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns every "server not
reachable" skip into a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import socket

import pytest

PG_ADMIN_URL = os.environ.get("OUTBOX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")
RABBITMQ_URL = os.environ.get("OUTBOX_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def services_required() -> bool:
    return os.environ.get("OUTBOX_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def unavailable(service: str, reason: str) -> None:
    """Skip the test (or fail it when services are required) because ``service`` is unreachable."""
    message = f"{service} is not reachable: {reason}"
    if services_required():
        pytest.fail(f"{message} (OUTBOX_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 1.0) -> str | None:
    """None when something accepts connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"
