"""What identifies a step execution: ``ctx.idempotency_key`` (stable across a crash and
``restart()``, new for a new execution), ``payload.restart`` on the ``workflow-start`` of a
restarted execution, ``StepResult.retry_count`` and ``all_steps`` (every settled step at
every depth, by qualified key)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import FaultyStorage, SimulatedCrash


def recording(step_id: str, keys: list[str], **kwargs: Any) -> tf.Step:
    """A step that records its idempotency key, takes a while, and passes its input on."""

    async def execute(ctx: tf.StepContext) -> Any:
        keys.append(ctx.idempotency_key)
        await trio.sleep(0.1)
        return ctx.input_data

    return tf.create_step(id=step_id, execute=execute, **kwargs)


def every_shape(keys: list[str]) -> tf.Workflow:
    """A step at every depth: top level, parallel, foreach over a nested workflow, a loop
    over a nested workflow, a loop over a step."""
    inner = (
        tf.create_workflow(id="inner")
        .then(recording("fetch", keys))
        .then(recording("parse", keys))
        .commit()
    )
    body = tf.create_workflow(id="body").then(recording("tick", keys)).commit()
    return (
        tf.create_workflow(id="keys")
        .then(recording("first", keys))
        .parallel([recording("left", keys), recording("right", keys)])
        .map(lambda ctx: [1, 2, 3])
        .foreach(inner, concurrency=2)
        .dowhile(body, lambda ctx: ctx.iteration_count < 3)
        .dountil(recording("poll", keys), lambda ctx: ctx.iteration_count >= 2)
        .commit()
    )


EVERY_SHAPE_KEYS = [
    "r/first",
    "r/left",
    "r/right",
    *(f"r/inner[{i}].{step}" for i in range(3) for step in ("fetch", "parse")),
    "r/body#1.tick",
    "r/body#2.tick",
    "r/body#3.tick",
    "r/poll#1",
    "r/poll#2",
]


async def test_the_key_names_run_path_foreach_index_and_loop_iteration(
    autojump_clock: Any,
) -> None:
    keys: list[str] = []
    async with tf.open_runtime():
        run = await every_shape(keys).create_run(run_id="r")
        result = await run.start(input_data={"n": 1})
    assert result.status == "success"
    assert sorted(keys) == sorted(EVERY_SHAPE_KEYS)


async def crash_after(write: int, mode: Any, keys: list[str]) -> tuple[FaultyStorage, bool]:
    """Run ``every_shape`` with a crash at durable write ``write``, then restart() it in a
    new runtime until it ends."""
    storage = FaultyStorage(tf.MemoryStorage(), crash_at=write, mode=mode)
    wf = every_shape(keys)
    try:
        async with tf.open_runtime(storage=storage):
            run = await wf.create_run(run_id="r")
            await run.start(input_data={"n": 1})
    except (SimulatedCrash, BaseExceptionGroup) as crash:
        if isinstance(crash, BaseExceptionGroup) and crash.subgroup(SimulatedCrash) is None:
            raise
    crashed = storage.crashed
    storage.disarm()
    async with tf.open_runtime(storage=storage) as rt:
        run = await wf.create_run(run_id="r")
        if (await rt.get_run_state("r")).status in ("running", "waiting"):
            result = await run.restart()
            assert result.status == "success", result
        else:
            assert (await rt.get_run_state("r")).status in ("success", "pending")
    return storage, crashed


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_a_crash_and_restart_at_any_write_gives_a_rerun_step_the_same_key(
    mode: str, autojump_clock: Any
) -> None:
    rerun = 0
    write = 1
    while True:
        keys: list[str] = []
        storage, crashed = await crash_after(write, mode, keys)
        if not crashed:
            break
        if (await storage.load_snapshot("r")) is not None and keys:
            # Whatever ran twice ran under the key it had: no key the uninterrupted run
            # does not have, and every step of it ran.
            assert set(keys) == set(EVERY_SHAPE_KEYS), (write, mode, Counter(keys))
            rerun += len(keys) - len(set(keys))
        write += 1
    assert write > 10  # the run has that many durable writes: each one was a crash point
    assert rerun > 0  # some crash did interrupt a step that then ran again


async def test_runtime_stopped_mid_step_restart_reruns_it_with_its_key_at_every_depth(
    autojump_clock: Any,
) -> None:
    """The process stops while a step inside foreach item 1 of a nested workflow inside a
    loop iteration runs: restart() runs it again with the same key, and the restarted
    execution's workflow-start says restart."""
    keys: list[str] = []
    reached = trio.Event()
    calls = Counter[str]()

    async def fetch(ctx: tf.StepContext) -> Any:
        keys.append(ctx.idempotency_key)
        calls[ctx.idempotency_key] += 1
        if ctx.input_data == 1 and calls[ctx.idempotency_key] == 1:
            reached.set()
            await trio.sleep_forever()
        return ctx.input_data

    item = tf.create_workflow(id="item").then(tf.create_step(id="fetch", execute=fetch)).commit()
    body = (
        tf.create_workflow(id="body")
        .map(lambda ctx: [0, 1, 2])
        .foreach(item, concurrency=1)
        .commit()
    )
    wf = tf.create_workflow(id="outer").dountil(body, lambda ctx: True).commit()
    storage = FaultyStorage(tf.MemoryStorage())  # durable: progress is stored as it happens
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        await run.stream(input_data=None)
        await reached.wait()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        result = await run.restart()
    assert result.status == "success"
    # Item 1 was running when the runtime stopped: it runs again under the same key.
    assert keys == [
        "r/body#1.item[0].fetch",
        "r/body#1.item[1].fetch",
        "r/body#1.item[1].fetch",
        "r/body#1.item[2].fetch",
    ]
    starts = [c for c in await storage.read_events("r") if c.type == "workflow-start"]
    assert [c.payload.restart for c in starts] == [False, True]
    assert [tf.to_wire(c)["payload"].get("restart") for c in starts] == [None, True]


