"""The websocket bridge over real loopback sockets: `trioflow.bridge.serve` and `connect`.

Contract: SPEC §5 (ops, replies, `caught-up`/`end`, error codes, bearer tokens with read and
control roles, 401 at the upgrade, limits, "a subscriber that falls behind never stalls the
run or other subscribers and is told where it stands", the resuming client), SPEC §0 (the
bridge runs beside the runtime, never inside it; subscribers are cursors), SPEC §3.4 (the
wire chunks) and docs/bridge.md (the protocol reference these tests speak, byte for byte,
through a bare trio-websocket connection and through the independent `websockets` library).

Rules for these network tests (after trio-websocket's own): loopback only, port 0 (or the
port a previous server had), the real clock with a `trio.fail_after` guard around every
exchange, one side deliberately closes, and every test ends with a garbage collection so an
unclosed socket fails the test that leaked it (warnings are errors).
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

import trioflow as tf
import trioflow.bridge as bridge

CONTROL = "control-token"
READ = "read-token"
TOKENS: dict[str, Any] = {CONTROL: "control", READ: "read"}
GUARD = 20  # seconds: every socket exchange of a test fits well inside


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


# --------------------------------------------------------------------------- workflows


async def write_outputs(ctx: tf.StepContext) -> int:
    """Writes ``count`` outputs (each ``size`` characters long when ``size`` is given),
    sleeping ``pause`` seconds every ``every`` writes."""
    spec: dict[str, Any] = ctx.input_data
    size = spec.get("size")
    for i in range(spec["count"]):
        await ctx.writer.write("x" * size if size else i)
        if spec.get("pause") and (i + 1) % spec.get("every", 1) == 0:
            await trio.sleep(spec["pause"])
    return int(spec["count"])


GATES: dict[str, trio.Event] = {}


async def write_wait_write(ctx: tf.StepContext) -> str:
    """Writes ``before`` outputs, waits for ``GATES[gate]``, writes ``after`` more."""
    spec: dict[str, Any] = ctx.input_data
    for i in range(spec["before"]):
        await ctx.writer.write(i)
    await GATES[spec["gate"]].wait()
    for i in range(spec["after"]):
        await ctx.writer.write(100 + i)
    return "done"


@attrs.frozen
class Approval:
    approved: bool


async def approve(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"question": "ship it?"})
    return {"approved": ctx.resume_data.approved}


async def sleep_long(ctx: tf.StepContext) -> str:
    await trio.sleep(60)
    return "woke"


@attrs.frozen
class Order:
    id: str
    amount: int


async def echo_order(ctx: tf.StepContext) -> dict[str, Any]:
    order: Order = ctx.input_data
    return {"id": order.id, "amount": order.amount}


def build_workflows() -> list[tf.Workflow]:
    writer = tf.create_workflow(id="writer").then(tf.create_step(id="write", execute=write_outputs))
    gated = tf.create_workflow(id="gated").then(tf.create_step(id="gate", execute=write_wait_write))
    approval = tf.create_workflow(id="approval").then(
        tf.create_step(id="approve", execute=approve, resume_schema=Approval)
    )
    sleepy = tf.create_workflow(id="sleepy").then(tf.create_step(id="nap", execute=sleep_long))
    orders = tf.create_workflow(id="orders", input_schema=Order).then(
        tf.create_step(id="echo", execute=echo_order, input_schema=Order)
    )
    return [wf.commit() for wf in (writer, gated, approval, sleepy, orders)]


WORKFLOWS = build_workflows()


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        yield runtime


# --------------------------------------------------------------------------- helpers


@asynccontextmanager
async def serving(runtime: tf.Runtime, **options: Any) -> AsyncIterator[str]:
    """A bridge server on a free loopback port (or ``port=``), stopped on exit."""
    options.setdefault("port", 0)
    options.setdefault("tokens", TOKENS)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(bridge.serve, runtime, **options))
        yield f"ws://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Raw:
    """A bare websocket speaking the documented protocol by hand."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            message: dict[str, Any] = json.loads(await self.ws.get_message())
        return message

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.recv()

    async def until_end(self, run_id: str) -> list[dict[str, Any]]:
        """Every message up to and including the subscription's ``end``."""
        messages: list[dict[str, Any]] = []
        while True:
            message = await self.recv()
            messages.append(message)
            if message["type"] == "end" and message.get("runId") == run_id:
                return messages


@asynccontextmanager
async def raw(
    url: str, token: str | None = CONTROL, *, message_queue_size: int = 16
) -> AsyncIterator[Raw]:
    """A trio-websocket client connection that owns its socket: it is closed on exit even
    when the server closed first (trio-style §4.2)."""
    port = port_of(url)
    headers = [] if token is None else [(b"Authorization", f"Bearer {token}".encode())]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(GUARD):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"127.0.0.1:{port}",
                    "/",
                    extra_headers=headers,
                    message_queue_size=message_queue_size,
                )
            try:
                yield Raw(ws)
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def rejection_status(url: str, token: str | None) -> int:
    """The HTTP status of a refused upgrade."""
    with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as info:
        async with raw(url, token):
            pass
    rejected = info.value.exceptions[0]
    assert isinstance(rejected, ConnectionRejected)
    return int(rejected.status_code)


