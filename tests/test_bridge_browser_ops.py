"""The bridge server, browser-ready (SPEC §5): the viewer's files on the websocket's port,
subprotocol tokens (``trioflow.v1`` selected, never the token; 4401 for a wrong one; the
header wins), ``allowed_origins`` (403), ``ping_interval`` heartbeats, ``whoami``,
``describe``, ``watch-runs``/``unwatch-runs`` with ``run-status`` messages, and what a read
token may do.

Two transports: loopback sockets (real clock, ``fail_after`` guards) for what a handshake
decides, and in-memory streams into ``BridgeServer.handle_stream`` for what time decides
(``autojump_clock``: an hour of virtual time in milliseconds, trio-style §4.3).
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as wse
from test_bridge import WORKFLOWS
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

import trioflow as tf
import trioflow.bridge as bridge
from trioflow.bridge._server import BridgeServer

CONTROL = "control-token"
READ = "read-token"
TOKENS: dict[str, Any] = {CONTROL: "control", READ: "read"}
GUARD = 20


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        yield runtime


# --------------------------------------------------------------------------- loopback


@asynccontextmanager
async def serving(runtime: tf.Runtime, **options: Any) -> AsyncIterator[int]:
    options.setdefault("port", 0)
    options.setdefault("tokens", TOKENS)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(partial(bridge.serve, runtime, **options))
        yield port
        nursery.cancel_scope.cancel()


class Peer:
    """A websocket speaking the protocol by hand; messages that come while it waits for a
    reply are kept for :meth:`until`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._next = 0
        self._kept: list[dict[str, Any]] = []

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            message: dict[str, Any] = json.loads(await self.ws.get_message())
        return message

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self._next += 1
        await self.ws.send_message(json.dumps({"op": op, "id": self._next, **fields}))
        while True:
            message = await self.recv()
            if message.get("id") == self._next and message["type"] in ("reply", "error"):
                return message
            self._kept.append(message)

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while True:
            if self._kept:
                await trio.lowlevel.checkpoint()
                message = self._kept.pop(0)
            else:
                message = await self.recv()
            seen.append(message)
            if predicate(message):
                return seen


