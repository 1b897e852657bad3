"""The bridge against hostile or broken peers (issue 12): requests with fields that are not
valid Unicode, refused starts that must store nothing, out-of-range integers, a server
that sends values that are not strict JSON, and a client facing such a server.

Same rules as tests/test_bridge.py (loopback, port 0, a `fail_after` guard, the client
closes, a garbage collection after each test), whose helpers these tests share.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio
from test_bridge import (
    CONTROL,
    GUARD,
    WORKFLOWS,
    raw,
    serving,
)
from trio_websocket import WebSocketRequest, serve_websocket

import trioflow as tf
import trioflow.bridge as bridge
from trioflow.bridge import _protocol as p

LONE = "\ud800"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    yield
    gc.collect()


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime(workflows=WORKFLOWS) as runtime:
        yield runtime


def frame(message: dict[str, Any]) -> str:
    """A request as a client may send it: lone surrogates escaped as ``\\ud800`` (valid
    JSON syntax, but not valid Unicode text)."""
    return json.dumps(message)  # ensure_ascii=True writes "\ud800" as an escape


# --------------------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "list", "id": LONE}, '"id"'),
        ({"op": "unsubscribe", "id": 1, "runId": LONE}, '"runId"'),
        ({"op": "subscribe", "id": 1, "runId": "a" + LONE}, '"runId"'),
        ({"op": "cancel", "id": 1, "runId": LONE}, '"runId"'),
        ({"op": "start", "id": 1, "workflowId": LONE}, '"workflowId"'),
        ({"op": "start", "id": 1, "workflowId": "writer", "runId": LONE}, '"runId"'),
        ({"op": "resume", "id": 1, "runId": "r", "step": [LONE]}, '"step"'),
        ({"op": "resume", "id": 1, "runId": "r", "label": LONE}, '"label"'),
        ({"op": "list", "id": 1, "workflowId": LONE}, '"workflowId"'),
        ({"op": "list", "id": 1, "status": LONE}, '"status"'),
    ],
)
async def test_a_lone_surrogate_in_a_string_field_is_a_bad_request_and_the_connection_stays(
    rt: tf.Runtime, message: dict[str, Any], field: str
) -> None:
    async with serving(rt) as url, raw(url) as ws:
        await ws.ws.send_message(frame(message))
        reply = await ws.recv()
        assert reply["type"] == "error"
        assert reply["code"] == "bad-request"
        assert field in reply["message"]
        assert "surrogate" in reply["message"]
        # The id is echoed when it is valid text, never when it is not.
        assert reply["id"] == (None if message["id"] == LONE else message["id"])
        assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"


async def test_a_lone_surrogate_in_an_unknown_op_is_answered_in_strict_json(
    rt: tf.Runtime,
) -> None:
    async with serving(rt) as url, raw(url) as ws:
        await ws.ws.send_message(frame({"op": "go" + LONE, "id": 3}))
        text = await ws.ws.get_message()
        text.encode("utf-8")  # valid Unicode text
        reply = json.loads(text)
        assert (reply["code"], reply["id"]) == ("unknown-op", 3)
        assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"


async def test_start_with_a_lone_surrogate_in_its_input_is_refused_and_stores_nothing(
    rt: tf.Runtime,
) -> None:
    async with serving(rt) as url, raw(url) as ws:
        for data in ({"count": 1, "note": LONE}, {"count": 1, LONE: 1}):
            await ws.ws.send_message(
                frame({"op": "start", "id": 1, "workflowId": "writer", "inputData": data})
            )
            reply = json.loads(await ws.ws.get_message())
            assert (reply["type"], reply["code"]) == ("error", "validation"), reply
            assert "surrogate" in reply["message"]
    assert await rt.list_runs() == []


# --------------------------------------------------------------------------- refused starts


@pytest.mark.parametrize(
    "fields",
    [
        {"workflowId": "orders", "inputData": {"id": "o", "amount": "5"}},
        {"workflowId": "orders", "inputData": None},
        {"workflowId": "writer", "inputData": {"count": 1}, "initialState": [1, 2]},
        {"workflowId": "writer", "inputData": json.loads("[" * 150 + "]" * 150)},
    ],
)
async def test_a_refused_start_stores_nothing(rt: tf.Runtime, fields: dict[str, Any]) -> None:
    async with serving(rt) as url, raw(url) as ws:
        for i in range(20):
            reply = await ws.request({"op": "start", "id": i, **fields})
            assert reply["type"] == "error", reply
            assert reply["code"] == "validation", reply
    assert await rt.list_runs() == []


async def test_a_refused_start_with_a_given_run_id_leaves_that_id_free(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        bad = {"op": "start", "workflowId": "orders", "runId": "mine", "inputData": {"id": 1}}
        assert (await ws.request({**bad, "id": 1}))["code"] == "validation"
        good = {**bad, "id": 2, "inputData": {"id": "o", "amount": 5}}
        reply = await ws.request(good)
        assert reply == {"type": "reply", "id": 2, "runId": "mine"}
    assert [info.run_id for info in await rt.list_runs()] == ["mine"]


# --------------------------------------------------------------------------- integer ranges


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "list", "offset": 2**63}, '"offset"'),
        ({"op": "list", "offset": 2**64 + 5}, '"offset"'),
        ({"op": "list", "offset": -1}, '"offset"'),
        ({"op": "list", "limit": 2**63}, '"limit"'),
        ({"op": "list", "limit": -3}, '"limit"'),
        ({"op": "list", "offset": 1e300}, '"offset"'),
        ({"op": "subscribe", "runId": "r", "fromSeq": 2**63}, '"fromSeq"'),
        ({"op": "resume", "runId": "r", "forEachIndex": 2**63}, '"forEachIndex"'),
    ],
)
async def test_integers_out_of_range_are_bad_requests_naming_the_field(
    rt: tf.Runtime, message: dict[str, Any], field: str
) -> None:
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request({**message, "id": 7})
        assert (reply["type"], reply["id"], reply["code"]) == ("error", 7, "bad-request"), reply
        assert field in reply["message"]
        assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"


async def test_the_largest_offset_accepted_lists_nothing(rt: tf.Runtime) -> None:
    async with serving(rt) as url, raw(url) as ws:
        reply = await ws.request({"op": "list", "id": 1, "offset": p.MAX_WIRE_INT})
    assert reply == {"type": "reply", "id": 1, "runs": []}


# --------------------------------------------------------------------------- strict JSON out


def test_every_server_message_is_encoded_as_strict_json_or_refused() -> None:
    assert p.encode({"type": "reply", "id": 1, "x": 1.5}) == b'{"type":"reply","id":1,"x":1.5}'
    for bad in (float("nan"), float("inf"), -float("inf"), LONE, {LONE: 1}):
        with pytest.raises(ValueError, match="strict JSON"):
            p.encode({"type": "reply", "id": 1, "x": bad})


def test_error_messages_never_carry_a_lone_surrogate() -> None:
    message = p.error(1, "validation", f"bad value {LONE}!")
    p.encode(message)
    assert message["message"] == "bad value \ufffd!"


class _NotJson:
    """A storage whose stored log holds a chunk that is not strict JSON (as a database
    written by an older trioflow may)."""

    def __init__(self, inner: Any, bad_seq: int) -> None:
        self._inner = inner
        self._bad_seq = bad_seq

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read_events(self, run_id: str, **kwargs: Any) -> list[tf.Chunk]:
        chunks: list[tf.Chunk] = await self._inner.read_events(run_id, **kwargs)
        out = []
        for chunk in chunks:
            if chunk.seq == self._bad_seq:
                chunk = tf.DataChunk(
                    type="data-x", run_id=run_id, seq=chunk.seq, data=float("inf")
                )
            out.append(chunk)
        return out


async def test_a_chunk_that_is_not_strict_json_ends_the_subscription_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage, workflows=WORKFLOWS) as producer:
        run = await producer.create_run("writer")
        await run.start(input_data={"count": 3})
    # A server that has not registered the workflow follows the stored log.
    async with tf.open_runtime(storage=_NotJson(storage, 3)) as viewer:  # type: ignore[arg-type]
        async with serving(viewer) as url, raw(url) as ws:
            await ws.ws.send_message(frame({"op": "subscribe", "id": 1, "runId": run.run_id}))
            texts: list[str] = []
            with trio.fail_after(GUARD):
                while True:
                    text = await ws.ws.get_message()
                    texts.append(text)
                    if json.loads(text)["type"] in ("error", "end"):
                        break
            for text in texts:
                json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} sent"))
            last = json.loads(texts[-1])
            assert last["type"] == "error"
            assert last["runId"] == run.run_id
            assert "seq 3" in last["message"]
            assert "strict JSON" in last["message"]
            assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"
    assert any("seq 3" in r.getMessage() for r in caplog.records), caplog.records


async def test_a_failed_subscription_is_logged_with_the_exception_class_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage, workflows=WORKFLOWS) as producer:
        run = await producer.create_run("writer")
        await run.start(input_data={"count": 2})

    class Broken(_NotJson):
        async def read_events(self, run_id: str, **kwargs: Any) -> list[tf.Chunk]:
            await trio.lowlevel.checkpoint()
            raise tf.StorageError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="trioflow.bridge"):
        async with tf.open_runtime(storage=Broken(storage, 0)) as viewer:  # type: ignore[arg-type]
            async with serving(viewer) as url, raw(url) as ws:
                await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
                while (await ws.recv())["type"] != "error":
                    pass
    lines = [r.getMessage() for r in caplog.records if "subscription" in r.getMessage()]
    assert lines, caplog.records
    assert "StorageError" in lines[0]
    assert "disk on fire" in lines[0]


# --------------------------------------------------------------------------- the client


async def test_the_client_gives_up_on_a_chunk_it_cannot_read_instead_of_looping() -> None:
    _SUBSCRIBES.clear()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, _unreadable_chunk_2("r"), "127.0.0.1", 0, None)
        )
        url = f"ws://127.0.0.1:{server.port}"
        seen: list[int] = []

        async def read_all() -> None:
            async with bridge.connect(url, token=CONTROL) as client:
                async for chunk in client.subscribe("r"):
                    seen.append(chunk.seq)

        with trio.fail_after(GUARD), pytest.raises(bridge.BridgeError) as info:
            await read_all()
        nursery.cancel_scope.cancel()
    assert seen == [1]
    assert "seq 2" in info.value.message
    assert "Infinity" in info.value.message
    assert info.value.run_id == "r"
    # A bounded number of attempts at the unreadable seq, then the error.
    assert _SUBSCRIBES[0] == 1
    assert set(_SUBSCRIBES[1:]) == {2}
    assert 2 <= len(_SUBSCRIBES) <= 6


_SUBSCRIBES: list[int] = []


def _unreadable_chunk_2(run_id: str) -> Any:
    """A server handler that answers every subscribe with a reply, chunk 1, then chunk 2
    written with ``Infinity`` (not JSON), then chunk 3: a client can never read chunk 2."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = json.loads(await ws.get_message())
                if message.get("op") != "subscribe":
                    continue
                _SUBSCRIBES.append(message.get("fromSeq", 1))
                if len(_SUBSCRIBES) > 50:
                    raise AssertionError("the client keeps re-subscribing")
                await ws.send_message(json.dumps({"type": "reply", "id": message["id"]}))
                for seq in range(message.get("fromSeq", 1), 4):
                    data = "Infinity" if seq == 2 else "1"
                    await ws.send_message(
                        f'{{"type":"data-x","runId":"{run_id}","seq":{seq},"from":"USER",'
                        f'"data":{data}}}'
                    )
        except Exception:  # the client went away
            return

    return handler


