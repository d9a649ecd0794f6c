"""Async publishing: ``await apublish_outbox_event(session, ...)`` for ``AsyncSession`` and ``AsyncConnection``.

Each function runs its synchronous twin in ``outbox_admin.publisher`` on the sync
``Session`` or ``Connection`` underneath, through SQLAlchemy's greenlet bridge
(``run_sync``), so every rule is the publisher's own and is never written twice: the
transaction must be begun, the write goes into it before the await returns
(buffered inside ``aoutbox_batch`` until the next statement or the commit), an
idempotency key returns the stored event, a refusal raises the same ``OutboxError``
before anything is written, and the commit wakes this process's dispatchers (the
sync objects' commit events fire under ``await session.commit()``). The statements
run on asyncpg (``$1`` parameters, see ``outbox_admin.sql.dialect_style``) or aiosqlite;
``outbox_admin.db.make_async_engine`` makes an engine prepared as ``make_engine`` does.

Why the check before ``run_sync``: an ``AsyncSession`` begins a transaction by itself
on its first statement, so an unbegun one would be refused only by the sync publisher's
own test, with a hint written for sync code. Here it is refused first, with an async hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, scoped_session

from .errors import NotInTransactionError
from .event_types import EventTypeRegistry
from .models import DEFAULT_TABLES, OutboxEvent, OutboxTables
from .payload import DEFAULT_MAX_PAYLOAD_BYTES
from .publisher import EventSpec, flush_outbox, outbox_batch, publish_outbox_event, publish_outbox_events

_USAGE = (
    "apublish_outbox_event needs the transaction of your change: "
    "`async with AsyncSession(engine) as s, s.begin(): ...; await apublish_outbox_event(s, ...)` "
    "or `async with engine.begin() as conn: await apublish_outbox_event(conn, ...)`"
)

AsyncTx = AsyncSession | AsyncConnection


async def apublish_outbox_event(
    tx: AsyncTx,
    *,
    org_id: str,
    event_type: str,
    entity_type: str,
    entity_id: str | int,
    payload: Any = None,
    idempotency_key: str | None = None,
    registry: EventTypeRegistry | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> OutboxEvent:
    """Publish one event in ``tx``'s begun transaction; ``publish_outbox_event``'s rules and result."""
    target = _begun(tx)
    return await target.run_sync(
        lambda sync: publish_outbox_event(
            sync,
            org_id=org_id,
            event_type=event_type,
            entity_type=entity_type,
            entity_id=entity_id,
            payload=payload,
            idempotency_key=idempotency_key,
            registry=registry,
            tables=tables,
            max_payload_bytes=max_payload_bytes,
        )
    )


async def apublish_outbox_events(
    tx: AsyncTx,
    events: Iterable[EventSpec | Mapping[str, Any]],
    *,
    registry: EventTypeRegistry | None = None,
    tables: OutboxTables = DEFAULT_TABLES,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
) -> list[OutboxEvent]:
    """Publish many events in ``tx``'s transaction; every one is checked before any is written."""
    target = _begun(tx)
    return await target.run_sync(
        lambda sync: publish_outbox_events(
            sync, events, registry=registry, tables=tables, max_payload_bytes=max_payload_bytes
        )
    )


@asynccontextmanager
async def aoutbox_batch(tx: AsyncTx) -> AsyncIterator[None]:
    """``outbox_batch`` for async code: ``async with aoutbox_batch(session): ... await apublish_outbox_event(...)``.

    Events published inside the block are buffered and written in batches: before the
    connection's next statement, at ``await session.commit()`` and at the latest when
    the block exits (a rollback drops them). It enters and leaves the sync scope itself,
    each time in the greenlet bridge, since leaving it writes the buffer.
    """
    target = _begun(tx)
    scope = await target.run_sync(lambda sync: _enter(outbox_batch(sync)))
    try:
        yield
    except BaseException as exc:
        # The sync scope's own exit: writes the buffer, notes a failure on ``exc``; ``exc`` goes on.
        await target.run_sync(_leave, scope, exc)
        raise
    await target.run_sync(_leave, scope, None)


async def aflush_outbox(tx: AsyncTx) -> None:
    """Write the events an ``aoutbox_batch`` buffered in ``tx``'s transaction now (``flush_outbox``)."""
    await _begun(tx).run_sync(flush_outbox)


def _enter(scope: Any) -> Any:
    scope.__enter__()
    return scope


def _leave(_sync: object, scope: Any, exc: BaseException | None) -> None:
    if exc is None:
        scope.__exit__(None, None, None)
    else:
        scope.__exit__(type(exc), exc, exc.__traceback__)  # False once the scope re-raised exc; the caller raises it


def _begun(tx: object) -> AsyncTx:
    """``tx`` if an ``AsyncSession``/``AsyncConnection`` with a transaction begun; else ``NotInTransactionError``."""
    if isinstance(tx, async_scoped_session):
        tx = tx()
    if isinstance(tx, AsyncSession):
        if not tx.in_transaction():
            raise NotInTransactionError(f"the async session has no transaction begun; {_USAGE}")
        return tx
    if isinstance(tx, AsyncConnection):
        try:
            begun = tx.in_transaction()
        except InvalidRequestError:  # AsyncContextNotStarted: `engine.connect()` never awaited
            begun = False
        if not begun:
            raise NotInTransactionError(f"the async connection has no transaction begun; {_USAGE}")
        return tx
    if isinstance(tx, AsyncEngine):
        raise NotInTransactionError(f"got an AsyncEngine, which has no transaction; {_USAGE}")
    if isinstance(tx, Session | Connection | scoped_session | Engine):
        raise NotInTransactionError(
            f"got a sync {type(tx).__name__}: publish with publish_outbox_event(tx, ...), without await"
        )
    raise NotInTransactionError(f"got {type(tx).__name__}, not an AsyncSession or AsyncConnection; {_USAGE}")
