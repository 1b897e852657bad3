"""`.foreach(step, concurrency=n)`: ordering, concurrency, failure, bail, state, suspend/resume.

Contract: SPEC §1 (`.foreach`, `bail`, `set_state`), SPEC §2 "Resume semantics" (foreach
bullets, labels) and SPEC §3.2 (progress chunks); background in mastra-behaviour.md §5.

Every iteration of the probe step records what happened to it (when it started, whether it
ran to the end, how often it ran, the resume/suspend data it saw), so the tests assert real
behaviour: order of execution, peak concurrency, timings on trio's virtual clock.

The last section (streaming) checks `workflow-step-progress` chunks from `run.stream()`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

import trioflow as tf

if TYPE_CHECKING:
    from trio.testing import MockClock

STEP_ID = "work"


class ItemFailedError(Exception):
    """Raised by the probe step for items configured to fail."""

    def __init__(self, item: int) -> None:
        super().__init__(f"item {item} failed")
        self.item = item


@attrs.define
class Probe:
    """A foreach body whose behaviour per item is configured, and which records each call.

    Items are distinct ints. An item sleeps `durations[item]` virtual seconds, then: raises
    (`fail`), suspends with payload `{"item": item}` unless resumed (`suspend`), bails with
    `{"bailed": item}` (`bail`), or returns `item * 10` (plus `resume_data["add"]` if resumed).
    """

    durations: dict[int, float] = attrs.Factory(dict)
    fail: frozenset[int] = frozenset()
    suspend: frozenset[int] = frozenset()
    bail: frozenset[int] = frozenset()
    labels: bool = False
    t0: float = attrs.Factory(trio.current_time)
    in_flight: int = 0
    peak: int = 0
    started: list[tuple[int, float]] = attrs.Factory(list)
    finished: list[tuple[int, float]] = attrs.Factory(list)
    timeline: list[tuple[float, int]] = attrs.Factory(list)
    calls: collections.Counter[int] = attrs.Factory(collections.Counter)
    resume_seen: dict[int, list[Any]] = attrs.Factory(lambda: collections.defaultdict(list))
    suspend_seen: dict[int, list[Any]] = attrs.Factory(lambda: collections.defaultdict(list))
    errors: dict[int, ItemFailedError] = attrs.Factory(dict)

    def now(self) -> float:
        return round(trio.current_time() - self.t0, 6)

    def step(self, step_id: str = STEP_ID) -> tf.Step:
        return tf.create_step(id=step_id, execute=self._execute)

    def first_start(self) -> dict[int, float]:
        first: dict[int, float] = {}
        for item, at in self.started:
            first.setdefault(item, at)
        return first

    def finished_items(self) -> set[int]:
        return {item for item, _ in self.finished}

    async def _execute(self, ctx: tf.StepContext) -> Any:
        item: int = ctx.input_data
        self.calls[item] += 1
        self.resume_seen[item].append(ctx.resume_data)
        self.suspend_seen[item].append(ctx.suspend_data)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.append((item, self.now()))
        self.timeline.append((self.now(), +1))
        try:
            await trio.sleep(self.durations.get(item, 0.0))
            self.finished.append((item, self.now()))
            return await self._outcome(ctx, item)
        finally:
            self.in_flight -= 1
            self.timeline.append((self.now(), -1))

    async def _outcome(self, ctx: tf.StepContext, item: int) -> Any:
        if item in self.fail:
            self.errors[item] = ItemFailedError(item)
            raise self.errors[item]
        if item in self.suspend and ctx.resume_data is None:
            label = f"item-{item}" if self.labels else None
            return await ctx.suspend({"item": item}, resume_label=label)
        if item in self.bail:
            return ctx.bail({"bailed": item})
        if ctx.resume_data is not None:
            return item * 10 + ctx.resume_data["add"]
        return item * 10


def foreach_workflow(
    body: tf.Step,
    *,
    concurrency: int | None = None,
    after: tf.Step | None = None,
    wf_id: str = "fe",
) -> tf.Workflow:
    wf = tf.create_workflow(id=wf_id, input_schema=None, output_schema=None)
    wf = wf.foreach(body) if concurrency is None else wf.foreach(body, concurrency=concurrency)
    if after is not None:
        wf = wf.then(after)
    return wf.commit()


def recording_step(step_id: str, seen: list[Any], output: Any = "after-done") -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        seen.append(ctx.input_data)
        return output

    return tf.create_step(id=step_id, execute=execute)


async def run_once(wf: tf.Workflow, input_data: Any, **kwargs: Any) -> tf.WorkflowResult:
    async with tf.open_runtime():
        run = await wf.create_run()
        return await run.start(input_data=input_data, **kwargs)


# ---------------------------------------------------------------------------------------
# Ordering and output
# ---------------------------------------------------------------------------------------


async def test_default_concurrency_runs_items_one_after_another(autojump_clock: MockClock) -> None:
    probe = Probe(durations={1: 1, 2: 1, 3: 1})
    result = await run_once(foreach_workflow(probe.step()), [1, 2, 3])

    assert result.status == "success"
    assert probe.started == [(1, 0), (2, 1), (3, 2)]
    assert probe.finished == [(1, 1), (2, 2), (3, 3)]
    assert probe.peak == 1


async def test_output_is_list_of_outputs_in_input_order() -> None:
    probe = Probe()
    result = await run_once(foreach_workflow(probe.step()), [4, 2, 7])

    assert result.status == "success"
    assert result.result == [40, 20, 70]
    assert result.steps[STEP_ID].status == "success"
    assert result.steps[STEP_ID].output == [40, 20, 70]


async def test_container_step_result_payload_is_the_whole_list() -> None:
    probe = Probe()
    result = await run_once(foreach_workflow(probe.step()), [4, 2, 7])

    assert result.steps[STEP_ID].payload == [4, 2, 7]


async def test_each_iteration_receives_one_item_as_input() -> None:
    probe = Probe()
    await run_once(foreach_workflow(probe.step()), [5, 6, 7])

    assert [item for item, _ in probe.started] == [5, 6, 7]
    assert probe.calls == {5: 1, 6: 1, 7: 1}


async def test_output_keeps_input_order_when_items_finish_out_of_order(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations={3: 3, 1: 1, 2: 2})
    result = await run_once(foreach_workflow(probe.step(), concurrency=3), [3, 1, 2])

    assert [item for item, _ in probe.finished] == [1, 2, 3]
    assert result.status == "success"
    assert result.result == [30, 10, 20]


async def test_empty_list_gives_empty_list_without_running_the_body() -> None:
    probe = Probe()
    seen: list[Any] = []
    wf = foreach_workflow(probe.step(), concurrency=4, after=recording_step("after", seen))
    result = await run_once(wf, [])

    assert result.status == "success"
    assert result.steps[STEP_ID].output == []
    assert seen == [[]]
    assert probe.calls == {}


async def test_next_step_receives_the_output_list() -> None:
    probe = Probe()
    seen: list[Any] = []
    wf = foreach_workflow(probe.step(), concurrency=2, after=recording_step("after", seen, "x"))
    result = await run_once(wf, [1, 2, 3])

    assert seen == [[10, 20, 30]]
    assert result.result == "x"


async def test_foreach_is_listed_once_in_step_execution_path() -> None:
    probe = Probe()
    wf = foreach_workflow(probe.step(), after=recording_step("after", []))
    result = await run_once(wf, [1, 2, 3])

    assert result.step_execution_path == [STEP_ID, "after"]


async def test_foreach_after_a_step_iterates_that_steps_output() -> None:
    async def make_list(ctx: tf.StepContext) -> list[int]:
        return list(range(ctx.input_data))

    probe = Probe()
    wf = (
        tf.create_workflow(id="fe", input_schema=None, output_schema=None)
        .then(tf.create_step(id="make", execute=make_list))
        .foreach(probe.step(), concurrency=2)
        .commit()
    )
    result = await run_once(wf, 4)

    assert result.status == "success"
    assert result.result == [0, 10, 20, 30]


@attrs.frozen
class LineItem:
    sku: str
    qty: int


async def test_each_item_is_structured_by_the_body_input_schema() -> None:
    seen: list[Any] = []

    async def double(ctx: tf.StepContext) -> int:
        seen.append(ctx.input_data)
        return ctx.input_data.qty * 2

    body = tf.create_step(id=STEP_ID, input_schema=LineItem, execute=double)
    items = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5, "ignored": True}]
    result = await run_once(foreach_workflow(body, concurrency=2), items)

    assert result.status == "success"
    assert result.result == [2, 10]
    assert sorted(seen, key=lambda li: li.sku) == [LineItem("a", 1), LineItem("b", 5)]


async def test_item_failing_the_body_input_schema_fails_the_run() -> None:
    async def double(ctx: tf.StepContext) -> int:
        return ctx.input_data.qty * 2

    body = tf.create_step(id=STEP_ID, input_schema=LineItem, execute=double)
    items = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "many"}]
    result = await run_once(foreach_workflow(body), items)

    assert result.status == "failed"
    assert result.steps[STEP_ID].status == "failed"
    assert isinstance(result.error, tf.ValidationError)
    assert "qty" in str(result.error)


# ---------------------------------------------------------------------------------------
# Concurrency: limit and sliding window
# ---------------------------------------------------------------------------------------


async def test_peak_concurrency_equals_limit(autojump_clock: MockClock) -> None:
    items = list(range(10))
    probe = Probe(durations=dict.fromkeys(items, 1))
    result = await run_once(foreach_workflow(probe.step(), concurrency=3), items)

    assert result.status == "success"
    assert probe.peak == 3
    assert result.result == [i * 10 for i in items]


async def test_equal_durations_take_ceil_n_over_limit_rounds(autojump_clock: MockClock) -> None:
    items = list(range(10))
    probe = Probe(durations=dict.fromkeys(items, 1))
    t0 = trio.current_time()
    await run_once(foreach_workflow(probe.step(), concurrency=3), items)

    assert trio.current_time() - t0 == pytest.approx(4)


async def test_peak_concurrency_is_item_count_when_limit_exceeds_it(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations={0: 1, 1: 1})
    await run_once(foreach_workflow(probe.step(), concurrency=5), [0, 1])

    assert probe.peak == 2
    assert probe.first_start() == {0: 0, 1: 0}


async def test_new_item_starts_as_soon_as_a_slot_frees(autojump_clock: MockClock) -> None:
    # Sliding window with 2 slots: item 2 takes the slot item 0 frees at t=1 and item 3 the
    # one item 2 frees at t=2, while item 1 is still running. In batches they would start
    # at t=5 (after the whole first batch) and the run would take 6 s instead of 5.
    probe = Probe(durations={0: 1, 1: 5, 2: 1, 3: 1})
    t0 = trio.current_time()
    result = await run_once(foreach_workflow(probe.step(), concurrency=2), [0, 1, 2, 3])

    assert result.result == [0, 10, 20, 30]
    assert probe.first_start() == {0: 0, 1: 0, 2: 1, 3: 2}
    assert trio.current_time() - t0 == pytest.approx(5)


async def test_sliding_window_start_times_with_ten_items(autojump_clock: MockClock) -> None:
    durations = [3, 1, 2, 1, 1, 4, 1, 2, 1, 1]
    probe = Probe(durations=dict(enumerate(durations)))
    t0 = trio.current_time()
    result = await run_once(foreach_workflow(probe.step(), concurrency=3), list(range(10)))

    assert result.status == "success"
    assert probe.peak == 3
    # Work queue in input order, 3 slots. Batches of 3 would give
    # [0, 0, 0, 3, 3, 3, 7, 7, 7, 9] and a 10 s run.
    starts = probe.first_start()
    assert [starts[i] for i in range(10)] == [0, 0, 0, 1, 2, 2, 3, 3, 4, 5]
    assert trio.current_time() - t0 == pytest.approx(6)


async def test_all_slots_stay_busy_while_items_remain(autojump_clock: MockClock) -> None:
    # Independent of which waiting item gets a free slot: at every instant, once the
    # engine has settled, exactly `concurrency` items are in flight as long as some item
    # has not started yet, and never more.
    durations = [2, 5, 1, 3, 1, 1, 4, 2, 1, 3, 2, 1]
    probe = Probe(durations=dict(enumerate(durations)))
    await run_once(foreach_workflow(probe.step(), concurrency=3), list(range(len(durations))))

    in_flight = 0
    started = 0
    for at in sorted({t for t, _ in probe.timeline}):
        deltas = [d for t, d in probe.timeline if t == at]
        in_flight += sum(deltas)
        started += deltas.count(+1)
        assert in_flight <= 3
        if started < len(durations):
            assert in_flight == 3, f"a slot stayed free at t={at}"
    assert started == len(durations)


# ---------------------------------------------------------------------------------------
# Non-list input and failures
# ---------------------------------------------------------------------------------------


async def test_dict_input_fails_the_step_with_a_clear_message() -> None:
    probe = Probe()
    result = await run_once(foreach_workflow(probe.step()), {"a": 1})

    assert result.status == "failed"
    assert result.steps[STEP_ID].status == "failed"
    assert "foreach expects a list, got dict" in str(result.steps[STEP_ID].error)
    assert "foreach expects a list, got dict" in str(result.error)
    assert probe.calls == {}


async def test_str_input_is_not_iterated_as_characters() -> None:
    probe = Probe()
    result = await run_once(foreach_workflow(probe.step()), "abc")

    assert result.status == "failed"
    assert "foreach expects a list, got str" in str(result.error)
    assert probe.calls == {}


async def test_failing_item_fails_the_run_and_later_items_never_start() -> None:
    probe = Probe(fail=frozenset({2}))
    seen: list[Any] = []
    wf = foreach_workflow(probe.step(), after=recording_step("after", seen))
    result = await run_once(wf, [1, 2, 3, 4])

    assert result.status == "failed"
    assert result.error is probe.errors[2]
    assert result.steps[STEP_ID].status == "failed"
    assert result.steps[STEP_ID].error is probe.errors[2]
    assert probe.calls == {1: 1, 2: 1}
    assert seen == []
    assert "after" not in result.steps


async def test_failure_lets_in_flight_items_finish_and_starts_no_new_ones(
    autojump_clock: MockClock,
) -> None:
    # Two slots: item 1 fails at t=1 while item 0 runs until t=3. Items 2-4 are queued.
    probe = Probe(durations={0: 3, 1: 1, 2: 0, 3: 0, 4: 0}, fail=frozenset({1}))
    t0 = trio.current_time()
    result = await run_once(foreach_workflow(probe.step(), concurrency=2), [0, 1, 2, 3, 4])

    assert result.status == "failed"
    assert result.error is probe.errors[1]
    assert set(probe.calls) == {0, 1}
    assert (0, 3) in probe.finished, "the in-flight item was not allowed to finish"
    assert trio.current_time() - t0 == pytest.approx(3)


# ---------------------------------------------------------------------------------------
# bail
# ---------------------------------------------------------------------------------------


async def test_bail_in_an_iteration_ends_the_workflow_with_the_bail_value() -> None:
    probe = Probe(bail=frozenset({2}))
    seen: list[Any] = []
    wf = foreach_workflow(probe.step(), after=recording_step("after", seen))
    result = await run_once(wf, [1, 2, 3, 4])

    assert result.status == "success"
    assert result.result == {"bailed": 2}
    assert probe.calls == {1: 1, 2: 1}
    assert seen == []
    assert "after" not in result.steps


async def test_concurrent_bail_starts_no_new_items_and_keeps_its_state(
    autojump_clock: MockClock,
) -> None:
    # mastra-behaviour §5.4/§5.5: a bail drains the queue (in-flight items finish, queued
    # ones are dropped); the workflow ends `success` with the bail payload.
    calls: list[int] = []
    finished: list[int] = []

    async def body(ctx: tf.StepContext) -> Any:
        item: int = ctx.input_data
        calls.append(item)
        await trio.sleep({1: 2, 2: 1}.get(item, 0))
        finished.append(item)
        if item == 2:
            ctx.set_state({"output": 2})
            return ctx.bail({"bailed": 2})
        return item

    wf = foreach_workflow(tf.create_step(id=STEP_ID, execute=body), concurrency=2)
    result = await run_once(wf, [1, 2, 3, 4], initial_state={"output": 0})

    assert result.status == "success"
    assert result.result == {"bailed": 2}
    assert result.state == {"output": 2}
    assert sorted(calls) == [1, 2]
    assert sorted(finished) == [1, 2]


# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------


def state_step(seen_states: list[dict[str, Any]], *, sleep_by_item: bool = False) -> tf.Step:
    """Each iteration adds its item to `state["output"]` (as seen when it started)."""

    async def body(ctx: tf.StepContext) -> int:
        item: int = ctx.input_data
        seen_states.append(dict(ctx.state))
        if sleep_by_item:
            await trio.sleep(item)
        ctx.set_state({"output": ctx.state["output"] + item})
        return item

    return tf.create_step(id=STEP_ID, execute=body)


async def test_sequential_iterations_see_state_merged_by_earlier_ones() -> None:
    seen: list[dict[str, Any]] = []
    result = await run_once(foreach_workflow(state_step(seen)), [2, 1], initial_state={"output": 0})

    assert result.status == "success"
    assert seen == [{"output": 0}, {"output": 2}]
    assert result.state == {"output": 3}


async def test_concurrent_iterations_merge_state_as_each_finishes(
    autojump_clock: MockClock,
) -> None:
    # mastra-behaviour §5.7: input [2, 1], initial {"output": 0} => final {"output": 2}.
    # Both start from output=0; item 1 finishes first (output=1), item 2 last (output=2).
    seen: list[dict[str, Any]] = []
    wf = foreach_workflow(state_step(seen, sleep_by_item=True), concurrency=2)
    result = await run_once(wf, [2, 1], initial_state={"output": 0})

    assert result.status == "success"
    assert seen == [{"output": 0}, {"output": 0}]
    assert result.state == {"output": 2}


async def test_state_from_every_iteration_is_shallow_merged() -> None:
    async def body(ctx: tf.StepContext) -> int:
        ctx.set_state({f"item_{ctx.input_data}": ctx.input_data})
        return ctx.input_data

    wf = foreach_workflow(tf.create_step(id=STEP_ID, execute=body), concurrency=3)
    result = await run_once(wf, [1, 2, 3], initial_state={"keep": True})

    assert result.state == {"keep": True, "item_1": 1, "item_2": 2, "item_3": 3}


async def test_state_set_by_a_failing_iteration_is_discarded() -> None:
    async def body(ctx: tf.StepContext) -> int:
        ctx.set_state({f"item_{ctx.input_data}": True})
        if ctx.input_data == 2:
            raise ItemFailedError(2)
        return ctx.input_data

    wf = foreach_workflow(tf.create_step(id=STEP_ID, execute=body))
    result = await run_once(wf, [1, 2], initial_state={})

    assert result.status == "failed"
    assert result.state == {"item_1": True}


async def test_step_after_foreach_sees_state_from_iterations() -> None:
    seen_state: list[dict[str, Any]] = []

    async def after(ctx: tf.StepContext) -> None:
        seen_state.append(dict(ctx.state))

    seen: list[dict[str, Any]] = []
    wf = foreach_workflow(state_step(seen), after=tf.create_step(id="after", execute=after))
    await run_once(wf, [2, 1], initial_state={"output": 0})

    assert seen_state == [{"output": 3}]


# ---------------------------------------------------------------------------------------
# Suspension and resume
# ---------------------------------------------------------------------------------------


async def test_suspended_iteration_suspends_the_run_and_later_items_never_start() -> None:
    probe = Probe(suspend=frozenset({2}))
    seen: list[Any] = []
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), after=recording_step("after", seen)).create_run()
        result = await run.start(input_data=[1, 2, 3])

    assert result.status == "suspended"
    assert result.result is None
    assert result.suspended == [[STEP_ID]]
    assert result.steps[STEP_ID].status == "suspended"
    assert result.suspend_payload[STEP_ID]["item"] == 2
    assert probe.calls == {1: 1, 2: 1}
    assert seen == []


async def test_suspension_lets_in_flight_items_finish_and_starts_no_new_ones(
    autojump_clock: MockClock,
) -> None:
    # Two slots: item 0 suspends at t=1 while item 1 runs until t=3. Items 2, 3 are queued.
    probe = Probe(durations={0: 1, 1: 3}, suspend=frozenset({0}))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=2).create_run()
        result = await run.start(input_data=[0, 1, 2, 3])

    assert result.status == "suspended"
    assert probe.calls == {0: 1, 1: 1}
    assert (1, 3) in probe.finished, "the in-flight item was not allowed to finish"


async def test_resume_reruns_suspended_iteration_and_runs_never_started_items_fresh() -> None:
    probe = Probe(suspend=frozenset({1}))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step()).create_run()
        first = await run.start(input_data=[0, 1, 2])
        assert first.status == "suspended"
        assert probe.calls == {0: 1, 1: 1}

        result = await run.resume(resume_data={"add": 1})

    assert result.status == "success"
    assert result.result == [0, 11, 20]
    assert probe.calls == {0: 1, 1: 2, 2: 1}
    assert probe.resume_seen[1] == [None, {"add": 1}]
    assert probe.resume_seen[2] == [None], "a never-started item is not a resumed iteration"


async def test_resumed_iteration_sees_its_own_suspend_data(autojump_clock: MockClock) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        await run.start(input_data=[0, 1, 2])
        await run.resume(resume_data={"add": 1})

    for item in range(3):
        assert probe.suspend_seen[item][0] is None
        assert probe.suspend_seen[item][1] == {"item": item}


async def test_resume_with_for_each_index_resumes_only_that_iteration(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        first = await run.start(input_data=[0, 1, 2])
        assert first.status == "suspended"
        assert probe.calls == {0: 1, 1: 1, 2: 1}

        result = await run.resume(resume_data={"add": 1}, for_each_index=1)

    assert result.status == "suspended"
    assert result.steps[STEP_ID].status == "suspended"
    assert probe.calls == {0: 1, 1: 2, 2: 1}
    assert probe.resume_seen[1] == [None, {"add": 1}]


async def test_resuming_each_index_in_turn_completes_with_all_outputs(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        await run.start(input_data=[0, 1, 2])
        second = await run.resume(resume_data={"add": 2}, for_each_index=2)
        third = await run.resume(resume_data={"add": 1}, for_each_index=0)
        result = await run.resume(resume_data={"add": 3}, for_each_index=1)

    assert (second.status, third.status) == ("suspended", "suspended")
    assert result.status == "success"
    assert result.result == [1, 13, 22]
    assert probe.calls == {0: 2, 1: 2, 2: 2}


async def test_resume_without_index_resumes_every_suspended_iteration_with_same_data(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        await run.start(input_data=[0, 1, 2])
        result = await run.resume(resume_data={"add": 5})

    assert result.status == "success"
    assert result.result == [5, 15, 25]
    assert probe.calls == {0: 2, 1: 2, 2: 2}
    assert all(probe.resume_seen[i] == [None, {"add": 5}] for i in range(3))


async def test_resume_does_not_rerun_iterations_that_succeeded(autojump_clock: MockClock) -> None:
    probe = Probe(durations=dict.fromkeys(range(4), 1), suspend=frozenset({1, 3}))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=4).create_run()
        first = await run.start(input_data=[0, 1, 2, 3])
        assert first.status == "suspended"
        result = await run.resume(resume_data={"add": 1})

    assert result.status == "success"
    assert result.result == [0, 11, 20, 31]
    assert probe.calls == {0: 1, 1: 2, 2: 1, 3: 2}


async def test_for_each_index_resume_also_runs_never_started_items(
    autojump_clock: MockClock,
) -> None:
    # Two slots: items 0 and 1 suspend, items 2 and 3 never start. Resuming index 0 runs
    # items 2 and 3 fresh while item 1 stays suspended; resuming index 1 completes the run.
    probe = Probe(durations={0: 1, 1: 1}, suspend=frozenset({0, 1}))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=2).create_run()
        first = await run.start(input_data=[0, 1, 2, 3])
        assert probe.calls == {0: 1, 1: 1}

        second = await run.resume(resume_data={"add": 1}, for_each_index=0)
        assert second.status == "suspended"
        assert probe.calls == {0: 2, 1: 1, 2: 1, 3: 1}

        result = await run.resume(resume_data={"add": 2}, for_each_index=1)

    assert first.status == "suspended"
    assert result.status == "success"
    assert result.result == [1, 12, 20, 30]
    assert probe.calls == {0: 2, 1: 2, 2: 1, 3: 1}
    assert probe.resume_seen[2] == [None]
    assert probe.resume_seen[3] == [None]


async def test_sequential_foreach_of_suspending_items_needs_one_resume_per_item() -> None:
    probe = Probe(suspend=frozenset({0, 1, 2}))
    statuses: list[str] = []
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step()).create_run()
        result = await run.start(input_data=[0, 1, 2])
        statuses.append(result.status)
        for add in (1, 2, 3):
            result = await run.resume(resume_data={"add": add})
            statuses.append(result.status)

    assert statuses == ["suspended", "suspended", "suspended", "success"]
    assert result.result == [1, 12, 23]
    assert probe.calls == {0: 2, 1: 2, 2: 2}


async def test_resume_label_resumes_only_its_iteration(autojump_clock: MockClock) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)), labels=True)
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        await run.start(input_data=[0, 1, 2])
        result = await run.resume(resume_data={"add": 1}, label="item-2")

    assert result.status == "suspended"
    assert probe.calls == {0: 1, 1: 1, 2: 2}
    assert probe.resume_seen[2] == [None, {"add": 1}]


async def test_every_iteration_label_can_be_resumed_until_success(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)), labels=True)
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step(), concurrency=3).create_run()
        await run.start(input_data=[0, 1, 2])
        await run.resume(resume_data={"add": 1}, label="item-1")
        await run.resume(resume_data={"add": 2}, label="item-0")
        result = await run.resume(resume_data={"add": 3}, label="item-2")

    assert result.status == "success"
    assert result.result == [2, 11, 23]
    assert probe.calls == {0: 2, 1: 2, 2: 2}


async def test_step_after_foreach_runs_once_after_final_resume() -> None:
    probe = Probe(suspend=frozenset({1}))
    seen: list[Any] = []
    async with tf.open_runtime():
        wf = foreach_workflow(probe.step(), after=recording_step("after", seen))
        run = await wf.create_run()
        await run.start(input_data=[0, 1])
        assert seen == []
        result = await run.resume(resume_data={"add": 7})

    assert result.status == "success"
    assert seen == [[0, 17]]


# ---------------------------------------------------------------------------------------
# Streaming: workflow-step-progress (SPEC §3.2, mastra-behaviour §5 "Progress payload")
# ---------------------------------------------------------------------------------------


async def stream_once(wf: tf.Workflow, input_data: Any) -> tuple[list[Any], tf.WorkflowResult]:
    async with tf.open_runtime():
        run = await wf.create_run()
        out = await run.stream(input_data=input_data)
        chunks = [chunk async for chunk in out]
        return chunks, await out.result()


def progress(chunks: list[Any]) -> list[Any]:
    return [c.payload for c in chunks if c.type == "workflow-step-progress"]


def summary(payload: Any) -> tuple[Any, ...]:
    return (
        payload.completed_count,
        payload.total_count,
        payload.current_index,
        payload.iteration_status,
        payload.iteration_output,
    )


def for_step(chunks: list[Any], chunk_type: str, step_id: str = STEP_ID) -> list[Any]:
    return [c for c in chunks if c.type == chunk_type and getattr(c.payload, "id", None) == step_id]


async def test_sequential_progress_reports_each_item_in_order() -> None:
    chunks, result = await stream_once(foreach_workflow(Probe().step()), [0, 1, 2])

    assert result.status == "success"
    assert [summary(p) for p in progress(chunks)] == [
        (1, 3, 0, "success", 0),
        (2, 3, 1, "success", 10),
        (3, 3, 2, "success", 20),
    ]
    assert all(p.id == STEP_ID and p.step_name == STEP_ID for p in progress(chunks))


async def test_concurrent_progress_follows_completion_order(autojump_clock: MockClock) -> None:
    probe = Probe(durations={0: 3, 1: 1, 2: 2})
    chunks, result = await stream_once(foreach_workflow(probe.step(), concurrency=3), [0, 1, 2])

    assert result.status == "success"
    payloads = progress(chunks)
    assert [p.completed_count for p in payloads] == [1, 2, 3]
    assert [p.current_index for p in payloads] == [1, 2, 0]
    assert [p.iteration_output for p in payloads] == [10, 20, 0]
    assert payloads[-1].completed_count == 3
    assert {p.total_count for p in payloads} == {3}


async def test_foreach_emits_one_container_start_and_result_around_progress() -> None:
    chunks, _ = await stream_once(foreach_workflow(Probe().step()), [0, 1, 2])

    starts = for_step(chunks, "workflow-step-start")
    results = for_step(chunks, "workflow-step-result")
    progress_chunks = for_step(chunks, "workflow-step-progress")
    assert len(starts) == 1
    assert len(results) == 1
    assert len(progress_chunks) == 3
    assert starts[0].payload.payload == [0, 1, 2]
    assert results[0].payload.output == [0, 10, 20]
    assert results[0].payload.status == "success"
    assert starts[0].seq < min(c.seq for c in progress_chunks)
    assert max(c.seq for c in progress_chunks) < results[0].seq


async def test_empty_list_emits_no_progress() -> None:
    chunks, result = await stream_once(foreach_workflow(Probe().step()), [])

    assert result.status == "success"
    assert progress(chunks) == []
    assert len(for_step(chunks, "workflow-step-result")) == 1


async def test_failed_iteration_progress_counts_it_and_reports_failed() -> None:
    probe = Probe(fail=frozenset({1}))
    chunks, result = await stream_once(foreach_workflow(probe.step()), [0, 1, 2])

    assert result.status == "failed"
    assert [summary(p) for p in progress(chunks)] == [
        (1, 3, 0, "success", 0),
        (2, 3, 1, "failed", None),
    ]


async def test_suspended_iteration_progress_does_not_count_it() -> None:
    probe = Probe(suspend=frozenset({1}))
    chunks, result = await stream_once(foreach_workflow(probe.step()), [0, 1, 2])

    assert result.status == "suspended"
    assert [summary(p)[:4] for p in progress(chunks)] == [
        (1, 3, 0, "success"),
        (1, 3, 1, "suspended"),
    ]
    assert len(for_step(chunks, "workflow-step-suspended")) == 1
    assert for_step(chunks, "workflow-step-result") == []


async def test_several_suspended_iterations_emit_one_suspended_chunk(
    autojump_clock: MockClock,
) -> None:
    probe = Probe(durations=dict.fromkeys(range(3), 1), suspend=frozenset(range(3)))
    chunks, result = await stream_once(foreach_workflow(probe.step(), concurrency=3), [0, 1, 2])

    assert result.status == "suspended"
    statuses = [p.iteration_status for p in progress(chunks)]
    assert statuses == ["suspended"] * 3
    assert {p.completed_count for p in progress(chunks)} == {0}
    assert len(for_step(chunks, "workflow-step-suspended")) == 1


async def test_resume_stream_reports_progress_against_the_whole_list() -> None:
    probe = Probe(suspend=frozenset({1}))
    async with tf.open_runtime():
        run = await foreach_workflow(probe.step()).create_run()
        await run.start(input_data=[0, 1, 2])
        out = await run.resume_stream(resume_data={"add": 1})
        chunks = [chunk async for chunk in out]
        result = await out.result()

    assert result.status == "success"
    payloads = progress(chunks)
    assert {p.total_count for p in payloads} == {3}
    assert [(p.current_index, p.iteration_status, p.iteration_output) for p in payloads] == [
        (1, "success", 11),
        (2, "success", 20),
    ]
    assert len(for_step(chunks, "workflow-step-result")) == 1


async def test_progress_carries_iteration_output_only_on_success() -> None:
    # mastra-behaviour §5 "Progress payload": `iterationOutput` only on success. The body
    # suspends and then returns a value (that value is its suspend output, not an output).
    async def body(ctx: tf.StepContext) -> str:
        if ctx.input_data == 1:
            await ctx.suspend({"item": 1})
            return "suspend-output"
        return "done"

    wf = foreach_workflow(tf.create_step(id=STEP_ID, execute=body))
    chunks, result = await stream_once(wf, [0, 1])

    assert result.status == "suspended"
    assert [(p.iteration_status, p.iteration_output) for p in progress(chunks)] == [
        ("success", "done"),
        ("suspended", None),
    ]


async def test_foreach_of_steps_that_never_checkpoint_stays_cancellable() -> None:
    """Every item is a cancel point and every few items a schedule point, even when the
    step body never awaits: another task gets to run, and can cancel the run mid-list."""
    seen: list[int] = []
    first_item = trio.Event()

    async def no_checkpoint(ctx: tf.StepContext) -> int:
        seen.append(ctx.input_data)
        first_item.set()
        return int(ctx.input_data)

    wf = (
        tf.create_workflow(id="busy-foreach")
        .foreach(tf.create_step(id="busy", execute=no_checkpoint))
        .commit()
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        out = await run.stream(input_data=list(range(100_000)))
        # This task gets to run while the foreach is in progress, long before it ends.
        await first_item.wait()
        await run.cancel()
        result = await out.result()
    assert result.status == "canceled"
    assert 0 < len(seen) < 100_000


async def test_resume_with_a_for_each_index_that_is_not_suspended_fails_before_running() -> None:
    runs: list[int] = []

    async def gate(ctx: tf.StepContext) -> Any:
        runs.append(ctx.input_data)
        if ctx.resume_data is None and ctx.input_data != 1:
            return await ctx.suspend({"item": ctx.input_data})
        return ctx.input_data

    wf = (
        tf.create_workflow(id="fe-index")
        .foreach(tf.create_step(id="gate", execute=gate), concurrency=3)
        .commit()
    )
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        first = await run.start(input_data=[0, 1, 2])
        assert first.status == "suspended"
        before = await rt.get_run_state(run.run_id)
        for bad in (1, 7):  # 1 succeeded, 7 does not exist
            with pytest.raises(tf.StepNotSuspendedError) as info:
                await run.resume(resume_data={}, for_each_index=bad)
            assert "gate[0]" in str(info.value)
            assert "gate[2]" in str(info.value)
        assert await rt.get_run_state(run.run_id) == before
        assert sorted(runs) == [0, 1, 2]
        done = await run.resume(resume_data={}, for_each_index=2)
        assert done.status == "suspended"


class _GatedMemoryStorage(tf.MemoryStorage):
    """MemoryStorage whose writes wait while ``gate`` is not set (storage that cannot keep
    up)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def save_snapshot(self, snapshot: Any, events: Any = (), **kwargs: Any) -> bool:
        if events:
            await self.gate.wait()
        return await super().save_snapshot(snapshot, events, **kwargs)

    async def append_events(self, run_id: str, events: Any) -> None:
        await self.gate.wait()
        await super().append_events(run_id, events)


async def test_foreach_progress_chunks_wait_for_room_in_the_log() -> None:
    """A foreach over more items than the log holds unstored chunks: between items it
    waits while storage is behind (SPEC §3.0), as writer.write does, instead of passing
    the bound with a progress chunk per item."""
    from trioflow._broadcast import MAX_UNSTORED_CHUNKS

    async def same(ctx: tf.StepContext) -> int:
        return int(ctx.input_data)

    items = list(range(MAX_UNSTORED_CHUNKS + 500))
    wf = tf.create_workflow(id="many").foreach(tf.create_step(id="same", execute=same)).commit()
    storage = _GatedMemoryStorage()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        out = await run.stream(input_data=items)
        await trio.testing.wait_all_tasks_blocked()
        stats = run._hub.log.statistics()
        assert stats.unflushed <= MAX_UNSTORED_CHUNKS
        assert out.status == "running"  # waiting for storage, not finished
        storage.gate.set()
        result = await out.result()
    assert result.status == "success"
    assert result.result == items