def test_an_end_before_missing_chunks_re_subscribes_instead_of_ending() -> None:
    from test_bridge_protocol import accept, buffered, new_subscription, wire_chunk

    client, sub = new_subscription()
    accept(sub)
    sub._on_message("workflow-step-output", wire_chunk(1))
    # Chunk 2 (the terminal one) was unreadable; its end came.
    sub._on_message("end", {"type": "end", "runId": "r", "seq": 2})
    assert not sub._finished
    assert client.subscribed_from == [1, 2]
    accept(sub)
    sub._on_message("workflow-step-output", wire_chunk(2))
    sub._on_message("end", {"type": "end", "runId": "r", "seq": 2})
    assert sub._finished
    assert buffered(sub) == [1, 2]


def test_gaps_at_one_seq_fail_the_subscription_after_a_bounded_number_of_tries() -> None:
    from test_bridge_protocol import accept, new_subscription, wire_chunk

    from trioflow.bridge._subscription import MAX_GAP_RETRIES

    client, sub = new_subscription()
    for _ in range(MAX_GAP_RETRIES + 1):
        accept(sub)
        sub._on_message("workflow-step-output", wire_chunk(2))
    assert client.subscribed_from == [1] * (MAX_GAP_RETRIES + 1)
    assert sub._finished
    error = sub._buffer[-1]
    assert isinstance(error, bridge.BridgeError)
    assert "chunk seq 1" in error.message