async def stored_log(runtime: tf.Runtime, run_id: str) -> list[dict[str, Any]]:
    """The run's whole log, in the wire format."""
    run = await runtime.create_run((await runtime.get_run_state(run_id)).workflow_id, run_id=run_id)
    return [tf.to_wire(chunk) async for chunk in run.observe_stream(follow=False)]


def chunks_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"].startswith(("workflow-", "data-"))]


def seqs(items: list[Any]) -> list[int]:
    return [item["seq"] if isinstance(item, dict) else item.seq for item in items]


async def finished_run(runtime: tf.Runtime, count: int = 3) -> tf.Run:
    run = await runtime.create_run("writer")
    result = await run.start(input_data={"count": count})
    assert result.status == "success"
    return run


# --------------------------------------------------------------------------- subscribing


async def test_subscribe_to_a_finished_run_replays_its_log_then_caught_up_then_end(
    rt: tf.Runtime,
) -> None:
    run = await finished_run(rt, count=3)
    log = await stored_log(rt, run.run_id)
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
        messages = await ws.until_end(run.run_id)
    last = log[-1]["seq"]
    assert messages[0] == {"type": "reply", "id": 1, "runId": run.run_id}
    assert messages[1:-2] == log
    assert messages[-2:] == [
        {"type": "caught-up", "runId": run.run_id, "seq": last},
        {"type": "end", "runId": run.run_id, "seq": last},
    ]
    assert last == 3 + 4  # 3 outputs, workflow start/finish, step start/result


async def test_subscribe_from_after_the_end_of_a_finished_run_gets_caught_up_and_end(
    rt: tf.Runtime,
) -> None:
    run = await finished_run(rt, count=1)
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": "s", "runId": run.run_id, "fromSeq": 50})
        messages = await ws.until_end(run.run_id)
    assert messages == [
        {"type": "reply", "id": "s", "runId": run.run_id},
        {"type": "caught-up", "runId": run.run_id, "seq": 5},
        {"type": "end", "runId": run.run_id, "seq": 5},
    ]


async def test_subscribe_mid_run_from_a_seq_gets_that_seq_first_then_follows_live(
    rt: tf.Runtime,
) -> None:
    GATES["mid"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "mid", "before": 6, "after": 4})
    async with serving(rt) as url, raw(url) as ws:
        with trio.fail_after(GUARD):
            async for chunk in run.observe_stream():  # start, step start, 6 outputs
                if chunk.seq == 8:
                    break
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id, "fromSeq": 5})
        head = [await ws.recv() for _ in range(6)]  # reply, seq 5..8, caught-up
        assert head[0]["type"] == "reply"
        assert seqs(head[1:5]) == [5, 6, 7, 8]
        assert head[5] == {"type": "caught-up", "runId": run.run_id, "seq": 8}
        GATES["mid"].set()
        tail = await ws.until_end(run.run_id)
    assert seqs(chunks_of(tail)) == list(range(9, 15))  # 4 outputs, step result, finish
    assert tail[-1] == {"type": "end", "runId": run.run_id, "seq": 14}
    log = await stored_log(rt, run.run_id)
    assert chunks_of(head[1:5] + tail) == log[4:]


async def test_a_suspended_run_keeps_its_subscribers_through_a_remote_resume(
    rt: tf.Runtime,
) -> None:
    run = await rt.create_run("approval")
    assert (await run.start()).status == "suspended"
    async with serving(rt) as url, raw(url) as watcher, raw(url) as driver:
        await watcher.send({"op": "subscribe", "id": 1, "runId": run.run_id})
        before = [await watcher.recv() for _ in range(6)]
        assert [m["type"] for m in before] == [
            "reply",
            "workflow-start",
            "workflow-step-start",
            "workflow-step-suspended",
            "workflow-finish",
            "caught-up",
        ]
        assert before[4]["payload"]["workflowStatus"] == "suspended"
        reply = await driver.request(
            {"op": "resume", "id": 7, "runId": run.run_id, "resumeData": {"approved": True}}
        )
        assert reply == {"type": "reply", "id": 7, "runId": run.run_id, "status": "running"}
        after = await watcher.until_end(run.run_id)
    assert [m["type"] for m in after] == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
        "end",
    ]
    assert after[2]["payload"]["output"] == {"approved": True}
    assert after[3]["payload"]["workflowStatus"] == "success"


async def test_many_subscribers_of_one_live_run_each_get_the_whole_log_once_in_order(
    rt: tf.Runtime,
) -> None:
    run = await rt.create_run("writer")
    received: dict[int, list[tf.Chunk]] = {}

    async def subscriber(index: int, url: str, task_status: Any) -> None:  # noqa: ASYNC114
        async with bridge.connect(url, token=READ) as client:
            subscription = client.subscribe(run.run_id)
            task_status.started()
            received[index] = [chunk async for chunk in subscription]

    async with serving(rt) as url:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                for index in range(25):
                    await nursery.start(subscriber, index, url)
                result = await run.start(input_data={"count": 200, "pause": 0.001, "every": 20})
    assert result.status == "success"
    log = await stored_log(rt, run.run_id)
    assert len(received) == 25
    for chunks in received.values():
        assert [tf.to_wire(chunk) for chunk in chunks] == log
    assert seqs(log) == list(range(1, 205))


