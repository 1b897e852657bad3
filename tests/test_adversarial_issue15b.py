"""Second adversarial pass over issue 15: the runtime's stop (steps that shield
themselves, a stop during the final write, a sleep entry, a resumed step, nested shapes,
``move_on_after`` around ``open_runtime``), the run API, the bridge and resume by label.
Each test is a regression test of a bug found by attacking it, or pins a behaviour the
attack showed to hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


async def _step_results(storage: Any, run_id: str = "r1") -> list[tuple[str, str]]:
    return [
        (c.payload.id, c.payload.status)
        for c in await storage.read_events(run_id, from_seq=1, limit=10_000)
        if c.type == "workflow-step-result"
    ]


async def _restart(storage: Any, wf: tf.Workflow, run_id: str = "r1") -> tf.WorkflowResult:
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id=run_id)
        with trio.fail_after(100):
            return await run.restart()


async def _state(storage: Any, wf: tf.Workflow, run_id: str = "r1") -> Any:
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        return await rt.get_run_state(run_id)


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Autojump only after 50 ms of real idleness: SQLite writes run in a worker thread,
    and a threshold of 0 would jump the clock while one is under way."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_a_step_shielding_itself_finishes_and_the_stop_still_ends_the_run(
    tmp_path: Path,
) -> None:
    """A step shields a wait; the runtime stops inside it. The step's result is stored
    when the shield ends, the next step never starts, the runtime closes, restart()
    finishes without running the shielded step again."""
    started: list[str] = []
    gate = trio.Event()

    async def shielded(ctx: tf.StepContext) -> str:
        started.append("a")
        with trio.CancelScope(shield=True):
            await gate.wait()
        return "a-done"

    async def then_b(ctx: tf.StepContext) -> str:
        started.append("b")
        await trio.lowlevel.checkpoint()
        return f"{ctx.input_data}+b"

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="a", execute=shielded))
        .then(tf.create_step(id="b", execute=then_b))
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")

    async def release_later() -> None:
        while not outer.cancel_called:
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        gate.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            with trio.CancelScope() as outer:
                async with tf.open_runtime(storage=storage, workflows=[wf]):
                    run = await wf.create_run(run_id="r1")
                    await run.stream()
                    while not started:
                        await trio.testing.wait_all_tasks_blocked()
                    outer.cancel()
    state = await _state(storage, wf)
    assert state.status is tf.RunStatus.RUNNING
    assert started == ["a"]
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == "a-done+b"
    assert started == ["a", "b"]  # the shielded step's stored success is not run again
    await storage.aclose()


async def test_a_step_that_stops_the_runtime_and_returns_without_checkpoint(
    tmp_path: Path,
) -> None:
    """The step cancels the runtime's enclosing scope then returns at once (no
    checkpoint): nothing hangs, no step is stored canceled, restart() finishes."""
    started: list[str] = []
    scope_box: list[trio.CancelScope] = []
    first = {"a": True}

    async def stopper(ctx: tf.StepContext) -> str:
        started.append("a")
        if first["a"]:
            first["a"] = False
            scope_box[0].cancel()
        return "a"

    async def b(ctx: tf.StepContext) -> str:
        started.append("b")
        await trio.lowlevel.checkpoint()
        return f"{ctx.input_data}+b"

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="a", execute=stopper))
        .then(tf.create_step(id="b", execute=b))
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    with trio.fail_after(10):
        with trio.CancelScope() as outer:
            scope_box.append(outer)
            async with tf.open_runtime(storage=storage, workflows=[wf]):
                run = await wf.create_run(run_id="r1")
                await run.stream()
                await trio.sleep_forever()
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    state = await _state(storage, wf)
    assert state.status is tf.RunStatus.RUNNING, state
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == "a+b"
    assert started.count("a") == 1
    await storage.aclose()


async def test_a_sleep_entry_the_runtime_stops_restarts_to_the_result(
    tmp_path: Path, slow_autojump_clock: trio.testing.MockClock
) -> None:
    async def one(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        return 1

    async def two(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data) + 1

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="one", execute=one))
        .sleep(10)
        .then(tf.create_step(id="two", execute=two))
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    with trio.move_on_after(3):
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.stream()
            await trio.sleep_forever()
    state = await _state(storage, wf)
    assert state.status is tf.RunStatus.RUNNING
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == 2
    await storage.aclose()


class _SlowFinal(tf.SqliteStorage):
    """The final snapshot's write waits ``delay`` seconds (trio time) before writing."""

    delay = 0.0
    entered: trio.Event

    async def save_snapshot(self, snapshot: Any, *args: Any, **kwargs: Any) -> bool:
        if tf.RunStatus(snapshot.status) is tf.RunStatus.SUCCESS:
            self.entered.set()
            await trio.sleep(self.delay)
        return await super().save_snapshot(snapshot, *args, **kwargs)


