"""One live pump per run, shared by its subscribers (bridge/_feed.py, issue 16's fan-out
throughput): every subscriber still gets every chunk once, in order, with ``caught-up``
and ``end``; a subscriber that cannot keep up leaves the feed and loses nothing.

In-memory streams (``lockstep_stream_pair``: a client that stops reading really stops the
server's writes to it) into ``BridgeServer.handle_stream``, under the autojump clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from test_bridge import GATES, WORKFLOWS
from trio_websocket import WebSocketConnection, wrap_client_stream

import trioflow as tf
from trioflow.bridge._feed import LiveFeed
from trioflow.bridge._server import BridgeServer

TOKENS: dict[str, Any] = {"c": "control"}
BEFORE, AFTER = 5, 300


def make_server(runtime: tf.Runtime, **options: Any) -> BridgeServer:
    settings: dict[str, Any] = {
        "tokens": TOKENS,
        "max_message_size": 1 << 20,
        "max_subscriptions": 100,
        "idle_timeout": 300.0,
        "max_send_buffer": 1 << 20,
        "lag_timeout": 1000.0,
        "handshake_timeout": 10.0,
        "ping_interval": None,
    }
    settings.update(options)
    return BridgeServer(runtime, **settings)


@asynccontextmanager
async def client(
    nursery: trio.Nursery, server: BridgeServer, *, queue: int = 16
) -> AsyncIterator[WebSocketConnection]:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    async with trio.open_nursery() as mine:
        ws = await wrap_client_stream(
            mine,
            client_stream,
            "bridge",
            "/",
            extra_headers=[(b"Authorization", b"Bearer c")],
            message_queue_size=queue,
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(2, shield=True):
                await ws.aclose()
            mine.cancel_scope.cancel()


async def read_until(
    ws: WebSocketConnection, done: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        message = json.loads(await ws.get_message())
        seen.append(message)
        if done(message):
            return seen


def chunk_seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages if m["type"].startswith(("workflow-", "data-"))]


async def gated_run(runtime: tf.Runtime, gate: str) -> tf.Run:
    GATES[gate] = trio.Event()
    run = await runtime.create_run("gated")
    output = await run.stream(input_data={"before": BEFORE, "after": AFTER, "gate": gate})
    await output.aclose()  # the run goes on (as a bridge ``start`` leaves it)
    return run


async def test_one_feed_per_run_hands_every_chunk_to_every_subscriber_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime, trio.open_nursery() as nursery:
        server = make_server(runtime)
        run = await gated_run(runtime, "feed-1")
        received: dict[int, list[dict[str, Any]]] = {}

        async def follow(index: int, subscribed: trio.Event) -> None:
            async with client(nursery, server) as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "id": 1, "runId": run.run_id}))
                head = await read_until(ws, lambda m: m["type"] == "caught-up")
                subscribed.set()
                received[index] = head + await read_until(ws, lambda m: m["type"] == "end")

        async with trio.open_nursery() as followers:
            for index in range(3):
                subscribed = trio.Event()
                followers.start_soon(follow, index, subscribed)
                await subscribed.wait()
            await trio.testing.wait_all_tasks_blocked()
            feed = server.feeds[run.run_id]
            assert len(feed.members) == 3  # one pump for the three of them
            GATES["feed-1"].set()
        total = BEFORE + AFTER + 4  # + workflow-start, step start, step result, finish
        for messages in received.values():
            assert messages[0] == {"type": "reply", "id": 1, "runId": run.run_id}
            assert chunk_seqs(messages) == list(range(1, total + 1))
            assert [m["type"] for m in messages].count("caught-up") == 1
            assert messages[-1] == {"type": "end", "runId": run.run_id, "seq": total}
        assert server.feeds == {}  # the feed ended with the run
        nursery.cancel_scope.cancel()


async def test_a_subscriber_that_stops_reading_leaves_the_feed_and_loses_nothing(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[str] = []
    release = LiveFeed._release

    def recording(self: LiveFeed, member: Any, outcome: Any) -> None:
        outcomes.append(outcome)
        release(self, member, outcome)

    monkeypatch.setattr(LiveFeed, "_release", recording)
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime, trio.open_nursery() as nursery:
        server = make_server(runtime, max_send_buffer=2_000)
        run = await gated_run(runtime, "feed-2")
        async with client(nursery, server) as fast, client(nursery, server, queue=1) as slow:
            for ws in (fast, slow):
                await ws.send_message(json.dumps({"op": "subscribe", "id": 1, "runId": run.run_id}))
                await read_until(ws, lambda m: m["type"] == "caught-up")
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.feeds[run.run_id].members) == 2
            GATES["feed-2"].set()
            fast_messages = await read_until(fast, lambda m: m["type"] == "end")
            # the slow one stopped reading: it was released from the feed, the run and
            # the fast subscriber did not wait for it
            assert run.status == "success"
            slow_messages = await read_until(slow, lambda m: m["type"] == "end")
        total = BEFORE + AFTER + 4
        assert chunk_seqs(fast_messages) == list(range(BEFORE + 3, total + 1))
        assert chunk_seqs(slow_messages) == list(range(BEFORE + 3, total + 1))
        assert "released" in outcomes  # it did leave the feed (its buffer was full)
        nursery.cancel_scope.cancel()
