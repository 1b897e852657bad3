"""Server messages parsed, and chunks decoded, once per process.

Every subscriber of a run receives the same frame text for each chunk (the server encodes
each chunk once): a process with many connections subscribed to one run (a dashboard, a
fan-out service, the benchmark's 100 subscribers) parses each such frame and runs
``tf.from_wire`` on it once, not once per connection. The chunk objects are frozen attrs
instances shared by those subscriptions, as an in-process ``observe_stream`` shares them
among its subscribers (their payloads are the user's data: read them, do not mutate
them). Bounded: the last ``RECENT`` chunk frames, per thread.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from .._core._chunks import Chunk
from .._core._serde import from_wire
from . import _protocol as p

#: Chunk frames (and their decoded chunks) remembered.
RECENT: Final = 4096


class RecentMessages:
    def __init__(self, size: int = RECENT) -> None:
        self._size = size
        self._parsed: dict[str, dict[str, Any]] = {}
        self._chunks: dict[int, tuple[dict[str, Any], Chunk]] = {}

    def parse(self, frame: str | bytes) -> dict[str, Any]:
        """``p.parse_server_message(frame)`` (ProtocolError likewise); a chunk's message
        is the same dict object for every connection that received the same text."""
        if isinstance(frame, str):
            hit = self._parsed.get(frame)
            if hit is not None:
                return hit
        message = p.parse_server_message(frame)
        if isinstance(frame, str) and p.is_chunk_type(message["type"]):
            parsed = self._parsed
            parsed[frame] = message
            if len(parsed) > self._size:
                del parsed[next(iter(parsed))]
        return message

    def chunk(self, message: dict[str, Any]) -> Chunk:
        """``tf.from_wire(message)``, once per message object (errors likewise)."""
        key = id(message)
        hit = self._chunks.get(key)
        if hit is not None and hit[0] is message:
            return hit[1]
        chunk: Chunk = from_wire(message)
        chunks = self._chunks
        chunks[key] = (message, chunk)  # the message is kept: its id stays its own
        if len(chunks) > self._size:
            del chunks[next(iter(chunks))]
        return chunk


_LOCAL: Final = threading.local()


def recent() -> RecentMessages:
    """This thread's cache (each ``trio.run`` has one thread; several may run at once)."""
    cache: RecentMessages | None = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = RecentMessages()
    return cache