@asynccontextmanager
async def peer(
    port: int,
    *,
    header: str | None = None,
    subprotocols: list[str] | None = None,
    origin: str | None = None,
) -> AsyncIterator[Peer]:
    """A client that owns its socket (closed even when the server closes first)."""
    headers: list[tuple[bytes, bytes]] = []
    if header is not None:
        headers.append((b"Authorization", f"Bearer {header}".encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(GUARD):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"127.0.0.1:{port}",
                    "/",
                    subprotocols=subprotocols,
                    extra_headers=headers,
                )
            try:
                yield Peer(ws)
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def refused_with(port: int, **options: Any) -> int:
    with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as info:
        async with peer(port, **options):
            pass
    rejected = info.value.exceptions[0]
    assert isinstance(rejected, ConnectionRejected)
    return int(rejected.status_code)


def bearer(token: str) -> list[str]:
    return ["trioflow.v1", f"trioflow.bearer.{token}"]


async def http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(GUARD):
            while chunk := await stream.receive_some():
                data += chunk
    return data


# --------------------------------------------------------------------------- the viewer's files


async def test_the_viewer_is_served_on_the_websocket_port(rt: tf.Runtime) -> None:
    async with serving(rt) as port:
        page = await http_get(port, "/")
        assert page.startswith(b"HTTP/1.1 200 ")
        assert b"<html" in page.lower()
        script = await http_get(port, "/app.js")
        assert b"text/javascript" in script.split(b"\r\n\r\n")[0]
        async with peer(port, header=CONTROL) as client:  # and the websocket, same port
            assert (await client.request("whoami"))["access"] == "control"


async def test_web_false_serves_no_files_but_the_websocket(rt: tf.Runtime) -> None:
    async with serving(rt, web=False) as port:
        assert (await http_get(port, "/")).startswith(b"HTTP/1.1 404 ")
        async with peer(port, header=READ) as client:
            assert (await client.request("whoami"))["access"] == "read"


# --------------------------------------------------------------------------- admission


async def test_subprotocol_token_selects_v1_and_never_echoes_the_token(rt: tf.Runtime) -> None:
    async with serving(rt) as port, peer(port, subprotocols=bearer(CONTROL)) as client:
        assert client.ws.subprotocol == "trioflow.v1"
        assert client.ws.handshake_headers is not None
        echoed = b" ".join(v for _, v in client.ws.handshake_headers)
        assert CONTROL.encode() not in echoed
        assert (await client.request("whoami")) == {"type": "reply", "id": 1, "access": "control"}


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
async def test_wrong_subprotocol_token_completes_the_handshake_then_closes_4401(
    rt: tf.Runtime,
) -> None:
    async with serving(rt) as port, peer(port, subprotocols=bearer("wrong")) as client:
        assert client.ws.subprotocol == "trioflow.v1"
        with pytest.raises(ConnectionClosed) as info:
            await client.recv()
        assert info.value.reason.code == 4401


async def test_the_header_token_wins_over_the_subprotocol_token(rt: tf.Runtime) -> None:
    async with serving(rt) as port:
        async with peer(port, header=READ, subprotocols=bearer(CONTROL)) as client:
            assert (await client.request("whoami"))["access"] == "read"
        # a wrong header is a 401 even next to a right subprotocol token
        assert await refused_with(port, header="wrong", subprotocols=bearer(CONTROL)) == 401
        assert await refused_with(port) == 401


async def test_a_foreign_origin_is_refused_403_before_the_token(rt: tf.Runtime) -> None:
    async with serving(rt) as port:
        foreign = "http://evil.example"
        assert await refused_with(port, header=CONTROL, origin=foreign) == 403
        assert await refused_with(port, header="wrong", origin=foreign) == 403
        assert await refused_with(port, subprotocols=bearer(CONTROL), origin="null") == 403
        for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            async with peer(port, subprotocols=bearer(READ), origin=own) as client:
                assert (await client.request("whoami"))["access"] == "read"


async def test_allowed_origins_option(rt: tf.Runtime) -> None:
    async with serving(rt, allowed_origins=["https://ops.example"]) as port:
        async with peer(port, header=READ, origin="https://ops.example") as client:
            assert (await client.request("whoami"))["access"] == "read"
        assert await refused_with(port, header=READ, origin=f"http://127.0.0.1:{port}") == 403
    with pytest.raises(ValueError, match="ftp://x"):  # before it listens
        await bridge.serve(rt, port=0, tokens=TOKENS, allowed_origins=["ftp://x"])


async def test_a_read_token_may_browse_but_not_control(rt: tf.Runtime) -> None:
    async with serving(rt) as port, peer(port, subprotocols=bearer(READ)) as client:
        assert (await client.request("whoami"))["access"] == "read"
        assert (await client.request("describe", workflowId="approval"))["type"] == "reply"
        assert (await client.request("watch-runs"))["type"] == "reply"
        assert (await client.request("unwatch-runs")) == {"type": "reply", "id": 4}
        assert (await client.request("list"))["type"] == "reply"
        for op, fields in (
            ("start", {"workflowId": "approval"}),
            ("resume", {"runId": "r"}),
            ("cancel", {"runId": "r"}),
        ):
            refused = await client.request(op, **fields)
            assert refused["code"] == "forbidden"
            assert "read-only" in refused["message"]


async def test_describe_replies_the_graph_and_the_resume_schema(rt: tf.Runtime) -> None:
    async with serving(rt) as port, peer(port, header=READ) as client:
        reply = await client.request("describe", workflowId="approval")
        workflow = reply["workflow"]
        assert workflow["id"] == "approval"
        assert [e["node"]["id"] for e in workflow["entries"]] == ["approve"]
        schema = workflow["resumeSchemas"]["approve"]
        assert schema["type"] == "object"
        assert schema["properties"]["approved"] == {"type": "boolean"}
        missing = await client.request("describe", workflowId="nope")
        assert missing["code"] == "not-found"
        assert "'nope'" in missing["message"]


# --------------------------------------------------------------------------- watch-runs


def status_of(run_id: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "run-status" and m["runId"] == run_id and m["status"] == status


async def test_watch_runs_lists_then_sends_every_status_change_of_a_bridge_run(
    rt: tf.Runtime,
) -> None:
    done = await rt.create_run("approval")
    await done.start(input_data=None)
    async with serving(rt) as port, peer(port, header=CONTROL) as watcher:
        listed = await watcher.request("watch-runs")
        assert [r["runId"] for r in listed["runs"]] == [done.run_id]
        assert listed["runs"][0]["status"] == "suspended"
        async with peer(port, header=CONTROL) as driver:
            run_id = (await driver.request("start", workflowId="approval"))["runId"]
            seen = await watcher.until(status_of(run_id, "suspended"))
            statuses = [m["status"] for m in seen if m.get("runId") == run_id]
            assert statuses[-1] == "suspended"
            assert len(statuses) == len(set(statuses))  # each status once
            message = seen[-1]
            assert set(message) == {"type", "runId", "workflowId", "status", "updatedAt"}
            assert message["workflowId"] == "approval"
            await driver.request("resume", runId=run_id, resumeData={"approved": True})
            await watcher.until(status_of(run_id, "success"))
        assert (await watcher.request("unwatch-runs"))["type"] == "reply"


async def test_watch_runs_filters_by_workflow_and_status(rt: tf.Runtime) -> None:
    async with serving(rt) as port, peer(port, header=CONTROL) as client:
        only_sleepy = await client.request("watch-runs", workflowId="sleepy", status="running")
        assert only_sleepy["runs"] == []
        other = (await client.request("start", workflowId="approval"))["runId"]
        sleepy = (await client.request("start", workflowId="sleepy"))["runId"]
        seen = await client.until(status_of(sleepy, "running"))
        assert all(m.get("runId") != other for m in seen)
        await client.request("cancel", runId=sleepy)
        # leaving the watched status is told too
        await client.until(status_of(sleepy, "canceled"))
        bad = await client.request("watch-runs", status="sleeping")
        assert bad["code"] == "bad-request"


async def test_changes_made_by_another_process_reach_watchers_by_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = tf.MemoryStorage()
    async with (
        tf.open_runtime(storage=storage, workflows=WORKFLOWS) as served,
        tf.open_runtime(storage=storage, workflows=WORKFLOWS) as other,
        memory_server(served) as connect,
        connect(CONTROL) as client,
    ):
        assert (await client.request("watch-runs"))["runs"] == []
        run = await other.create_run("approval")
        await run.start(input_data=None)  # executed by the other runtime: no hub here
        t0 = trio.current_time()
        seen = await client.until(status_of(run.run_id, "suspended"))
        assert trio.current_time() - t0 <= 2.5  # within one poll at the backoff's bound
        assert seen[-1]["workflowId"] == "approval"
        await (await other.create_run("approval", run_id=run.run_id)).resume(
            resume_data={"approved": False}
        )
        await client.until(status_of(run.run_id, "success"))


# --------------------------------------------------------------------------- heartbeats (virtual time)


@asynccontextmanager
async def memory_server(
    runtime: tf.Runtime, **options: Any
) -> AsyncIterator[Callable[..., Any]]:
    """A BridgeServer fed in-memory streams: ``connect(token)`` opens a client."""
    settings: dict[str, Any] = {
        "tokens": TOKENS,
        "max_message_size": 1 << 20,
        "max_subscriptions": 100,
        "idle_timeout": 300.0,
        "max_send_buffer": 1 << 20,
        "lag_timeout": 10.0,
        "handshake_timeout": 10.0,
    }
    settings.update(options)
    server = BridgeServer(runtime, **settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.watch.run)

        @asynccontextmanager
        async def connect(token: str) -> AsyncIterator[Peer]:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_stream)
            async with trio.open_nursery() as client_nursery:
                ws = await wrap_client_stream(
                    client_nursery, client_stream, "bridge", "/", subprotocols=bearer(token)
                )
                try:
                    yield Peer(ws)
                finally:
                    with trio.move_on_after(2, shield=True):
                        await ws.aclose()
                    client_nursery.cancel_scope.cancel()

        yield connect
        nursery.cancel_scope.cancel()


async def test_a_subscription_to_a_run_waiting_an_hour_for_approval_stays_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        tf.open_runtime(workflows=WORKFLOWS) as runtime,
        memory_server(runtime, ping_interval=20.0) as connect,
        connect(CONTROL) as client,
    ):
        run_id = (await client.request("start", workflowId="approval"))["runId"]
        await client.request("subscribe", runId=run_id, fromSeq=1)
        await client.until(lambda m: m["type"] == "caught-up")
        await trio.sleep(3600)  # virtual: 180 pings answered meanwhile
        assert not client.ws.closed
        await client.request("resume", runId=run_id, resumeData={"approved": True})
        messages = await client.until(lambda m: m["type"] == "end")
        finish = [m for m in messages if m["type"] == "workflow-finish"]
        assert finish[-1]["payload"]["workflowStatus"] == "success"


