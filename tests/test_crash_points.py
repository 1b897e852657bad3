"""Crash safety: a crash at any durable write leaves storage readable and the run
recoverable (start again, restart or resume), with the same outcome as an uninterrupted
run and an event log without gaps or duplicates."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import FaultyStorage, SimulatedCrash

RESUME = {"approved": True}


def build_workflow(executions: Counter[str]) -> tf.Workflow:
    def counting(step_id: str, fn: Any) -> tf.Step:
        async def execute(ctx: tf.StepContext) -> Any:
            executions[f"{step_id}:{ctx.input_data}"] += 1
            await trio.sleep(0.1)
            return await fn(ctx)

        return tf.create_step(id=step_id, execute=execute)

    async def first(ctx: tf.StepContext) -> dict[str, int]:
        return {"n": ctx.input_data["n"] + 1}

    async def left(ctx: tf.StepContext) -> int:
        return int(ctx.input_data["n"]) * 10

    async def right(ctx: tf.StepContext) -> int:
        ctx.set_state({"right": True})
        return int(ctx.input_data["n"]) * 100

    async def to_items(ctx: tf.StepContext) -> list[int]:
        return [ctx.input_data["left"], ctx.input_data["right"], 7]

    async def double(ctx: tf.StepContext) -> int:
        await ctx.writer.write({"item": ctx.input_data})
        return int(ctx.input_data) * 2

    async def approve(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"total": sum(ctx.input_data)})
        return {"total": sum(ctx.input_data), "approved": ctx.resume_data["approved"]}

    return (
        tf.create_workflow(id="crashy")
        .then(counting("first", first))
        .parallel([counting("left", left), counting("right", right)])
        .then(counting("to_items", to_items))
        .foreach(counting("double", double), concurrency=2)
        .sleep(1)
        .then(counting("approve", approve))
        .commit()
    )


async def drive(storage: Any, workflow: tf.Workflow, run_id: str) -> tf.WorkflowResult:
    """Bring the stored run to its end from whatever state storage holds."""
    async with tf.open_runtime(storage=storage) as rt:
        run = await workflow.create_run(run_id=run_id)
        for _ in range(10):
            state = await rt.get_run_state(run_id)
            if state.status == "pending":
                result = await run.start(input_data={"n": 1})
            elif state.status in ("running", "waiting"):
                result = await run.restart()
            elif state.status == "suspended":
                result = await run.resume(resume_data=RESUME)
            else:
                return await run.restart()
            if result.status not in ("suspended", "running"):
                return result
    raise AssertionError("the run did not finish")


def recorded_done(snapshot: Any) -> set[str]:
    """Execution keys of what the stored snapshot records as finished."""
    done: set[str] = set()
    if snapshot is None:
        return done
    for step_id, stored in snapshot.steps.items():
        foreach = (stored.get("metadata") or {}).get("foreach")
        if foreach:
            for outcome in foreach["outcomes"]:
                if outcome and outcome["status"] == "success":
                    done.add(f"{step_id}:{outcome['payload']}")
        elif stored["status"] == "success":
            done.add(f"{step_id}:{stored.get('payload')}")
    return done


async def crash_then_recover(
    k: int, mode: Any
) -> tuple[Any, FaultyStorage, Counter[str], Counter[str], set[str]]:
    executions: Counter[str] = Counter()
    workflow = build_workflow(executions)
    storage = FaultyStorage(tf.MemoryStorage(), crash_at=k, mode=mode)
    run_id = "run-1"
    before_crash: Counter[str] = Counter()
    recorded: set[str] = set()
    try:
        result = await drive(storage, workflow, run_id)
    except* SimulatedCrash:
        assert storage.crashed
        before_crash = Counter(executions)
        recorded = recorded_done(await storage.load_snapshot(run_id))
        storage.disarm()
        result = await drive(storage, workflow, run_id)
    return result, storage, executions, before_crash, recorded


async def uninterrupted() -> tuple[Any, int, list[Any], Counter[str]]:
    result, storage, executions, _, _ = await crash_then_recover(10_000, "before")
    events = await storage.read_events("run-1")
    return result, storage.writes, list(events), executions


async def test_uninterrupted_run_reference(autojump_clock: Any) -> None:
    result, writes, events, executions = await uninterrupted()
    assert set(executions.values()) == {1} or executions["approve:[40, 400, 14]"] == 2
    assert result.status == "success"
    assert result.result == {"total": 2 * (20 + 200 + 7), "approved": True}
    assert writes >= 8
    assert [c.seq for c in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_crash_at_every_durable_write_recovers_to_the_same_outcome(
    mode: str, autojump_clock: Any
) -> None:
    reference, total_writes, _, ref_executions = await uninterrupted()
    for k in range(1, total_writes + 1):
        result, storage, executions, before_crash, recorded = await crash_then_recover(k, mode)
        assert storage.crashed, f"write {k} was never reached"
        assert result.status == reference.status, (k, mode, result)
        assert result.result == reference.result, (k, mode)
        assert {sid: r.output for sid, r in result.steps.items()} == {
            sid: r.output for sid, r in reference.steps.items()
        }, (k, mode)
        assert result.state == reference.state, (k, mode)
        events = await storage.read_events("run-1")
        seqs = [c.seq for c in events]
        assert seqs == list(range(1, len(seqs) + 1)), (k, mode, seqs)
        assert events[-1].type == "workflow-finish"
        assert events[-1].payload.workflow_status == "success"
        # At-least-once only for what storage had not recorded as finished: a step (a
        # foreach item) runs at most once more than in the reference, and nothing the
        # crashed process had stored as finished runs again after the crash.
        again = {key: n - ref_executions[key] for key, n in executions.items()}
        assert all(0 <= n <= 1 for n in again.values()), (k, mode, executions)
        for key in recorded:
            if key.startswith("approve:"):
                continue  # suspends, then runs again on resume by design
            assert executions[key] == before_crash[key], (k, mode, key, executions)


class BrokenDisk(FaultyStorage):
    """Raises StorageError at one write instead of crashing the process."""

    def _before(self) -> bool:
        self.writes += 1
        if self.crash_at is not None and self.writes == self.crash_at:
            self.crashed = True
            raise tf.StorageError(f"disk full at write {self.writes}")
        return False


async def test_storage_failure_ends_only_that_execution(autojump_clock: Any) -> None:
    executions: Counter[str] = Counter()
    broken = build_workflow(executions)
    healthy = (
        tf.create_workflow(id="healthy")
        .then(tf.create_step(id="slow", execute=_slow_identity))
        .commit()
    )
    storage = BrokenDisk(tf.MemoryStorage(), crash_at=4)
    async with tf.open_runtime(storage=storage):
        other = await healthy.create_run()
        other_out = await other.stream(input_data={"ok": 1})
        run = await broken.create_run(run_id="run-1")
        with pytest.raises(tf.StorageError, match="disk full"):
            await run.start(input_data={"n": 1})
        # The runtime and the other run are unaffected.
        assert (await other_out.result()).status == "success"
    assert storage.crashed
    # The failed run kept its last snapshot: a later process restarts it to the end.
    storage.disarm()
    result = await drive(storage, broken, "run-1")
    assert result.status == "success"


async def _slow_identity(ctx: tf.StepContext) -> Any:
    await trio.sleep(5)
    return ctx.input_data