async def test_unsubscribe_stops_the_subscription_and_its_reply_is_the_last_word(
    rt: tf.Runtime,
) -> None:
    GATES["unsub"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "unsub", "before": 2, "after": 50})
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
        assert (await ws.recv())["type"] == "reply"
        await ws.send({"op": "unsubscribe", "id": 2, "runId": run.run_id})
        GATES["unsub"].set()
        while (message := await ws.recv())["type"] != "reply":
            assert message["runId"] == run.run_id  # chunks sent before the unsubscribe
        assert message == {"type": "reply", "id": 2, "runId": run.run_id}
        # Nothing more for that run: the next answer on the connection is the list's.
        listed = await ws.request({"op": "list", "id": 3})
        assert listed["type"] == "reply"
        assert listed["id"] == 3


async def test_subscribing_again_to_the_same_run_moves_the_cursor(rt: tf.Runtime) -> None:
    run = await finished_run(rt, count=2)
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id, "fromSeq": 6})
        first = await ws.until_end(run.run_id)
        await ws.send({"op": "subscribe", "id": 2, "runId": run.run_id, "fromSeq": 4})
        second = await ws.until_end(run.run_id)
    assert seqs(chunks_of(first)) == [6]
    assert second[0] == {"type": "reply", "id": 2, "runId": run.run_id}
    assert seqs(chunks_of(second)) == [4, 5, 6]


async def test_a_client_that_stops_reading_slows_only_itself(rt: tf.Runtime) -> None:
    """The stuck client's socket and send buffer fill up; the run and another client go
    on at full speed; the stuck client is told (``lagged``) the last seq it was sent and
    re-subscribes from there without a gap."""
    count, size = 2_000, 10_000  # ~20 MB: more than the kernel's socket buffers hold
    run = await rt.create_run("writer")
    async with serving(rt, max_send_buffer=32 * 1024, lag_timeout=0.5) as url:
        async with raw(url, message_queue_size=1) as stuck:
            await stuck.send({"op": "subscribe", "id": 1, "runId": run.run_id})
            async with bridge.connect(url, token=READ) as client:
                subscription = client.subscribe(run.run_id)
                with trio.fail_after(GUARD):
                    result = await run.start(input_data={"count": count, "size": size})
                    assert result.status == "success"
                    fast = [chunk async for chunk in subscription]
            assert seqs(fast) == list(range(1, count + 5))
            # The stuck subscription has been waiting for room in its full send buffer;
            # give it well over lag_timeout to give up.
            await trio.sleep(1.5)
            # Only now does the stuck client read what it has.
            first = await stuck.recv()
            assert first == {"type": "reply", "id": 1, "runId": run.run_id}
            assert await stuck.recv() == {"type": "caught-up", "runId": run.run_id, "seq": 0}
            got: list[dict[str, Any]] = []
            while (message := await stuck.recv())["type"] != "lagged":
                got.append(message)
            assert message == {"type": "lagged", "runId": run.run_id, "seq": len(got)}
            assert 0 < len(got) < count
            await stuck.send(
                {"op": "subscribe", "id": 2, "runId": run.run_id, "fromSeq": len(got) + 1}
            )
            rest = await stuck.until_end(run.run_id)
    assert seqs(got + chunks_of(rest)) == list(range(1, count + 5))


# --------------------------------------------------------------------------- control ops