# --------------------------------------------------------------------------- one group helper


def test_the_bridge_and_the_cli_unwrap_groups_with_the_one_helper() -> None:
    import inspect

    from trioflow.bridge import _client, _server
    from trioflow.cli import _app

    for module in (_client, _server, _app):
        assert not hasattr(module, "_leaves"), module
        assert not hasattr(module, "_raise"), module
        source = inspect.getsource(module)
        assert "len(group.exceptions) == 1" not in source
    assert "unwrap_groups" in inspect.getsource(_client.connect)


async def test_an_error_in_the_clients_block_is_raised_as_itself(rt: tf.Runtime) -> None:
    async def use(url: str) -> None:
        async with bridge.connect(url, token=CONTROL) as client:
            await client.list_runs()
            raise KeyError("mine")

    async with serving(rt) as url:
        with pytest.raises(KeyError) as info:
            await use(url)
    assert info.value.args == ("mine",)
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


@pytest.mark.parametrize(
    "fields",
    [
        {"resumeData": {"approved": True, "note": LONE}},
        {"resumeData": {"approved": True}, "requestContext": {LONE: 1}},
    ],
)
async def test_resume_data_with_a_lone_surrogate_is_a_validation_error(
    rt: tf.Runtime, fields: dict[str, Any]
) -> None:
    run = await rt.create_run("approval")
    await run.start()
    async with serving(rt) as url, raw(url) as ws:
        await ws.ws.send_message(frame({"op": "resume", "id": 4, "runId": run.run_id, **fields}))
        reply = json.loads(await ws.ws.get_message())
        assert (reply["type"], reply["id"], reply["code"]) == ("error", 4, "validation"), reply
        assert (await ws.request({"op": "list", "id": 2}))["type"] == "reply"
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_a_start_its_on_start_hook_refuses_stores_nothing() -> None:
    def refuse(info: Any) -> None:
        raise PermissionError(f"no starts for {info.workflow_id}")

    async def nothing(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()

    guarded = (
        tf.create_workflow(id="guarded", on_start=refuse)
        .then(tf.create_step(id="s", execute=nothing))
        .commit()
    )
    async with tf.open_runtime(workflows=[guarded]) as runtime:
        async with serving(runtime) as url, raw(url) as ws:
            reply = await ws.request({"op": "start", "id": 1, "workflowId": "guarded"})
            assert (reply["type"], reply["code"]) == ("error", "internal"), reply
        assert await runtime.list_runs() == []


# --------------------------------------------------------------------------- an execution that dies


class _FailingStorage(tf.MemoryStorage):
    """Storage that breaks (a full disk, say) once ``broken`` is set."""

    broken = False

    async def append_events(self, run_id: str, events: Any) -> None:
        if self.broken:
            raise tf.StorageError("the disk is full")
        await super().append_events(run_id, events)

    async def save_snapshot(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise tf.StorageError("the disk is full")
        return await super().save_snapshot(*args, **kwargs)


async def test_a_subscriber_of_a_run_whose_execution_died_here_gets_an_error_not_silence() -> None:
    gate = trio.Event()

    async def write_then_wait(ctx: tf.StepContext) -> str:
        await ctx.writer.write("before")
        await gate.wait()
        await ctx.writer.write("after")
        return "done"

    dying = tf.create_workflow(id="dying").then(tf.create_step(id="s", execute=write_then_wait))
    storage = _FailingStorage()
    async with tf.open_runtime(storage=storage, workflows=[dying.commit()]) as runtime:
        run = await runtime.create_run("dying")
        await (await run.stream(input_data=None)).aclose()
        async with serving(runtime) as url, raw(url) as ws:
            await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
            seen = [await ws.recv()]
            while seen[-1]["type"] != "caught-up":
                seen.append(await ws.recv())
            storage.broken = True
            gate.set()
            message = await ws.recv()  # within GUARD seconds, not never
            while message["type"].startswith(("workflow-", "data-")):
                seen.append(message)
                message = await ws.recv()
            assert (message["type"], message["code"], message["runId"]) == (
                "error",
                "internal",
                run.run_id,
            ), message
            text = message["message"]
            assert "execution in this server died before its workflow-finish" in text
            assert "(StorageError: the disk is full)" in text
            assert f"subscribe again from seq {seen[-1]['seq'] + 1} once it is restarted" in text
            # The connection stays usable.
            assert (await ws.request({"op": "whoami", "id": 2}))["type"] == "reply"


class _DurableFailingStorage(_FailingStorage):
    """The same, as a storage other processes share (durable: a restart elsewhere)."""

    durable = True


async def test_after_its_execution_died_a_durable_run_is_followed_in_storage() -> None:
    """The subscriber that followed the death is told; a later subscription follows what
    storage gets, e.g. the restart another process makes, to the run's end."""
    gate = trio.Event()

    async def write_then_wait(ctx: tf.StepContext) -> str:
        await ctx.writer.write("before")
        await gate.wait()
        await ctx.writer.write("after")
        return "done"

    dying = tf.create_workflow(id="dying").then(tf.create_step(id="s", execute=write_then_wait))
    workflows = [dying.commit()]
    storage = _DurableFailingStorage()
    async with (
        tf.open_runtime(storage=storage, workflows=workflows) as here,
        tf.open_runtime(storage=storage, workflows=workflows) as other,
    ):
        run = await here.create_run("dying")
        await (await run.stream(input_data=None)).aclose()
        async with serving(here) as url, raw(url) as ws:
            await ws.send({"op": "subscribe", "id": 1, "runId": run.run_id})
            seen = [await ws.recv()]
            while seen[-1]["type"] != "caught-up":
                seen.append(await ws.recv())
            storage.broken = True
            gate.set()
            message = await ws.recv()
            while message["type"] != "error":
                seen.append(message)
                message = await ws.recv()
            assert "died" in message["message"]
            storage.broken = False
            again = seen[-1]["seq"] + 1
            await ws.send({"op": "subscribe", "id": 2, "runId": run.run_id, "fromSeq": again})
            assert (await ws.recv())["type"] == "reply"
            assert (await ws.recv())["type"] == "caught-up"
            restarted = await (await other.create_run("dying", run_id=run.run_id)).restart()
            assert restarted.status == "success"
            messages = await ws.until_end(run.run_id)
            chunks = [m for m in messages if m["type"].startswith("workflow-")]
            assert chunks[0]["seq"] == again
            assert chunks[-1]["payload"]["workflowStatus"] == "success"