def approving(keys: list[str], rounds: int) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        keys.append(ctx.idempotency_key)
        asked = (ctx.suspend_data or {}).get("round", 0)
        if asked < rounds:
            return await ctx.suspend({"round": asked + 1})
        return {"rounds": asked}

    return tf.create_step(id="approve", execute=execute)


async def test_each_resume_is_a_new_execution_with_a_new_key() -> None:
    keys: list[str] = []
    wf = tf.create_workflow(id="asks").then(approving(keys, rounds=2)).commit()
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        assert (await run.start()).status == "suspended"
        assert (await run.resume(resume_data={})).status == "suspended"
    # The count of resumes is stored with the run: another runtime continues it.
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        result = await run.resume(resume_data={})
    assert result.status == "success"
    assert keys == ["r/approve", "r/approve@1", "r/approve@2"]
    # The count is bookkeeping: not in public results or chunks.
    assert result.steps["approve"].metadata is None
    for chunk in await storage.read_events("r"):
        assert "resumeCount" not in str(tf.to_wire(chunk))


async def test_resumes_are_counted_per_foreach_item_and_inside_nested_workflows() -> None:
    keys: list[str] = []
    inner = tf.create_workflow(id="inner").then(approving(keys, rounds=1)).commit()
    wf = tf.create_workflow(id="many").foreach(inner, concurrency=2).commit()
    async with tf.open_runtime():
        run = await wf.create_run(run_id="r")
        assert (await run.start(input_data=[1, 2])).status == "suspended"
        assert (await run.resume(resume_data={}, for_each_index=1)).status == "suspended"
        result = await run.resume(resume_data={}, for_each_index=0)
    assert result.status == "success"
    assert keys == [
        "r/inner[0].approve",
        "r/inner[1].approve",
        "r/inner[1].approve@1",
        "r/inner[0].approve@1",
    ]


async def test_a_crash_during_a_resume_replays_it_with_the_same_key_and_says_restart(
    autojump_clock: Any,
) -> None:
    keys: list[str] = []
    reached = trio.Event()

    async def approve(ctx: tf.StepContext) -> Any:
        keys.append(ctx.idempotency_key)
        if ctx.resume_data is None:
            return await ctx.suspend({})
        if len(keys) == 2:
            reached.set()
            await trio.sleep_forever()
        return "approved"

    wf = tf.create_workflow(id="w").then(tf.create_step(id="approve", execute=approve)).commit()
    storage = FaultyStorage(tf.MemoryStorage())
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        await run.start()
        await run.resume_stream(resume_data={"ok": True})
        await reached.wait()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        result = await run.restart()
    assert result.status == "success"
    assert keys == ["r/approve", "r/approve@1", "r/approve@1"]
    starts = [c for c in await storage.read_events("r") if c.type == "workflow-start"]
    assert [c.payload.restart for c in starts] == [False, False, True]


async def test_retries_keep_the_key_and_are_counted_on_the_result_and_its_chunk() -> None:
    keys: list[str] = []

    async def flaky(ctx: tf.StepContext) -> str:
        keys.append(ctx.idempotency_key)
        if ctx.retry_count < 2:
            raise RuntimeError("not yet")
        return "done"

    async def steady(ctx: tf.StepContext) -> str:
        return "fine"

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="flaky", execute=flaky, retries=3))
        .then(tf.create_step(id="steady", execute=steady))
        .commit()
    )
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage) as rt:
        run = await wf.create_run(run_id="r")
        out = await run.stream()
        chunks = [c async for c in out]
        result = await out.result()
        state = await rt.get_run_state("r")
    assert keys == ["r/flaky"] * 3
    assert result.steps["flaky"].retry_count == 2
    assert result.steps["steady"].retry_count == 0
    assert state.steps["flaky"].retry_count == 2  # stored with the run
    finished = {c.payload.id: c for c in chunks if c.type == "workflow-step-result"}
    assert finished["flaky"].payload.retry_count == 2
    assert tf.to_wire(finished["flaky"])["payload"]["retryCount"] == 2
    assert "retryCount" not in tf.to_wire(finished["steady"])["payload"]
    assert tf.from_wire(tf.to_wire(finished["flaky"])) == finished["flaky"]