async def test_start_over_the_bridge_runs_a_registered_workflow(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request(
            {
                "op": "start",
                "id": "go",
                "workflowId": "orders",
                "inputData": {"id": "o1", "amount": 5},
                "runId": "order-1",
            }
        )
        assert reply == {"type": "reply", "id": "go", "runId": "order-1"}
        await ws.send({"op": "subscribe", "id": 2, "runId": "order-1"})
        messages = await ws.until_end("order-1")
    result = chunks_of(messages)[-2]
    assert result["type"] == "workflow-step-result"
    assert result["payload"]["output"] == {"id": "o1", "amount": 5}
    state = await rt.get_run_state("order-1")
    assert state.status == "success"


async def test_cancel_over_the_bridge_ends_a_sleeping_run_canceled(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        run_id = (await ws.request({"op": "start", "id": 1, "workflowId": "sleepy"}))["runId"]
        await ws.send({"op": "subscribe", "id": 2, "runId": run_id})
        assert (await ws.recv())["type"] == "reply"
        while (await ws.recv())["type"] != "workflow-step-start":
            pass
        await ws.send({"op": "cancel", "id": 3, "runId": run_id})
        messages = await ws.until_end(run_id)
        if {"type": "reply", "id": 3, "runId": run_id, "status": "canceled"} not in messages:
            messages.append(await ws.recv())  # the reply may follow the subscription's end
    assert {"type": "reply", "id": 3, "runId": run_id, "status": "canceled"} in messages
    types = [m["type"] for m in chunks_of(messages)]
    assert types[-2:] == ["workflow-canceled", "workflow-finish"]
    assert chunks_of(messages)[-1]["payload"]["workflowStatus"] == "canceled"


async def test_cancel_of_a_finished_run_reports_its_own_status(rt: tf.Runtime) -> None:
    run = await finished_run(rt)
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request({"op": "cancel", "id": 1, "runId": run.run_id})
    assert reply == {"type": "reply", "id": 1, "runId": run.run_id, "status": "success"}


async def test_list_replies_with_the_runs_newest_first_filtered(rt: tf.Runtime) -> None:
    done = await finished_run(rt)
    suspended = await rt.create_run("approval")
    await suspended.start()
    async with serving(rt) as url, raw(url, READ) as ws:
        everything = await ws.request({"op": "list", "id": 1})
        only_suspended = await ws.request({"op": "list", "id": 2, "status": "suspended"})
        only_writer = await ws.request({"op": "list", "id": 3, "workflowId": "writer"})
    assert [row["runId"] for row in everything["runs"]] == [suspended.run_id, done.run_id]
    assert only_suspended["runs"] == [
        {
            "runId": suspended.run_id,
            "workflowId": "approval",
            "status": "suspended",
            "createdAt": only_suspended["runs"][0]["createdAt"],
            "updatedAt": only_suspended["runs"][0]["updatedAt"],
        }
    ]
    assert isinstance(only_suspended["runs"][0]["createdAt"], int)
    assert [row["runId"] for row in only_writer["runs"]] == [done.run_id]


# --------------------------------------------------------------------------- errors


async def test_bad_resume_data_gets_the_validation_error_text(rt: tf.Runtime) -> None:
    run = await rt.create_run("approval")
    await run.start()
    with pytest.raises(tf.ValidationError) as local:
        await run.resume(resume_data={"approved": "yes"})
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request(
            {"op": "resume", "id": 5, "runId": run.run_id, "resumeData": {"approved": "yes"}}
        )
    assert reply == {"type": "error", "id": 5, "code": "validation", "message": str(local.value)}
    assert reply["message"].startswith("Invalid resume data:\n- approved:")
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_invalid_input_gets_a_validation_error(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request(
            {
                "op": "start",
                "id": 1,
                "workflowId": "orders",
                "inputData": {"id": "o", "amount": "5"},
            }
        )
    assert reply["code"] == "validation"
    assert reply["message"].startswith("Invalid input data:")
    assert "amount" in reply["message"]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"op": "subscribe", "runId": "nope"}, "not-found"),
        ({"op": "resume", "runId": "nope", "resumeData": 1}, "not-found"),
        ({"op": "cancel", "runId": "nope"}, "not-found"),
        ({"op": "start", "workflowId": "no-such-workflow"}, "not-found"),
        ({"op": "launch"}, "unknown-op"),
        ({"op": "subscribe", "runId": 5}, "bad-request"),
        ({"op": "list", "limit": "ten"}, "bad-request"),
    ],
)
async def test_clear_error_replies_echo_the_id(
    rt: tf.Runtime, request_: dict[str, Any], code: str
) -> None:
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request({**request_, "id": "q-1"})
        assert reply["type"] == "error"
        assert reply["id"] == "q-1"
        assert reply["code"] == code
        assert reply["message"]
        # The connection is still fine.
        assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"


