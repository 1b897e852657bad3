"""Stopping the bridge server: every websocket gets a close frame with 1001 (going away),
and a peer that never reads cannot keep the shutdown waiting (docs/bridge.md, "Limits and
server options": cancelling the server's nursery closes every connection with 1001).

The first tests use real loopback sockets and real trio-websocket clients (the real clock,
a ``trio.fail_after`` guard); the bounded-shutdown test drives ``BridgeServer`` over
in-memory lockstep streams with the autojump clock, so the peer that stops reading is
exact and the grace periods pass instantly.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, wrap_client_stream

import trioflow as tf
import trioflow.bridge as bridge
from trioflow.bridge._corked import CLOSE_GRACE
from trioflow.bridge._server import BridgeServer

TOKEN = "shutdown-token"
GUARD = 20


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


async def _wait_forever(ctx: tf.StepContext) -> str:
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def _chatty(ctx: tf.StepContext) -> str:
    for _ in range(ctx.input_data):
        await ctx.writer.write("x" * 4096)
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


WORKFLOWS = [
    tf.create_workflow(id="forever").then(tf.create_step(id="wait", execute=_wait_forever)).commit(),
    tf.create_workflow(id="chatty").then(tf.create_step(id="write", execute=_chatty)).commit(),
]


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        yield runtime


async def _read_forever(ws: WebSocketConnection) -> None:
    while True:
        await ws.get_message()


async def _close_reason_seen(
    port: int, subscribe_to: str | None, connected: trio.Event, seen: list[CloseReason]
) -> None:
    """A trio-websocket client that reads until the server closes, then records why."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection = await wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                extra_headers=[(b"Authorization", f"Bearer {TOKEN}".encode())],
            )
            if subscribe_to is not None:
                await ws.send_message(f'{{"op":"subscribe","id":1,"runId":"{subscribe_to}"}}')
                assert '"reply"' in str(await ws.get_message())
            else:
                await ws.send_message('{"op":"whoami","id":1}')
                await ws.get_message()
            connected.set()
            with pytest.raises(ConnectionClosed) as closed:
                await _read_forever(ws)
            reason = closed.value.reason
            assert reason is not None
            seen.append(reason)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def test_cancelling_the_server_closes_each_websocket_with_1001(rt: tf.Runtime) -> None:
    run = await rt.create_run("forever")
    output = await run.stream(input_data=None)
    await output.aclose()
    seen: list[CloseReason] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as server:
                port = await server.start(
                    partial(bridge.serve, rt, port=0, tokens={TOKEN: "read"})
                )
                ready = [trio.Event(), trio.Event()]
                clients.start_soon(_close_reason_seen, port, None, ready[0], seen)
                clients.start_soon(_close_reason_seen, port, run.run_id, ready[1], seen)
                for event in ready:
                    await event.wait()
                server.cancel_scope.cancel()
    assert [(reason.code, reason.reason) for reason in seen] == [
        (1001, "server shutting down")
    ] * 2
    # The runs go on: the bridge is beside the runtime, never inside it.
    assert run.status == "running"
    await run.cancel()


class _Stalling(trio.abc.Stream):
    """A client's end of the connection that stops reading once ``stall`` is set (its
    peer's writes then block: a lockstep stream hands bytes over only to a reader)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.stall = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.stall:
            await trio.sleep_forever()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_client_that_never_reads_cannot_hold_the_shutdown_up(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    """The server's socket writes block (the client stopped reading with a subscription's
    chunks on the way): cancelling the server still ends every task of the connection
    within a few close graces."""
    run = await rt.create_run("chatty")
    output = await run.stream(input_data=400)
    await output.aclose()  # nobody reads it: it must not hold the run back
    server = BridgeServer(
        rt,
        tokens={TOKEN: "read"},
        max_message_size=1 << 20,
        max_subscriptions=10,
        idle_timeout=300,
        max_send_buffer=1 << 14,
        lag_timeout=1000,
        handshake_timeout=10,
    )
    client_end, server_end = trio.testing.lockstep_stream_pair()
    client_stream = _Stalling(client_end)
    async with trio.open_nursery() as outer:
        scope = trio.CancelScope()
        finished = trio.Event()

        async def serve_one() -> None:
            with scope:
                await server.handle_stream(server_end)
            finished.set()

        outer.start_soon(serve_one)
        async with trio.open_nursery() as client:
            ws = await wrap_client_stream(
                client,
                client_stream,  # type: ignore[arg-type]  # any trio stream works
                "127.0.0.1",
                "/",
                extra_headers=[(b"Authorization", f"Bearer {TOKEN}".encode())],
            )
            await ws.send_message(f'{{"op":"subscribe","id":1,"runId":"{run.run_id}"}}')
            assert '"reply"' in str(await ws.get_message())
            client_stream.stall = True
            # Chunks fill the kernel-less pipe and the connection's send buffer.
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1)
            assert server.connections
            connection = next(iter(server.connections))
            (sub,) = connection.subscriptions.values()
            assert sub.delivered < 400  # stuck: the socket takes no more
            before = trio.current_time()
            scope.cancel()
            with trio.fail_after(10 * CLOSE_GRACE):
                await finished.wait()
            assert trio.current_time() - before <= 3 * CLOSE_GRACE
            assert not server.connections
            client.cancel_scope.cancel()
    await run.cancel()