async def test_a_step_that_fails_after_its_retries_reports_them() -> None:
    async def broken(ctx: tf.StepContext) -> None:
        raise RuntimeError("always")

    wf = tf.create_workflow(id="w").then(tf.create_step(id="b", execute=broken, retries=2)).commit()
    async with tf.open_runtime():
        result = await (await wf.create_run()).start()
    assert result.status == "failed"
    assert result.steps["b"].retry_count == 2


async def test_all_steps_lists_every_settled_step_by_qualified_key(autojump_clock: Any) -> None:
    keys: list[str] = []

    async def fetch(ctx: tf.StepContext) -> int:
        if ctx.input_data == 2 and ctx.retry_count == 0:
            raise RuntimeError("flaky")
        return int(ctx.input_data) * 10

    digest = (
        tf.create_workflow(id="digest")
        .then(tf.create_step(id="fetch", execute=fetch, retries=1))
        .commit()
    )
    wf = (
        tf.create_workflow(id="w")
        .then(recording("first", keys))
        .foreach(digest, concurrency=2)
        .then(recording("last", keys))
        .commit()
    )
    storage = tf.MemoryStorage()
    async with tf.open_runtime(storage=storage) as rt:
        result = await (await wf.create_run(run_id="r")).start(input_data=[1, 2])
        state = await rt.get_run_state("r")
    assert result.status == "success"
    # steps keeps the top level only, as Mastra's result does.
    assert set(result.steps) == {"first", "digest", "last"}
    for every in (result.all_steps, state.all_steps):
        assert set(every) == {
            "first",
            "digest",
            "digest[0]",
            "digest[1]",
            "digest[0].fetch",
            "digest[1].fetch",
            "last",
        }
        assert every["digest[1].fetch"].output == 20
        assert every["digest[1].fetch"].retry_count == 1
        assert every["digest[0].fetch"].retry_count == 0
        assert every["digest[1]"].status == "success"
        assert every["digest[1]"].output == 20
        assert every["digest"].output == [10, 20]
        assert every["digest"].metadata is None  # no bookkeeping
    assert "all_steps" not in repr(result)


async def test_all_steps_of_plain_foreach_items_and_branches_leave_out_engine_records() -> None:
    async def double(ctx: tf.StepContext) -> int:
        if ctx.input_data == 3:
            raise ValueError("three")
        return int(ctx.input_data) * 2

    async def yes(ctx: tf.StepContext) -> str:
        return "yes"

    wf = (
        tf.create_workflow(id="w")
        .branch([(lambda ctx: True, tf.create_step(id="yes", execute=yes))])
        .map(lambda ctx: [1, 3])
        .foreach(tf.create_step(id="double", execute=double))
        .commit()
    )
    async with tf.open_runtime():
        result = await (await wf.create_run()).start()
    assert result.status == "failed"
    assert set(result.all_steps) == {"yes", "map_1", "double", "double[0]", "double[1]"}
    assert result.all_steps["double[0]"].output == 2
    assert result.all_steps["double[1]"].status == "failed"
    assert str(result.all_steps["double[1]"].error) == "three"


async def test_runtime_stopped_during_a_foreach_resume_restart_replays_it(
    autojump_clock: Any,
) -> None:
    """restart() after the runtime stopped while foreach items were being resumed (was
    KeyError: the foreach was no longer listed as suspended)."""
    keys: list[str] = []
    reached = trio.Event()

    async def approve(ctx: tf.StepContext) -> Any:
        keys.append(ctx.idempotency_key)
        if ctx.resume_data is None:
            return await ctx.suspend({})
        if ctx.input_data == 1 and not reached.is_set():
            reached.set()
            await trio.sleep_forever()
        return ctx.input_data

    wf = (
        tf.create_workflow(id="w")
        .foreach(tf.create_step(id="approve", execute=approve), concurrency=2)
        .commit()
    )
    storage = FaultyStorage(tf.MemoryStorage())
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        await run.start(input_data=[0, 1])
        await run.resume_stream(resume_data={})
        await reached.wait()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run(run_id="r")
        result = await run.restart()
    assert result.status == "success", result
    assert result.result == [0, 1]
    # Item 1 was being resumed when the runtime stopped: the replay gives it the same key;
    # item 0 had finished its resume and does not run again.
    assert sorted(keys) == sorted(
        ["r/approve[0]", "r/approve[1]", "r/approve[0]@1", "r/approve[1]@1", "r/approve[1]@1"]
    )
