"""PostgresStorage's notifications: the trio-native LISTEN connection and the trio Events
waiting on it.

The listen loop waits for the connection's socket with ``trio.lowlevel.wait_readable`` and
reads notifications with psycopg's libpq wrapper (``consume_input``/``notifies``), so a
notification wakes the waiting task at once without a thread polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ._pg_sql import CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("trioflow.postgres")


class Notifications:
    """Who waits for which notification. ``holds(run_id)`` says whether this storage
    holds the run's lease: a cancel notification reaches the cancel handlers only then."""

    def __init__(
        self,
        *,
        where: str,
        connect: Callable[[], psycopg.Connection[Any]],
        holds: Callable[[str], bool],
    ) -> None:
        self._where = where
        self._connect = connect
        self._holds = holds
        #: run_id -> trio Events to set at the next notification about that run.
        self._event_waiters: dict[str, set[trio.Event]] = {}
        self._queue_waiters: set[trio.Event] = set()
        self.cancel_handlers: list[Callable[[str, str], None]] = []

    def watch_events(self, run_id: str, event: trio.Event) -> Callable[[], None]:
        waiters = self._event_waiters.setdefault(run_id, set())
        waiters.add(event)

        def unwatch() -> None:
            found = self._event_waiters.get(run_id)
            if found is not None:
                found.discard(event)
                if not found:
                    del self._event_waiters[run_id]

        return unwatch

    def watch_queue(self, event: trio.Event) -> Callable[[], None]:
        self._queue_waiters.add(event)
        return lambda: self._queue_waiters.discard(event)

    def dispatch(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            for event in self._event_waiters.pop(payload, ()):
                event.set()
        elif channel == QUEUE_CHANNEL:
            waiters, self._queue_waiters = self._queue_waiters, set()
            for event in waiters:
                event.set()
        elif channel == CANCEL_CHANNEL and self._holds(payload):
            for handler in list(self.cancel_handlers):
                handler(payload, "canceled")

    def wake_everyone(self) -> None:
        # After losing the listen connection, a notification may have been missed.
        for waiters in self._event_waiters.values():
            for event in waiters:
                event.set()
        self._event_waiters.clear()
        self.dispatch(QUEUE_CHANNEL, "")

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """LISTEN and dispatch until cancelled (cancelling it closes the connection).
        Started at the first connection attempt, failed or not; a lost connection is
        reopened with a backoff, waking every waiter (they fall back to reading)."""
        started = False
        delay = 0.05
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:

                def listen() -> psycopg.Connection[Any]:
                    c = self._connect()
                    for channel in (EVENTS_CHANNEL, CANCEL_CHANNEL, QUEUE_CHANNEL):
                        c.execute(f"LISTEN {channel}")
                    return c

                conn = await trio.to_thread.run_sync(listen)
                if started:
                    self.wake_everyone()
                else:
                    started = True
                    task_status.started()
                delay = 0.05
                pgconn = conn.pgconn
                while True:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    while (note := pgconn.notifies()) is not None:
                        self.dispatch(note.relname.decode(), note.extra.decode())
            except Exception as exc:
                logger.warning("%s: listen connection lost (%s); reconnecting", self._where, exc)
                if not started:
                    started = True
                    task_status.started()
                self.wake_everyone()
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    conn.close()