@pytest.mark.parametrize("delay", [1.0, 1000.0])
async def test_the_runtime_stopping_during_the_final_write(
    tmp_path: Path, slow_autojump_clock: trio.testing.MockClock, delay: float
) -> None:
    """A slow final write finishes within the grace (the run is success); one that
    never finishes is given up after the grace: the run stays restartable."""
    calls: list[str] = []

    async def a(ctx: tf.StepContext) -> str:
        calls.append("a")
        await trio.lowlevel.checkpoint()
        return "a"

    wf = tf.create_workflow(id="w").then(tf.create_step(id="a", execute=a)).commit()
    storage = _SlowFinal(tmp_path / "runs.db")
    storage.delay = delay
    storage.entered = trio.Event()
    with trio.fail_after(100):
        with trio.CancelScope() as outer:
            async with tf.open_runtime(storage=storage, workflows=[wf]):
                run = await wf.create_run(run_id="r1")
                await run.stream()
                await storage.entered.wait()
                outer.cancel()
    storage.delay = 0.0
    state = await _state(storage, wf)
    if delay < 10:
        assert state.status is tf.RunStatus.SUCCESS
        assert calls == ["a"]
    else:
        assert state.status is tf.RunStatus.RUNNING
        result = await _restart(storage, wf)
        assert result.status is tf.RunStatus.SUCCESS
        assert result.result == "a"
    await storage.aclose()


async def test_a_resumed_step_the_runtime_stops_replays_the_resume(
    tmp_path: Path,
) -> None:
    seen: list[Any] = []
    hang = {"on": True}

    async def ask(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"q": 1})
        seen.append(ctx.resume_data)
        if hang["on"]:
            await trio.sleep_forever()
        return {"got": ctx.resume_data}

    wf = tf.create_workflow(id="w").then(tf.create_step(id="ask", execute=ask)).commit()
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id="r1")
        first = await run.start()
        assert first.status is tf.RunStatus.SUSPENDED
    with trio.fail_after(10):
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.resume_stream(step="ask", resume_data={"answer": 42})
            while not seen:
                await trio.testing.wait_all_tasks_blocked()
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    hang["on"] = False
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == {"got": {"answer": 42}}
    await storage.aclose()


def _items_then(inner: tf.Workflow) -> tf.Workflow:
    async def three(ctx: tf.StepContext) -> list[int]:
        await trio.lowlevel.checkpoint()
        return [1, 2, 3]

    return (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="items", execute=three))
        .foreach(inner, concurrency=2)
        .commit()
    )


async def test_a_foreach_over_nested_parallel_the_runtime_stops_restarts_exactly(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    hang = {"on": True}

    def leaf(name: str) -> tf.Step:
        async def run(ctx: tf.StepContext) -> int:
            calls.append(f"{name}{ctx.input_data}")
            if hang["on"] and name == "p" and ctx.input_data == 2:
                await trio.sleep_forever()
            await trio.lowlevel.checkpoint()
            return int(ctx.input_data) * (10 if name == "p" else 100)

        return tf.create_step(id=name, execute=run)

    async def total(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data["p"]) + int(ctx.input_data["q"])

    inner = (
        tf.create_workflow(id="inner")
        .parallel([leaf("p"), leaf("q")])
        .then(tf.create_step(id="sum", execute=total))
        .commit()
    )
    wf = _items_then(inner)
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    with trio.fail_after(10):
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.stream()
            while "p2" not in calls or "q2" not in calls:
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    hang["on"] = False
    before = list(calls)
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == [110, 220, 330]
    rerun = calls[len(before):]
    assert "p2" in rerun
    assert "q2" not in rerun
    assert "p1" not in rerun
    await storage.aclose()


# --- D: resume by label inside a foreach over nested workflows, then a crash ---------------


async def _three_items(ctx: tf.StepContext) -> list[int]:
    await trio.lowlevel.checkpoint()
    return [1, 2, 3]


async def _ask_by_label(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"n": ctx.input_data}, resume_label=f"item-{ctx.input_data}")
    return int(ctx.input_data) * 10 + int(ctx.resume_data)


async def _plus_one(ctx: tf.StepContext) -> int:
    await trio.lowlevel.checkpoint()
    return int(ctx.input_data) + 1


def _labelled_foreach(concurrency: int) -> tf.Workflow:
    inner = (
        tf.create_workflow(id="inner")
        .then(tf.create_step(id="ask", execute=_ask_by_label))
        .then(tf.create_step(id="plus", execute=_plus_one))
        .commit()
    )
    return (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="items", execute=_three_items))
        .foreach(inner, concurrency=concurrency)
        .commit()
    )


