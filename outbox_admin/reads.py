"""What every read model shares (``analytics``, ``deliveries``): a reading connection, page bounds,
rows made into frames, and the SQL for the seconds between two stored times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float

from .db import read_connection
from .errors import FilterError
from .filters import prepare_connection

#: The most rows one page of a read model holds.
MAX_PAGE = 10_000


class seconds_between(FunctionElement[float]):
    """SQL for the seconds from the first timestamp to the second."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "postgresql")
@compiles(seconds_between, "sqlite")
def _seconds(element: seconds_between, compiler: Any, **kw: Any) -> str:
    from .sql.rollup import latency_sql  # the rollup's latencies are computed with the very same SQL

    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return latency_sql(compiler.dialect.name, start, end)


class unindexed(FunctionElement[Any]):
    """``column`` in a form no index matches (``+column`` on SQLite, ``COALESCE(column, column)``
    elsewhere), so ordering by it makes the database scan and sort instead of walking an index, and
    joining on it keeps the database from reading the other table first."""

    inherit_cache = True


@compiles(unindexed)
def _unindexed_default(element: unindexed, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    text = compiler.process(column, **kw)
    return f"COALESCE({text}, {text})"


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"+{compiler.process(column, **kw)}"


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for a report: deferred on SQLite, so it never takes the write lock and reads
    beside writers (WAL); the filters' SQL functions registered."""
    with read_connection(engine) as conn:
        yield prepare_connection(conn)


@contextmanager
def time_limited(conn: Connection, seconds: float) -> Iterator[Connection]:
    """Let the statements run on ``conn`` inside the block take ``seconds`` at most, together.

    PostgreSQL: ``statement_timeout`` for the transaction (``set_config(..., true)``: it ends with the
    transaction, so a pooled connection keeps its own setting). SQLite: a progress handler interrupts
    the statement running past the deadline. Either way the statement fails with the driver's error
    (``OperationalError``: canceled, interrupted), for the caller to report.
    """
    if conn.dialect.name == "postgresql":
        milliseconds = max(1, int(seconds * 1000))
        conn.exec_driver_sql("SELECT set_config('statement_timeout', %(ms)s, true)", {"ms": str(milliseconds)})
        yield conn
        return
    driver = conn.connection.driver_connection
    if conn.dialect.name != "sqlite" or driver is None:
        yield conn
        return
    deadline = time.monotonic() + seconds
    driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        yield conn
    finally:
        driver.set_progress_handler(None, 0)


def page_bounds(limit: int, offset: int) -> tuple[int, int]:
    """``(limit, offset)`` checked: 1 to ``MAX_PAGE`` rows, from a non-negative offset."""
    if not 1 <= limit <= MAX_PAGE:
        raise FilterError("limit", f"must be between 1 and {MAX_PAGE}")
    if offset < 0:
        raise FilterError("offset", "must not be negative")
    return limit, offset


def rows_frame(rows: Any, columns: list[str], times: tuple[str, ...] = ()) -> pd.DataFrame:
    """A DataFrame of ``rows`` with ``columns``; the ``times`` columns as UTC-aware datetimes."""
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    for name in times:
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame
