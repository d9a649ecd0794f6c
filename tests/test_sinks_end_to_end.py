"""End to end across processes: the demo domain publishes via SQL, the CLI dispatches, a consumer reads Redis and NATS.

Five processes share nothing but the servers: the demo domain creates and then
updates projects in PostgreSQL, each mutation publishing its event in its own
transaction; two ``outbox-admin dispatch --config`` processes deliver the events
to a Redis stream and a JetStream stream; a consumer reads both brokers. Delivery
is at least once, so the consumer keeps every copy it gets; de-duplicated on the
event id there must be exactly one per event in the outbox table. Children are
started with the "spawn" context (entry points are module-level functions,
importable as ``tests.test_sinks_end_to_end``) or as CLI subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from outbox_admin import make_engine
from outbox_admin.demo import create_demo_schema, create_project, update_project

from .services import NATS_URL, REDIS_URL, require_nats, require_redis
from .sinks_support import rows

pytestmark = pytest.mark.slow

PROJECTS = 20
COUNT = 2 * PROJECTS  # each project is created, then updated
RESULT_TIMEOUT = 60.0


def run_demo_domain(url: str, projects: int, out: Any) -> None:
    """Child: the demo domain's mutations, each publishing its event in its own transaction; report done."""
    try:
        engine = make_engine(url)
        create_demo_schema(engine)
        ids = []
        for i in range(projects):
            with Session(engine) as session, session.begin():
                ids.append(create_project(session, org_id="acme", name=f"Project {i}", budget=Decimal("100.25") * i).id)
        for i, project_id in enumerate(ids):
            with Session(engine) as session, session.begin():
                update_project(session, project_id, budget=Decimal("99.99") + i)
        engine.dispose()
        out.put(("published", ids))
    except BaseException:  # noqa: BLE001 - report, do not hang the parent
        out.put(("error", traceback.format_exc()))


def consume(
    redis_url: str, stream: str, nats_url: str, nats_stream: str, subjects: str, count: int, ready: Any, out: Any
) -> None:
    """Child: read both brokers until each gave ``count`` distinct events (or time is up); report every copy."""
    try:
        out.put(("consumed", asyncio.run(_consume(redis_url, stream, nats_url, nats_stream, subjects, count, ready))))
    except BaseException:  # noqa: BLE001
        out.put(("error", traceback.format_exc()))


async def _consume(
    redis_url: str, stream: str, nats_url: str, nats_stream: str, subjects: str, count: int, ready: Any
) -> dict[str, list[dict[str, Any]]]:
    import nats
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    nc = await nats.connect(nats_url)
    got: dict[str, list[dict[str, Any]]] = {"redis": [], "nats": []}
    try:
        pull = await nc.jetstream().pull_subscribe(subjects, stream=nats_stream)
        ready.set()
        last = "0-0"
        deadline = time.monotonic() + RESULT_TIMEOUT - 10

        def missing() -> bool:
            return any(len({e["id"] for e in envelopes}) < count for envelopes in got.values())

        while missing() and time.monotonic() < deadline:
            for _, entries in await client.xread({stream: last}, count=100, block=100) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    got["redis"].append(json.loads(fields[b"envelope"]))
            try:
                messages = await pull.fetch(batch=100, timeout=0.1)
            except TimeoutError:  # nothing new within 0.1 s
                messages = []
            for message in messages:
                got["nats"].append(json.loads(message.data))
                await message.ack()
        return got
    finally:
        await nc.close()
        await client.aclose()