async def test_malformed_frames_get_bad_request_without_an_id(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        await ws.ws.send_message("{nope")
        assert await ws.recv() == {
            "type": "error",
            "id": None,
            "code": "bad-request",
            "message": (await ws_error_text("{nope")),
        }
        await ws.ws.send_message(b'{"op": "list"}')
        binary = await ws.recv()
        assert binary["code"] == "bad-request"
        assert "binary" in binary["message"]


async def ws_error_text(frame: str) -> str:
    await trio.lowlevel.checkpoint()
    try:
        bridge._protocol.parse_request(frame)
    except bridge._protocol.ProtocolError as exc:
        return exc.message
    raise AssertionError("parsed")


async def test_resume_of_a_run_that_is_not_suspended_is_a_conflict(rt: tf.Runtime) -> None:
    run = await finished_run(rt)
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request({"op": "resume", "id": 1, "runId": run.run_id})
        again = await ws.request(
            {"op": "start", "id": 2, "workflowId": "writer", "runId": run.run_id}
        )
    assert reply["code"] == "conflict"
    assert "not suspended" in reply["message"]
    assert again["code"] == "conflict"


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("token", [None, "wrong", "control-token extra"])
async def test_an_upgrade_without_a_valid_token_is_refused_with_401(
    rt: tf.Runtime, token: str | None
) -> None:
    async with serving(rt) as url:
        with trio.fail_after(GUARD):
            assert await rejection_status(url, token) == 401
            # The server is unharmed.
            async with raw(url, READ) as ws:
                assert (await ws.request({"op": "list", "id": 1}))["type"] == "reply"


async def test_a_server_without_tokens_refuses_everyone(rt: tf.Runtime) -> None:
    async with serving(rt, tokens=None) as url:
        with trio.fail_after(GUARD):
            assert await rejection_status(url, CONTROL) == 401


@pytest.mark.parametrize("op", ["start", "resume", "cancel"])
async def test_a_read_token_may_not_control(rt: tf.Runtime, op: str) -> None:
    run = await rt.create_run("approval")
    await run.start()
    async with serving(rt) as url, raw(url, READ) as ws:
        reply = await ws.request({"op": op, "id": 1, "workflowId": "writer", "runId": run.run_id})
        assert reply["type"] == "error"
        assert reply["code"] == "forbidden"
        assert reply["id"] == 1
        # ...but may watch.
        await ws.send({"op": "subscribe", "id": 2, "runId": run.run_id})
        assert (await ws.recv())["type"] == "reply"
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_the_python_client_reports_a_refused_token(rt: tf.Runtime) -> None:
    async with serving(rt) as url:
        with trio.fail_after(GUARD), pytest.raises(bridge.BridgeAuthError) as info:
            async with bridge.connect(url, token="wrong"):
                pass
    assert info.value.code == "unauthorized"


async def test_the_python_client_reports_an_unreachable_server() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nobody listens there now
    with trio.fail_after(GUARD), pytest.raises(bridge.BridgeConnectionError):
        async with bridge.connect(f"ws://127.0.0.1:{port}", token=CONTROL):
            pass


# --------------------------------------------------------------------------- limits


async def test_a_frame_over_max_message_size_closes_only_that_connection(
    rt: tf.Runtime,
) -> None:
    async with serving(rt, max_message_size=1000) as url:
        async with raw(url) as other:
            async with raw(url) as big:
                await big.send({"op": "list", "id": 1, "pad": "x" * 2000})
                with trio.fail_after(GUARD), pytest.raises(ConnectionClosed) as info:
                    await big.ws.get_message()
                assert info.value.reason.code == 1009
            assert (await other.request({"op": "list", "id": 2}))["type"] == "reply"


async def test_max_subscriptions_per_connection(rt: tf.Runtime) -> None:
    GATES["limit"] = trio.Event()
    live = [await rt.create_run("gated") for _ in range(3)]
    for run in live:
        await run.stream(input_data={"gate": "limit", "before": 0, "after": 0})
    async with serving(rt, max_subscriptions=2) as url, raw(url) as ws:
        for index, run in enumerate(live):
            await ws.send({"op": "subscribe", "id": index, "runId": run.run_id})
        answers = []
        while len(answers) < 3:
            message = await ws.recv()
            if message["type"] in ("reply", "error"):
                answers.append(message)
        assert [a["type"] for a in answers] == ["reply", "reply", "error"]
        assert answers[2]["code"] == "too-large"
        assert answers[2]["id"] == 2
        GATES["limit"].set()


async def read_forever(ws: WebSocketConnection) -> None:
    while True:
        await ws.get_message()


async def test_an_idle_connection_is_closed_but_a_subscribed_one_is_not(rt: tf.Runtime) -> None:
    GATES["idle"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "idle", "before": 0, "after": 0})
    async with serving(rt, idle_timeout=0.3) as url:
        async with raw(url) as idle, raw(url) as watching:
            await watching.send({"op": "subscribe", "id": 1, "runId": run.run_id})
            with trio.fail_after(GUARD), pytest.raises(ConnectionClosed) as info:
                await read_forever(idle.ws)
            assert info.value.reason.code == 1001
            await trio.sleep(0.5)
            GATES["idle"].set()
            messages = await watching.until_end(run.run_id)
            assert messages[-1]["type"] == "end"


# --------------------------------------------------------------------------- robustness


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frames=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.binary(max_size=20),
            st.dictionaries(
                st.sampled_from(["op", "id", "runId", "fromSeq", "workflowId", "step"]),
                st.one_of(
                    st.none(),
                    st.booleans(),
                    st.integers(-5, 5),
                    st.text(max_size=5),
                    st.sampled_from(["subscribe", "start", "resume", "cancel", "list", "x"]),
                ),
                max_size=4,
            ).map(json.dumps),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_garbage_frames_each_get_one_answer_and_never_hurt_the_server(
    frames: list[str | bytes],
) -> None:
    trio.run(_garbage_session, frames)
    gc.collect()


async def _garbage_session(frames: list[str | bytes]) -> None:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        run = await finished_run(runtime, count=1)
        async with serving(runtime) as url:
            with trio.fail_after(GUARD):
                async with raw(url) as bystander, raw(url) as attacker:
                    for frame in frames:
                        await attacker.ws.send_message(frame)
                        answer = await attacker.recv()
                        while answer["type"] not in ("reply", "error"):
                            answer = await attacker.recv()  # a subscription's messages
                        assert answer["type"] in ("reply", "error")
                        if answer["type"] == "error":
                            assert answer["code"] in bridge._protocol.ERROR_CODES
                            assert answer["code"] != "internal", answer
                    await bystander.send({"op": "subscribe", "id": 1, "runId": run.run_id})
                    messages = await bystander.until_end(run.run_id)
                    assert seqs(chunks_of(messages)) == [1, 2, 3, 4, 5]
        assert (await runtime.get_run_state(run.run_id)).status == "success"