# (With one lane only the item taken last is suspended: it is resumed in item order.)
@pytest.mark.parametrize(
    ("concurrency", "order"), [(1, (1, 2, 3)), (3, (1, 2, 3)), (3, (3, 1, 2)), (2, (2, 1, 3))]
)
async def test_a_crash_after_a_resumed_item_step_settled_continues_the_item(
    concurrency: int, order: tuple[int, ...]
) -> None:
    """Items of a foreach over a nested workflow suspend with labels; each is resumed by
    label. A crash after the resumed inner step's result is stored (the resume is spent,
    the item's next inner step not yet run): the restart continues that item from its
    progress (was: the foreach's stored record still said the item was suspended, so the
    restart left it suspended, its resumed step's result was forgotten, and the next
    resume by label failed or re-ran that step)."""
    from trioflow.testing import ResumeRequest, check_crash_points, resume_with

    requests = [ResumeRequest(label=f"item-{i}", resume_data=i) for i in order]
    report = await check_crash_points(
        _labelled_foreach(concurrency), resumer=resume_with(*requests), raise_on_mismatch=False
    )
    assert report.reference.result.result == [12, 23, 34]
    assert report.failures() == [], report.summary()


async def test_the_runtime_stopping_inside_a_resumed_foreach_item_restarts_it_exactly(
    tmp_path: Path,
) -> None:
    """The runtime stops while a foreach item resumed by label runs its next inner step:
    restart() continues that item (its resumed step does not run again), the other items
    stay suspended and are resumed by label afterwards."""
    asked: list[tuple[int, Any]] = []
    hang = {"on": True}
    plus_started: list[int] = []

    async def ask(ctx: tf.StepContext) -> Any:
        asked.append((int(ctx.input_data), ctx.resume_data))
        if ctx.resume_data is None:
            return await ctx.suspend({"n": ctx.input_data}, resume_label=f"item-{ctx.input_data}")
        return int(ctx.input_data) * 10 + int(ctx.resume_data)

    async def plus(ctx: tf.StepContext) -> int:
        plus_started.append(int(ctx.input_data))
        if hang["on"]:
            await trio.sleep_forever()
        return int(ctx.input_data) + 1

    inner = (
        tf.create_workflow(id="inner")
        .then(tf.create_step(id="ask", execute=ask))
        .then(tf.create_step(id="plus", execute=plus))
        .commit()
    )
    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="items", execute=_three_items))
        .foreach(inner, concurrency=3)
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id="r1")
        assert (await run.start()).status is tf.RunStatus.SUSPENDED
    with trio.fail_after(10):
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.resume_stream(label="item-2", resume_data=2)
            while not plus_started:
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    hang["on"] = False
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id="r1")
        with trio.fail_after(10):
            restarted = await run.restart()
            assert restarted.status is tf.RunStatus.SUSPENDED
            await run.resume(label="item-1", resume_data=1)
            result = await run.resume(label="item-3", resume_data=3)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == [12, 23, 34]
    resumed = [a for a in asked if a[1] is not None]
    assert sorted(resumed) == [(1, 1), (2, 2), (3, 3)]
    await storage.aclose()


async def test_a_loop_over_a_nested_workflow_the_runtime_stops_restarts_exactly(
    tmp_path: Path,
) -> None:
    """dountil over a nested workflow; the runtime stops inside its third iteration's
    second inner step: restart() re-runs only that step, and the loop counts on."""
    calls: list[tuple[str, int]] = []
    hang = {"on": True}

    async def inc(ctx: tf.StepContext) -> int:
        calls.append(("inc", int(ctx.input_data)))
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data) + 1

    async def slow_double(ctx: tf.StepContext) -> int:
        calls.append(("dbl", int(ctx.input_data)))
        if hang["on"] and int(ctx.input_data) > 5:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data) * 2

    body = (
        tf.create_workflow(id="body")
        .then(tf.create_step(id="inc", execute=inc))
        .then(tf.create_step(id="dbl", execute=slow_double))
        .commit()
    )

    async def big(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data) > 20

    wf = tf.create_workflow(id="w").dountil(body, big).commit()
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    with trio.fail_after(10):
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.stream(input_data=0)
            while ("dbl", 7) not in calls:
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
    assert [s for s in await _step_results(storage) if s[1] == "canceled"] == []
    hang["on"] = False
    before = len(calls)
    result = await _restart(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    # 0 -> inc 1 -> dbl 2 -> inc 3 -> dbl 6 -> inc 7 -> dbl 14 -> inc 15 -> dbl 30
    assert result.result == 30
    assert calls[before:] == [("dbl", 7), ("inc", 14), ("dbl", 15)]
    await storage.aclose()
