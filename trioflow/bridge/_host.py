"""What a connection uses of the server that accepted it (``_server.BridgeServer``),
declared as a protocol so that ``_connection`` never imports ``_server``, which imports it.
"""

from __future__ import annotations

from typing import Any, Protocol

from .._run import Run
from .._runtime import Runtime
from ..storage import Storage
from . import _protocol as p
from ._feed import LiveFeed
from ._sources import FrameCache, Source, StoredMarks
from ._watch import RunWatch


class ConnectionHost(Protocol):
    """The server's settings and shared state a connection reads."""

    runtime: Runtime
    storage: Storage
    idle_timeout: float
    lag_timeout: float
    ping_interval: float | None
    max_subscriptions: int
    max_send_buffer: int
    frames: FrameCache
    stored: StoredMarks
    watch: RunWatch
    feeds: dict[str, LiveFeed]

    def forget_feed(self, feed: LiveFeed) -> None: ...

    async def bound_run(self, run_id: str, request_id: p.RequestId) -> Run: ...

    async def open_source(self, snapshot: Any, from_seq: int) -> Source: ...
