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


def require_server(service: str, url: str, default_port: int) -> None:
    """Skip (or fail under CI) unless something accepts connections at ``url``'s host and port."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reason = port_open(parts.hostname or "127.0.0.1", parts.port or default_port)
    if reason is not None:
        unavailable(service, reason)


def require_redis() -> None:
    require_server("Redis", REDIS_URL, 6379)


def require_nats() -> None:
    require_server("NATS", NATS_URL, 4222)


def require_rabbitmq() -> None:
    require_server("RabbitMQ", RABBITMQ_URL, 5672)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