async def test_clients_vanishing_mid_stream_never_disturb_the_run_or_others(
    rt: tf.Runtime,
) -> None:
    run = await rt.create_run("writer")
    async with serving(rt) as url:
        async with bridge.connect(url, token=READ) as steady:
            subscription = steady.subscribe(run.run_id)
            await run.stream(input_data={"count": 400, "pause": 0.001, "every": 10})
            for _ in range(5):
                async with raw(url) as quitter:
                    await quitter.send({"op": "subscribe", "id": 1, "runId": run.run_id})
                    await quitter.recv()
                    await quitter.recv()
                # ... and gone mid-stream (closed from the client side).
            with trio.fail_after(GUARD):
                chunks = [chunk async for chunk in subscription]
    assert seqs(chunks) == list(range(1, 405))
    assert (await rt.get_run_state(run.run_id)).status == "success"


async def test_stopping_the_server_leaves_runs_running(rt: tf.Runtime) -> None:
    GATES["stop"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "stop", "before": 1, "after": 1})
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
        await ws.recv()
    # The server is gone (its connections were closed); the run goes on.
    GATES["stop"].set()
    with trio.fail_after(GUARD):
        chunks = [chunk async for chunk in run.observe_stream()]
    assert chunks[-1].payload.workflow_status == "success"


# --------------------------------------------------------------------------- the client


async def test_client_start_subscribe_resume_list_and_cancel(rt: tf.Runtime) -> None:
    async with serving(rt) as url, bridge.connect(url, token=CONTROL) as client:
        with trio.fail_after(GUARD):
            run_id = await client.start("approval")
            seen: list[tf.Chunk] = []
            async with client.subscribe(run_id) as subscription:
                async for chunk in subscription:
                    seen.append(chunk)
                    if isinstance(chunk, tf.WorkflowStepSuspended):
                        with pytest.raises(bridge.BridgeError) as bad:
                            await client.resume(run_id, {"approved": "no"})
                        assert bad.value.code == "validation"
                        assert await client.resume(run_id, {"approved": True}) == "running"
            assert isinstance(seen[-1], tf.WorkflowFinish)
            assert seen[-1].payload.workflow_status == "success"
            assert subscription.caught_up
            infos = await client.list_runs(workflow_id="approval")
            assert [info.run_id for info in infos] == [run_id]
            assert infos[0].status == "success"
            sleeper = await client.start("sleepy")
            assert await client.cancel(sleeper) == "canceled"
            with pytest.raises(bridge.BridgeError) as missing:
                await client.cancel("no-such-run")
            assert missing.value.code == "not-found"
    local = await stored_log(rt, run_id)
    assert [tf.to_wire(chunk) for chunk in seen] == local


async def test_client_subscription_ends_cleanly_when_left_early(rt: tf.Runtime) -> None:
    GATES["early"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "early", "before": 3, "after": 3})
    async with serving(rt) as url, bridge.connect(url, token=READ) as client:
        with trio.fail_after(GUARD):
            async with client.subscribe(run.run_id, from_seq=2) as subscription:
                first = await subscription.__anext__()
            assert first.seq == 2
            # The run can be subscribed to again at once.
            again = client.subscribe(run.run_id, from_seq=1)
            GATES["early"].set()
            assert seqs([chunk async for chunk in again]) == list(range(1, 11))


async def test_a_slow_consumer_with_a_small_buffer_still_gets_everything(
    rt: tf.Runtime,
) -> None:
    run = await rt.create_run("writer")
    async with serving(rt) as url, bridge.connect(url, token=READ, buffer_size=4) as client:
        subscription = client.subscribe(run.run_id)
        await run.start(input_data={"count": 60})
        received: list[int] = []
        with trio.fail_after(GUARD):
            async for chunk in subscription:
                received.append(chunk.seq)
                if chunk.seq % 7 == 0:
                    await trio.sleep(0.01)  # the buffer fills up meanwhile
        # Requests are answered while a subscription is paused.
        assert (await client.list_runs())[0].run_id == run.run_id
    assert received == list(range(1, 65))


async def test_the_client_reconnects_and_resumes_without_gap_when_the_server_restarts(
    rt: tf.Runtime,
) -> None:
    """Memory storage, one runtime: only the server goes away and comes back."""
    run = await rt.create_run("writer")
    await run.stream(input_data={"count": 300, "pause": 0.002, "every": 5})
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()
        port = await nursery.start(_serve_in_scope, rt, 0, first)
        url = f"ws://127.0.0.1:{port}"
        async with bridge.connect(url, token=READ, backoff_max=0.1) as client:
            received: list[tf.Chunk] = []
            with trio.fail_after(GUARD):
                async for chunk in client.subscribe(run.run_id):
                    received.append(chunk)
                    if len(received) == 40:
                        first.cancel()  # the server dies mid-stream...
                        await trio.sleep(0.2)
                        # ... and comes back on the same port.
                        await nursery.start(_serve_in_scope, rt, port, trio.CancelScope())
            assert client.connections >= 2
        nursery.cancel_scope.cancel()
    assert seqs(received) == list(range(1, 305))
    assert [tf.to_wire(chunk) for chunk in received] == await stored_log(rt, run.run_id)


