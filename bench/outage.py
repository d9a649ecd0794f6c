"""A sink outage under a running dispatcher, with the default settings: how many events end FAILED?

The field report behind it: a Redis sink down for 40 s with the default settings
(batch 50, 5 attempts, backoff from 2 s) dead-lettered 5,003 of 20,000 events,
which then needed a person. Here a private ``redis-server`` on a free port is
killed once the service has delivered ``--before`` events, kept down for
``--outage`` seconds, and started again; the run ends when every event is
COMPLETED or FAILED. The same scenario runs with the circuit breakers on (the
default) and off (``breaker=None``, the old behaviour), one after the other in
the same run.

    python -m bench.outage --db sqlite             # 20,000 events, 40 s outage
    python -m bench.outage --db sqlite --smoke     # 500 events, 2 s outage
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from outbox_admin import Dispatcher, DispatcherService, EventSpec, make_engine, publish_outbox_events
from outbox_admin.breaker import BreakerPolicy
from outbox_admin.handlers import RedisStreamSink
from outbox_admin.models import DEFAULT_TABLES

from . import common

EV = DEFAULT_TABLES.events


class PrivateRedis:
    """redis-server on a free port, keeping nothing on disk."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-bench-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        program = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*argv, "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_scenario(url: str, *, events: int, before: int, outage: float, breaker: bool) -> dict[str, Any]:
    engine = make_engine(url)
    redis = PrivateRedis()
    sink = RedisStreamSink(f"redis://127.0.0.1:{redis.port}/0", stream="outbox")
    # The defaults (batch 50, 5 attempts, Backoff(), 60 s lease, 30 s interval), breakers on or off.
    dispatcher = Dispatcher(engine, [sink], **({} if breaker else {"breaker": None}))
    if breaker:
        assert dispatcher.breaker_policy == BreakerPolicy()
    service = DispatcherService(dispatcher)
    try:
        redis.start()
        with engine.begin() as conn:
            for start in range(0, events, 1000):
                specs = [
                    EventSpec("org-1", "PROJECT.CREATED", "Project", f"p-{i}", {"i": i})
                    for i in range(start, min(events, start + 1000))
                ]
                publish_outbox_events(conn, specs)
        service.start()
        while service.status().totals.completed < before:
            time.sleep(0.01)
        redis.kill()
        time.sleep(outage)  # the outage itself: the scenario, not synchronisation
        redis.start()
        back = time.perf_counter()
        while True:
            with engine.connect() as conn:
                counts = Counter(dict(conn.execute(select(EV.c.status, func.count()).group_by(EV.c.status)).all()))
            if set(counts) <= {"COMPLETED", "FAILED"}:
                break
            service.wake()
            time.sleep(0.2)
        drained_after = time.perf_counter() - back
        with engine.connect() as conn:
            attempts = int(conn.execute(select(func.coalesce(func.sum(EV.c.retry_count), 0))).scalar_one())
        return {
            "failed": counts.get("FAILED", 0),
            "completed": counts.get("COMPLETED", 0),
            "attempts_spent": attempts,
            "drained_after_seconds": drained_after,
        }
    finally:
        service.stop()
        dispatcher.close()
        redis.destroy()
        engine.dispose()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--before", type=int, default=2_000, help="events delivered before Redis is killed")
    p.add_argument("--outage", type=float, default=40.0, help="seconds Redis stays down")
    p.set_defaults(db="sqlite")
    args = p.parse_args(argv)
    if args.smoke:
        args.events, args.before, args.outage = 500, 50, 2.0
    report = common.Report("outage", {"events": args.events, "outage_s": args.outage, "before": args.before})
    for db in common.backends(args.db):
        for breaker in (True, False):
            with common.temp_database(db, postgres_url=args.postgres_url) as url:
                result = run_scenario(url, events=args.events, before=args.before, outage=args.outage, breaker=breaker)
            label = "breakers (default)" if breaker else "no breakers"
            detail = f"{result['attempts_spent']} attempts spent, drained {result['drained_after_seconds']:.1f} s after"
            report.add(db, f"{label}: FAILED events", [max(result["failed"], 0)], unit="events", detail=detail)
            report.add(db, f"{label}: attempts spent", [result["attempts_spent"]], unit="attempts")
            if breaker:
                report.target(db, "FAILED events after the outage, breakers on", result["failed"], "<=", 0)
    return report.finish(args)


if __name__ == "__main__":
    common.run_main(main)