async def test_a_watch_only_connection_is_not_idle(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        tf.open_runtime(workflows=WORKFLOWS) as runtime,
        memory_server(runtime, idle_timeout=60.0) as connect,
        connect(READ) as client,
    ):
        await client.request("watch-runs")
        await trio.sleep(600)
        assert (await client.request("whoami"))["access"] == "read"


async def test_a_peer_that_never_answers_pings_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bare wsproto client that completes the handshake and then never reads: the
    server pings at ``ping_interval`` and closes (1001) when no pong comes within it."""
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        server = BridgeServer(
            runtime,
            tokens=TOKENS,
            max_message_size=1 << 20,
            max_subscriptions=100,
            idle_timeout=10_000.0,
            max_send_buffer=1 << 20,
            lag_timeout=10.0,
            handshake_timeout=10.0,
            ping_interval=5.0,
        )
        client_stream, server_stream = trio.testing.memory_stream_pair()
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            await client_stream.send_all(
                conn.send(wse.Request(host="bridge", target="/", subprotocols=bearer(READ)))
            )
            accepted = False
            while not accepted:
                conn.receive_data(await client_stream.receive_some())
                accepted = any(isinstance(e, wse.AcceptConnection) for e in conn.events())
            t0 = trio.current_time()
            await trio.sleep(12)  # a ping at 5 s, unanswered until 10 s: closed by now
            data = b""
            with trio.move_on_after(1):
                while chunk := await client_stream.receive_some():
                    data += chunk
            conn.receive_data(data)
            events = list(conn.events())
            assert any(isinstance(e, wse.Ping) for e in events)
            closes = [e for e in events if isinstance(e, wse.CloseConnection)]
            assert closes, events
            assert closes[0].code == 1001
            assert trio.current_time() - t0 >= 10
            nursery.cancel_scope.cancel()