async def _serve_in_scope(  # noqa: ASYNC114,ASYNC128 - serve() calls started()
    runtime: tf.Runtime, port: int, scope: trio.CancelScope, task_status: Any
) -> None:
    with scope:
        await bridge.serve(runtime, port=port, tokens=TOKENS, task_status=task_status)


async def test_kill_the_server_mid_stream_and_restart_it_on_the_same_sqlite_file(
    tmp_path: Path,
) -> None:
    """The runtime dies with the server (an interrupted execution, its snapshot left
    `running`); a new runtime on the same SQLite file restarts the run and serves it on
    the same port; the client sees exactly the stored log, without gap or duplicate."""
    db = tmp_path / "runs.db"
    chain = tf.create_workflow(id="chain")
    for index in range(12):
        chain = chain.then(tf.create_step(id=f"s{index}", execute=_slow_writer_step))
    chain = chain.commit()
    received: list[tf.Chunk] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()
        port = await nursery.start(_life, db, chain, 0, first, True)
        url = f"ws://127.0.0.1:{port}"
        async with bridge.connect(
            url, token=READ, backoff_initial=0.02, backoff_max=0.1, reconnect_attempts=100
        ) as client:
            with trio.fail_after(GUARD):
                async for chunk in client.subscribe("chain-run"):
                    received.append(chunk)
                    if len(received) == 10:
                        first.cancel()  # server, runtime and the run's execution die
                        await nursery.start(_life, db, chain, port, trio.CancelScope(), False)
        nursery.cancel_scope.cancel()
    storage = tf.SqliteStorage(db)
    try:
        stored = [tf.to_wire(chunk) for chunk in await storage.read_events("chain-run")]
        snapshot = await storage.load_snapshot("chain-run")
    finally:
        await storage.aclose()
    assert snapshot is not None
    assert snapshot.status == "success"
    assert seqs(received) == list(range(1, len(stored) + 1))
    assert [tf.to_wire(chunk) for chunk in received] == stored
    restarts = [c for c in received if isinstance(c, tf.WorkflowStart)]
    assert len(restarts) == 2  # the first execution and the restart


async def _slow_writer_step(ctx: tf.StepContext) -> Any:
    await ctx.writer.write("working")
    await trio.sleep(0.03)
    return ctx.input_data