async def _jetstream_stream(url: str, stream: str, subjects: list[str] | None) -> None:
    """Create ``stream`` capturing ``subjects``, or delete it when ``subjects`` is None."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        if subjects is None:
            await js.delete_stream(stream)
        else:
            await js.add_stream(name=stream, subjects=subjects)
    finally:
        await nc.close()


class CliDispatcher:
    """An ``outbox-admin dispatch`` process; ``ready`` is set once it says it is dispatching."""

    def __init__(self, config: Path, database_url: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "outbox_admin",
                "dispatch",
                "--config",
                str(config),
                "--interval",
                "0.5",
                "--quiet",
                "--json",
                "--database-url",
                database_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("dispatching from"):  # printed once its signal handlers are in place
                self.ready.set()

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as a service manager would; returns its JSON report."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(RESULT_TIMEOUT)
        self._reader.join(10)
        assert self.proc.returncode == 0, "".join(self.stderr)
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.read())

    def kill(self) -> None:
        """Make sure it is gone and its pipes are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _result(queue: Any, label: str) -> Any:
    kind, value = queue.get(timeout=RESULT_TIMEOUT)
    assert kind == label, value
    return value


def test_events_published_in_one_process_reach_a_consumer_in_another_exactly_once_after_dedup(
    postgres_url: str, tmp_path: Path
) -> None:
    require_redis()
    require_nats()
    token = uuid.uuid4().hex[:12]
    redis_stream, prefix, nats_stream = f"outbox-e2e:{token}", f"outbox_e2e.{token}", f"OUTBOX_E2E_{token}"
    config = tmp_path / "outbox.toml"
    config.write_text(
        f"""
[[sinks]]
type = "redis-streams"
url_env = "E2E_REDIS_URL"
stream = "{redis_stream}"

[[sinks]]
type = "nats-jetstream"
url_env = "E2E_NATS_URL"
subject_prefix = "{prefix}"
stream = "{nats_stream}"
""",
        encoding="utf-8",
    )
    asyncio.run(_jetstream_stream(NATS_URL, nats_stream, [f"{prefix}.>"]))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ready = ctx.Event()
    consumer = ctx.Process(
        target=consume, args=(REDIS_URL, redis_stream, NATS_URL, nats_stream, f"{prefix}.>", COUNT, ready, results)
    )
    publisher = ctx.Process(target=run_demo_domain, args=(postgres_url, PROJECTS, results))
    dispatchers: list[CliDispatcher] = []
    try:
        consumer.start()
        env = {**os.environ, "E2E_REDIS_URL": REDIS_URL, "E2E_NATS_URL": NATS_URL}
        dispatchers = [CliDispatcher(config, postgres_url, env) for _ in range(2)]
        for waiting in (ready, *(d.ready for d in dispatchers)):
            assert waiting.wait(RESULT_TIMEOUT), "a consumer or dispatcher process did not start"
        publisher.start()
        published = _result(results, "published")
        consumed = _result(results, "consumed")
        reports = [d.stop() for d in dispatchers]
    finally:
        for dispatcher in dispatchers:
            dispatcher.kill()
        for child in (consumer, publisher):
            child.join(10)
            if child.is_alive():
                child.kill()
        asyncio.run(_jetstream_stream(NATS_URL, nats_stream, None))
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(redis_stream)
        client.close()

    engine = make_engine(postgres_url)
    events = rows(engine)
    engine.dispose()
    assert len(published) == PROJECTS and len(events) == COUNT
    assert {row.status for row in events.values()} == {"COMPLETED"}
    for broker in ("redis", "nats"):
        envelopes = consumed[broker]
        copies = Counter(e["id"] for e in envelopes)
        assert set(copies) == set(events), broker  # every event arrived, nothing else did
        for envelope in envelopes:  # every copy, duplicates included, is the event as stored
            row = events[envelope["id"]]
            assert (envelope["type"], envelope["orgid"], envelope["subject"], envelope["data"]) == (
                row.event_type,
                "acme",
                f"Project/{row.entity_id}",
                row.payload,
            )
    assert Counter(row.event_type for row in events.values()) == {
        "PROJECT.CREATED": PROJECTS,
        "PROJECT.UPDATED": PROJECTS,
    }
    assert sum(report["completed"] for report in reports) == COUNT  # the two dispatchers shared the work
