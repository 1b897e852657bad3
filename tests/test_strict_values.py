"""Strict JSON in what a step leaves behind beyond its output (its request-context values,
a tripwire's metadata) and in what MemoryStorage accepts, as the SQL backends do."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest

import trioflow as tf
from trioflow._core._chunks import StepOutputPayload, WorkflowStepOutput
from trioflow._core._serde import snapshot_to_json, to_wire
from trioflow.testing import FaultyStorage


def strict(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


async def test_a_step_setting_a_nan_request_context_value_fails_naming_it() -> None:
    async def setter(ctx: tf.StepContext) -> str:
        ctx.request_context["ok"] = 1
        ctx.request_context["x"] = float("nan")
        return "done"

    wf = tf.create_workflow(id="w").then(tf.create_step(id="setter", execute=setter)).commit()
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage):
        result = await (await wf.create_run(run_id="r")).start()
    assert result.status == "failed"
    assert isinstance(result.error, tf.NotJsonError)
    assert "request_context.x" in str(result.error)
    snapshot = await storage.load_snapshot("r")
    assert snapshot is not None
    assert snapshot.request_context == {"ok": 1}  # the refused value was never set
    strict(snapshot_to_json(snapshot))


def test_request_context_refuses_values_that_are_not_strict_json() -> None:
    context = tf.RequestContext({"a": 1})
    with pytest.raises(tf.NotJsonError, match=r"request_context\.b\.deep\[1\]"):
        context["b"] = {"deep": [1, math.inf]}
    with pytest.raises(tf.NotJsonError, match=r"request_context\.c"):
        context["c"] = b"bytes"
    context["d"] = {"fine": [1, "two"]}
    assert dict(context) == {"a": 1, "d": {"fine": [1, "two"]}}


async def test_tripwire_metadata_that_is_not_json_is_kept_as_its_repr() -> None:
    async def trip(ctx: tf.StepContext) -> None:
        raise tf.TripwireError("blocked", metadata={"score": float("nan"), "why": "policy"})

    wf = tf.create_workflow(id="w").then(tf.create_step(id="trip", execute=trip)).commit()
    storage = FaultyStorage(tf.MemoryStorage())  # durable: every write goes through
    async with tf.open_runtime(storage=storage) as rt:
        run = await wf.create_run(run_id="r")
        out = await run.stream()
        chunks = [c async for c in out]
        result = await out.result()
        state = await rt.get_run_state("r")
    assert result.status == "tripwire"
    assert result.tripwire is not None
    assert result.tripwire.metadata == {"score": "nan", "why": "policy"}
    finish = chunks[-1]
    assert finish.type == "workflow-finish"
    strict(to_wire(finish))
    assert state.status == "tripwire"
    snapshot = await storage.load_snapshot("r")
    assert snapshot is not None
    strict(snapshot_to_json(snapshot))


# --- MemoryStorage refuses what SQLite refuses -------------------------------------------


async def stored_run(storage: tf.MemoryStorage) -> Any:
    wf = tf.create_workflow(id="w").then(tf.create_step(id="s", execute=_echo)).commit()
    async with tf.open_runtime(storage=storage):
        await (await wf.create_run(run_id="r")).start(input_data={"n": 1})
    snapshot = await storage.load_snapshot("r")
    assert snapshot is not None
    return snapshot


async def _echo(ctx: tf.StepContext) -> Any:
    return ctx.input_data


async def test_memory_storage_refuses_a_snapshot_that_is_not_strict_json() -> None:
    storage = tf.MemoryStorage()
    snapshot = await stored_run(storage)
    events_before = len(await storage.read_events("r"))
    bad_step = attrs.evolve(
        snapshot, steps={**snapshot.steps, "s": {"status": "success", "output": [math.nan]}}
    )
    with pytest.raises(tf.StorageError, match=r"step 's'.*output\[0\]"):
        await storage.save_snapshot(bad_step)
    bad_state = attrs.evolve(snapshot, state={"x": "\ud800"})
    with pytest.raises(tf.StorageError, match="state"):
        await storage.save_snapshot(bad_state)
    assert await storage.load_snapshot("r") == snapshot  # nothing was written
    assert len(await storage.read_events("r")) == events_before
    with pytest.raises(tf.StorageError, match="request_context"):
        await storage.create_run(
            attrs.evolve(snapshot, run_id="r2", request_context={"x": math.inf})
        )
    assert await storage.load_snapshot("r2") is None


async def test_memory_storage_refuses_a_chunk_that_is_not_strict_json() -> None:
    storage = tf.MemoryStorage()
    snapshot = await stored_run(storage)
    seq = len(await storage.read_events("r")) + 1
    bad = WorkflowStepOutput(
        run_id="r",
        seq=seq,
        payload=StepOutputPayload(output={"v": math.nan}, step_name="s", run_id="r"),
    )
    with pytest.raises(tf.StorageError, match=rf"event seq {seq}.*v"):
        await storage.append_events("r", [bad])
    with pytest.raises(tf.StorageError, match=rf"event seq {seq}"):
        await storage.save_snapshot(snapshot, [bad])
    assert len(await storage.read_events("r")) == seq - 1


async def test_memory_storage_refuses_an_int_json_cannot_write_in_a_step_record() -> None:
    # Its quick check once took every int as JSON (the engine's had the same gap): one
    # predicate, trioflow._core._json.plainly_json, now serves both.
    storage = tf.MemoryStorage()
    snapshot = await stored_run(storage)
    huge = attrs.evolve(
        snapshot, steps={**snapshot.steps, "s": {"status": "success", "endedAt": 10**5000}}
    )
    with pytest.raises(tf.StorageError, match="step 's'"):
        await storage.save_snapshot(huge)
    assert await storage.load_snapshot("r") == snapshot