async def _life(  # noqa: ASYNC114,ASYNC128 - serve() calls started()
    db: Path,
    workflow: tf.Workflow,
    port: int,
    scope: trio.CancelScope,
    start: bool,
    task_status: Any,
) -> None:
    """One process' life: storage, runtime (restarting active runs), bridge server."""
    storage = tf.SqliteStorage(db)
    try:
        with scope:
            async with tf.open_runtime(
                storage=storage, workflows=[workflow], restart_active_runs=not start
            ) as runtime:
                if start:
                    run = await runtime.create_run(workflow, run_id="chain-run")
                    await run.stream(input_data=1)
                await bridge.serve(runtime, port=port, tokens=TOKENS, task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


async def test_the_client_gives_up_after_its_reconnect_attempts(rt: tf.Runtime) -> None:
    GATES["gone"] = trio.Event()
    run = await rt.create_run("gated")
    await run.stream(input_data={"gate": "gone", "before": 2, "after": 0})
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        port = await nursery.start(_serve_in_scope, rt, 0, scope)
        async with bridge.connect(
            f"ws://127.0.0.1:{port}",
            token=READ,
            reconnect_attempts=2,
            backoff_initial=0.01,
            backoff_max=0.02,
        ) as client:
            subscription = client.subscribe(run.run_id)
            seen: list[int] = []

            async def watch() -> None:
                async for chunk in subscription:
                    seen.append(chunk.seq)
                    if chunk.seq == 4:
                        scope.cancel()  # the server goes away for good

            with trio.fail_after(GUARD), pytest.raises(bridge.BridgeConnectionError) as info:
                await watch()
            assert seen == [1, 2, 3, 4]
            assert "gave up after 2 reconnection attempts" in str(info.value)
            with pytest.raises(bridge.BridgeConnectionError):
                await client.list_runs()
    GATES["gone"].set()


async def test_a_chunk_larger_than_the_clients_limit_fails_instead_of_looping(
    rt: tf.Runtime,
) -> None:
    run = await rt.create_run("writer")
    await run.start(input_data={"count": 3, "size": 5000})
    async with serving(rt) as url:
        async with bridge.connect(url, token=READ, max_message_size=2000) as client:
            subscription = client.subscribe(run.run_id)
            seen: list[str] = []

            async def watch() -> None:
                async for chunk in subscription:
                    seen.append(chunk.type)

            with trio.fail_after(GUARD), pytest.raises(bridge.BridgeConnectionError) as info:
                await watch()
    # workflow-start and the step's start fit; the first 5000-character output does not.
    assert seen == ["workflow-start", "workflow-step-start"]
    assert info.value.close_code == 1009
    assert client.connections == 1


async def test_runs_of_workflows_the_server_has_not_registered_can_be_watched(
    rt: tf.Runtime,
) -> None:
    stranger = tf.create_workflow(id="stranger").then(
        tf.create_step(id="write", execute=write_outputs)
    )
    run = await stranger.commit().create_run()
    assert (await run.start(input_data={"count": 2})).status == "success"
    async with serving(rt) as url, raw(url) as ws:
        await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
        messages = await ws.until_end(run.run_id)
        cancel = await ws.request({"op": "cancel", "id": 2, "runId": run.run_id})
    assert seqs(chunks_of(messages)) == [1, 2, 3, 4, 5, 6]
    assert [tf.from_wire(m) for m in chunks_of(messages)] == [
        chunk async for chunk in run.observe_stream(follow=False)
    ]
    assert cancel["code"] == "not-found"
    assert "not registered" in cancel["message"]


# --------------------------------------------------------------------------- other clients


async def test_an_independent_websockets_client_speaks_the_documented_protocol(
    rt: tf.Runtime,
) -> None:
    """The `websockets` library (not this package's code) drives a run by the protocol of
    docs/bridge.md alone."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    def session(url: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        with connect(
            url,
            additional_headers={"Authorization": f"Bearer {CONTROL}"},
            proxy=None,
            open_timeout=GUARD,
        ) as ws:

            def ask(message: dict[str, Any]) -> dict[str, Any]:
                ws.send(json.dumps(message))
                answer: dict[str, Any] = json.loads(ws.recv(timeout=GUARD))
                messages.append(answer)
                return answer

            run_id = ask({"op": "start", "id": 1, "workflowId": "approval"})["runId"]
            ws.send(json.dumps({"op": "subscribe", "id": 2, "runId": run_id, "fromSeq": 1}))
            while True:
                message = json.loads(ws.recv(timeout=GUARD))
                messages.append(message)
                if message["type"] == "workflow-step-suspended":
                    ws.send(
                        json.dumps(
                            {
                                "op": "resume",
                                "id": 3,
                                "runId": run_id,
                                "resumeData": {"approved": False},
                            }
                        )
                    )
                if message["type"] == "end":
                    break
            ask({"op": "list", "id": 4, "workflowId": "approval"})
            ask({"op": "teleport", "id": 5})
        return messages

    def refused(url: str) -> int:
        try:
            with connect(url, additional_headers={"Authorization": "Bearer nope"}, proxy=None):
                pass
        except InvalidStatus as exc:
            return int(exc.response.status_code)
        raise AssertionError("accepted")

    async with serving(rt) as url:
        with trio.fail_after(GUARD * 2):
            messages = await trio.to_thread.run_sync(session, url)
            status = await trio.to_thread.run_sync(refused, url)
    assert status == 401
    start = messages[0]
    run_id = start["runId"]
    assert start == {"type": "reply", "id": 1, "runId": run_id}
    assert messages[1] == {"type": "reply", "id": 2, "runId": run_id}
    chunks = chunks_of(messages)
    assert seqs(chunks) == list(range(1, len(chunks) + 1))
    for chunk in chunks:
        assert chunk["runId"] == run_id
        assert chunk["from"] in ("WORKFLOW", "USER")
        assert isinstance(chunk["payload"], dict)
    assert [tf.from_wire(chunk) for chunk in chunks] == [
        c
        async for c in (await rt.create_run("approval", run_id=run_id)).observe_stream(follow=False)
    ]
    resumed = next(m for m in messages if m.get("id") == 3)
    assert resumed == {"type": "reply", "id": 3, "runId": run_id, "status": "running"}
    caught_up = next(m for m in messages if m["type"] == "caught-up")
    assert caught_up["runId"] == run_id
    assert messages[-3]["type"] == "end"
    assert messages[-3]["seq"] == chunks[-1]["seq"]
    listed = messages[-2]
    assert listed["id"] == 4
    assert [row["runId"] for row in listed["runs"]] == [run_id]
    assert set(listed["runs"][0]) == {"runId", "workflowId", "status", "createdAt", "updatedAt"}
    assert messages[-1]["type"] == "error"
    assert messages[-1]["id"] == 5
    assert messages[-1]["code"] == "unknown-op"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"tokens": {"t": "admin"}}, "role must be 'read' or 'control'"),
        ({"tokens": {"": "read"}}, "a token must be a non-empty str"),
        ({"max_subscriptions": 0}, "max_subscriptions must be an int >= 1"),
        ({"idle_timeout": -1}, "idle_timeout must be a number of seconds > 0"),
        ({"lag_timeout": math.nan}, "lag_timeout must be a number of seconds > 0"),
    ],
)
async def test_serve_rejects_bad_options(option: dict[str, Any], message: str) -> None:
    async with tf.open_runtime() as runtime:
        with pytest.raises(ValueError, match=message):
            await bridge.serve(runtime, port=0, **option)
