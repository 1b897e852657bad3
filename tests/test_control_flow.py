"""Control flow of trioflow workflows.

Covers the graph builders and how data, state and time flow through them (SPEC §1, §2;
mastra-behaviour §1.1, §1.3, §1.4, §4.1, §7): ``.then`` sequencing, ``.parallel`` (default
and ``fail_fast``), ``.branch``, ``.dowhile``/``.dountil``, ``.map`` (functions and mapping
sources), ``.sleep``/``.sleep_until``, nested workflows used as steps, workflow state
(``set_state``/``state_schema``), ``bail``, ``get_step_result``/``get_init_data``,
definition-time errors, runtime lookup and isolation between concurrent runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf

Execute = Callable[[tf.StepContext], Awaitable[Any]]


class Boom(Exception):
    """A step failure raised on purpose."""


@pytest.fixture
async def rt() -> AsyncIterator[Any]:
    async with tf.open_runtime() as runtime:
        yield runtime


def make_step(step_id: str, execute: Execute, **kwargs: Any) -> Any:
    return tf.create_step(id=step_id, execute=execute, **kwargs)


def recording_step(step_id: str, log: list[tuple[str, Any]], output: Any = None) -> Any:
    """A step that records ``(id, input)`` and returns ``output`` (default: ``{id: True}``)."""

    async def execute(ctx: tf.StepContext) -> Any:
        log.append((step_id, ctx.input_data))
        await trio.lowlevel.checkpoint()
        return {step_id: True} if output is None else output

    return make_step(step_id, execute)


def add_step(step_id: str, amount: int) -> Any:
    """``{"n": k}`` -> ``{"n": k + amount}``."""

    async def execute(ctx: tf.StepContext) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return {"n": ctx.input_data["n"] + amount}

    return make_step(step_id, execute)


def failing_step(step_id: str, exc: BaseException, delay: float = 0.0) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.sleep(delay)
        raise exc

    return make_step(step_id, execute)


def slow_step(step_id: str, delay: float, done: list[str], output: Any = None) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.sleep(delay)
        done.append(step_id)
        return {step_id: "done"} if output is None else output

    return make_step(step_id, execute)


async def start(wf: Any, input_data: Any = None, **kwargs: Any) -> Any:
    run = await wf.create_run()
    return await run.start(input_data=input_data, **kwargs)


# --------------------------------------------------------------------------------------------
# .then sequencing
# --------------------------------------------------------------------------------------------


async def test_then_passes_each_output_as_next_input(rt: Any) -> None:
    wf = (
        tf.create_workflow(id="seq")
        .then(add_step("a", 1))
        .then(add_step("b", 10))
        .then(add_step("c", 100))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.steps["a"].output == {"n": 1}
    assert result.steps["b"].output == {"n": 11}
    assert result.steps["c"].output == {"n": 111}


async def test_then_first_step_gets_workflow_input_and_each_step_records_its_input(
    rt: Any,
) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="seq-inputs")
        .then(recording_step("a", log, {"from": "a"}))
        .then(recording_step("b", log, {"from": "b"}))
        .commit()
    )
    result = await start(wf, {"start": 1})
    assert log == [("a", {"start": 1}), ("b", {"from": "a"})]
    assert result.steps["a"].payload == {"start": 1}
    assert result.steps["b"].payload == {"from": "a"}


async def test_then_step_execution_path_lists_steps_in_order(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="seq-path")
        .then(recording_step("first", log))
        .then(recording_step("second", log))
        .then(recording_step("third", log))
        .commit()
    )
    result = await start(wf, {})
    assert result.step_execution_path == ["first", "second", "third"]
    assert [step_id for step_id, _ in log] == ["first", "second", "third"]


async def test_then_result_is_last_step_output(rt: Any) -> None:
    wf = tf.create_workflow(id="seq-result").then(add_step("a", 2)).then(add_step("b", 3)).commit()
    result = await start(wf, {"n": 1})
    assert result.status == "success"
    assert result.result == {"n": 6}
    assert result.error is None


async def test_then_failure_stops_later_steps(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    exc = Boom("middle failed")
    wf = (
        tf.create_workflow(id="seq-fail")
        .then(recording_step("a", log))
        .then(failing_step("b", exc))
        .then(recording_step("c", log))
        .commit()
    )
    result = await start(wf, {})
    assert result.status == "failed"
    assert result.error is exc
    assert result.result is None
    assert result.steps["b"].status == "failed"
    assert "c" not in result.steps
    assert [step_id for step_id, _ in log] == ["a"]


# --------------------------------------------------------------------------------------------
# .parallel
# --------------------------------------------------------------------------------------------


async def test_parallel_output_is_map_of_branch_outputs_and_feeds_next_step(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="par-out")
        .parallel([add_step("x", 1), add_step("y", 2)])
        .then(recording_step("after", log, {"ok": True}))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.steps["x"].output == {"n": 1}
    assert result.steps["y"].output == {"n": 2}
    assert log == [("after", {"x": {"n": 1}, "y": {"n": 2}})]


async def test_parallel_as_last_entry_result_is_the_map(rt: Any) -> None:
    wf = tf.create_workflow(id="par-last").parallel([add_step("x", 1), add_step("y", 2)]).commit()
    result = await start(wf, {"n": 5})
    assert result.result == {"x": {"n": 6}, "y": {"n": 7}}


async def test_parallel_branches_all_receive_the_same_input(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="par-in")
        .then(recording_step("pre", log, {"shared": 42}))
        .parallel([recording_step("p1", log), recording_step("p2", log), recording_step("p3", log)])
        .commit()
    )
    await start(wf, {})
    inputs = dict(log)
    assert inputs["p1"] == inputs["p2"] == inputs["p3"] == {"shared": 42}


async def test_parallel_branches_run_concurrently(rt: Any, autojump_clock: Any) -> None:
    running = 0
    peak = 0

    def branch(step_id: str) -> Any:
        async def execute(ctx: tf.StepContext) -> str:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await trio.sleep(10)
            running -= 1
            return step_id

        return make_step(step_id, execute)

    wf = (
        tf.create_workflow(id="par-conc")
        .parallel([branch("b1"), branch("b2"), branch("b3")])
        .commit()
    )
    t0 = trio.current_time()
    result = await start(wf, {})
    assert result.status == "success"
    assert peak == 3
    assert trio.current_time() - t0 == pytest.approx(10, abs=0.01)


async def test_parallel_default_waits_for_all_branches_then_reports_failure(
    rt: Any, autojump_clock: Any
) -> None:
    done: list[str] = []
    exc = Boom("branch failed")
    wf = (
        tf.create_workflow(id="par-fail")
        .parallel([failing_step("bad", exc, delay=1), slow_step("slow", 50, done)])
        .commit()
    )
    t0 = trio.current_time()
    result = await start(wf, {})
    assert result.status == "failed"
    assert result.error is exc
    assert done == ["slow"]
    assert trio.current_time() - t0 >= 50


async def test_parallel_default_keeps_successful_sibling_results(
    rt: Any, autojump_clock: Any
) -> None:
    done: list[str] = []
    exc = Boom("branch failed")
    wf = (
        tf.create_workflow(id="par-keep")
        .parallel([failing_step("bad", exc, delay=1), slow_step("slow", 5, done, {"v": 1})])
        .commit()
    )
    result = await start(wf, {})
    assert result.steps["slow"].status == "success"
    assert result.steps["slow"].output == {"v": 1}
    assert result.steps["bad"].status == "failed"
    assert result.steps["bad"].error is exc


async def test_parallel_default_reports_the_first_failure(rt: Any, autojump_clock: Any) -> None:
    # "first" both by declaration order and by time, so either reading of SPEC agrees.
    first = Boom("first")
    second = Boom("second")
    wf = (
        tf.create_workflow(id="par-first")
        .parallel([failing_step("f1", first, delay=1), failing_step("f2", second, delay=3)])
        .commit()
    )
    result = await start(wf, {})
    assert result.status == "failed"
    assert result.error is first
    assert result.steps["f1"].error is first
    assert result.steps["f2"].error is second


async def test_parallel_failure_stops_later_entries(rt: Any, autojump_clock: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="par-fail-stop")
        .parallel([failing_step("bad", Boom("x")), add_step("ok", 1)])
        .then(recording_step("after", log))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "failed"
    assert log == []
    assert "after" not in result.steps


async def test_parallel_fail_fast_cancels_slow_sibling(rt: Any, autojump_clock: Any) -> None:
    done: list[str] = []
    exc = Boom("fail fast")
    wf = (
        tf.create_workflow(id="par-ff")
        .parallel([failing_step("bad", exc, delay=1), slow_step("slow", 100, done)], fail_fast=True)
        .commit()
    )
    t0 = trio.current_time()
    result = await start(wf, {})
    elapsed = trio.current_time() - t0
    assert result.status == "failed"
    assert result.error is exc
    assert done == []
    assert elapsed < 100
    assert "slow" not in result.steps or result.steps["slow"].status != "success"
    # nothing keeps running in the background after the run ended
    await trio.sleep(200)
    assert done == []


async def test_parallel_fail_fast_keeps_sibling_that_already_succeeded(
    rt: Any, autojump_clock: Any
) -> None:
    done: list[str] = []
    exc = Boom("fail fast")
    wf = (
        tf.create_workflow(id="par-ff-keep")
        .parallel(
            [
                slow_step("quick", 1, done, {"q": 1}),
                failing_step("bad", exc, delay=2),
                slow_step("slow", 100, done),
            ],
            fail_fast=True,
        )
        .commit()
    )
    result = await start(wf, {})
    assert result.status == "failed"
    assert result.error is exc
    assert done == ["quick"]
    assert result.steps["quick"].status == "success"
    assert result.steps["quick"].output == {"q": 1}


# --------------------------------------------------------------------------------------------
# .branch
# --------------------------------------------------------------------------------------------


async def test_branch_runs_every_branch_whose_condition_is_true(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    async def yes(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    async def no(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return False

    wf = (
        tf.create_workflow(id="br-all")
        .branch(
            [
                (yes, recording_step("b1", log, {"b": 1})),
                (no, recording_step("b2", log, {"b": 2})),
                (yes, recording_step("b3", log, {"b": 3})),
            ]
        )
        .commit()
    )
    result = await start(wf, {"in": 0})
    assert result.status == "success"
    assert sorted(step_id for step_id, _ in log) == ["b1", "b3"]
    assert result.result == {"b1": {"b": 1}, "b3": {"b": 3}}
    assert "b2" not in result.steps


async def test_branch_with_no_true_condition_outputs_empty_dict_to_next_step(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def no(ctx: tf.StepContext) -> bool:
        return False

    wf = (
        tf.create_workflow(id="br-none")
        .branch([(no, recording_step("b1", log)), (no, recording_step("b2", log))])
        .then(recording_step("after", log, {"after": True}))
        .commit()
    )
    result = await start(wf, {"in": 0})
    assert result.status == "success"
    assert log == [("after", {})]
    assert result.result == {"after": True}


async def test_branch_with_no_true_condition_as_last_entry_results_in_empty_dict(
    rt: Any,
) -> None:
    def no(ctx: tf.StepContext) -> bool:
        return False

    wf = tf.create_workflow(id="br-none-last").branch([(no, add_step("b1", 1))]).commit()
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.result == {}


async def test_branch_condition_that_raises_counts_as_false(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    async def raises(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        raise Boom("condition exploded")

    async def yes(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    wf = (
        tf.create_workflow(id="br-raise")
        .branch([(raises, recording_step("b1", log)), (yes, recording_step("b2", log))])
        .commit()
    )
    result = await start(wf, {})
    assert result.status == "success"
    assert [step_id for step_id, _ in log] == ["b2"]
    assert result.result == {"b2": {"b2": True}}
    assert "b1" not in result.steps


async def test_branch_accepts_sync_and_async_conditions(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def sync_yes(ctx: tf.StepContext) -> bool:
        return True

    async def async_yes(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    wf = (
        tf.create_workflow(id="br-sync-async")
        .branch([(sync_yes, recording_step("s", log)), (async_yes, recording_step("a", log))])
        .commit()
    )
    result = await start(wf, {})
    assert sorted(step_id for step_id, _ in log) == ["a", "s"]
    assert set(result.result) == {"a", "s"}


async def test_branch_conditions_see_previous_output_and_branches_get_it_as_input(
    rt: Any,
) -> None:
    log: list[tuple[str, Any]] = []
    seen: list[Any] = []

    def is_big(ctx: tf.StepContext) -> bool:
        seen.append(ctx.input_data)
        return bool(ctx.input_data["n"] > 10)

    def is_small(ctx: tf.StepContext) -> bool:
        seen.append(ctx.input_data)
        return bool(ctx.input_data["n"] <= 10)

    wf = (
        tf.create_workflow(id="br-input")
        .then(add_step("pre", 1))
        .branch([(is_big, recording_step("big", log)), (is_small, recording_step("small", log))])
        .commit()
    )
    result = await start(wf, {"n": 19})
    assert seen == [{"n": 20}, {"n": 20}]
    assert log == [("big", {"n": 20})]
    assert result.result == {"big": {"big": True}}


# --------------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------------


async def test_dowhile_repeats_while_condition_true(rt: Any) -> None:
    def below_three(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] < 3)

    wf = tf.create_workflow(id="dowhile").dowhile(add_step("inc", 1), below_three).commit()
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.result == {"n": 3}


async def test_dountil_repeats_until_condition_true(rt: Any) -> None:
    async def reached_five(ctx: tf.StepContext) -> bool:
        await trio.lowlevel.checkpoint()
        return bool(ctx.input_data["n"] >= 5)

    wf = tf.create_workflow(id="dountil").dountil(add_step("inc", 1), reached_five).commit()
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.result == {"n": 5}


async def test_dowhile_body_runs_once_when_condition_already_false(rt: Any) -> None:
    calls: list[Any] = []

    async def body(ctx: tf.StepContext) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        calls.append(ctx.input_data)
        return {"n": ctx.input_data["n"] + 1}

    def below_three(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] < 3)

    wf = (
        tf.create_workflow(id="dowhile-once").dowhile(make_step("body", body), below_three).commit()
    )
    result = await start(wf, {"n": 10})
    assert calls == [{"n": 10}]
    assert result.result == {"n": 11}


async def test_dountil_body_runs_once_when_condition_already_met(rt: Any) -> None:
    calls: list[Any] = []

    async def body(ctx: tf.StepContext) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        calls.append(ctx.input_data)
        return {"n": ctx.input_data["n"] + 1}

    def always(ctx: tf.StepContext) -> bool:
        return True

    wf = tf.create_workflow(id="dountil-once").dountil(make_step("body", body), always).commit()
    result = await start(wf, {"n": 0})
    assert calls == [{"n": 0}]
    assert result.result == {"n": 1}


async def test_loop_each_iteration_gets_previous_iteration_output(rt: Any) -> None:
    calls: list[Any] = []

    async def body(ctx: tf.StepContext) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        calls.append(ctx.input_data)
        return {"items": [*ctx.input_data["items"], len(ctx.input_data["items"])]}

    def until_three(ctx: tf.StepContext) -> bool:
        return len(ctx.input_data["items"]) >= 3

    wf = tf.create_workflow(id="loop-acc").dountil(make_step("acc", body), until_three).commit()
    result = await start(wf, {"items": []})
    assert calls == [{"items": []}, {"items": [0]}, {"items": [0, 1]}]
    assert result.result == {"items": [0, 1, 2]}


async def test_loop_condition_iteration_count_is_one_based(rt: Any) -> None:
    counts: list[int] = []

    def cond(ctx: tf.StepContext) -> bool:
        counts.append(ctx.iteration_count)
        return ctx.iteration_count < 3

    wf = tf.create_workflow(id="loop-count").dowhile(add_step("inc", 1), cond).commit()
    result = await start(wf, {"n": 0})
    assert counts == [1, 2, 3]
    assert result.result == {"n": 3}


async def test_loop_body_sees_iteration_count(rt: Any) -> None:
    counts: list[int] = []

    async def body(ctx: tf.StepContext) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        counts.append(ctx.iteration_count)
        return {"n": ctx.input_data["n"] + 1}

    def until_four(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] >= 4)

    wf = tf.create_workflow(id="loop-body-count").dountil(make_step("b", body), until_four).commit()
    await start(wf, {"n": 0})
    assert counts == [1, 2, 3, 4]


async def test_loop_output_is_last_iteration_output_and_feeds_next_step(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def below_four(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] < 4)

    wf = (
        tf.create_workflow(id="loop-out")
        .dowhile(add_step("inc", 2), below_four)
        .then(recording_step("after", log, {"done": True}))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert log == [("after", {"n": 4})]
    assert result.steps["inc"].status == "success"
    assert result.steps["inc"].output == {"n": 4}


async def test_loop_body_failure_fails_run_and_stops_looping(rt: Any) -> None:
    calls: list[int] = []
    exc = Boom("iteration 2")

    async def body(ctx: tf.StepContext) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        calls.append(ctx.input_data["n"])
        if ctx.input_data["n"] == 1:
            raise exc
        return {"n": ctx.input_data["n"] + 1}

    def forever(ctx: tf.StepContext) -> bool:
        return True

    wf = tf.create_workflow(id="loop-fail").dowhile(make_step("b", body), forever).commit()
    result = await start(wf, {"n": 0})
    assert result.status == "failed"
    assert result.error is exc
    assert calls == [0, 1]


async def test_loop_body_is_listed_once_in_step_execution_path(rt: Any) -> None:
    def below_three(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] < 3)

    wf = (
        tf.create_workflow(id="loop-path")
        .then(add_step("pre", 0))
        .dowhile(add_step("inc", 1), below_three)
        .then(add_step("post", 0))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.result == {"n": 3}
    assert result.step_execution_path == ["pre", "inc", "post"]


# --------------------------------------------------------------------------------------------
# .map
# --------------------------------------------------------------------------------------------


async def test_map_sync_function_builds_next_input(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def double(ctx: tf.StepContext) -> dict[str, int]:
        return {"doubled": ctx.input_data["n"] * 2}

    wf = (
        tf.create_workflow(id="map-sync")
        .then(add_step("a", 1))
        .map(double)
        .then(recording_step("b", log))
        .commit()
    )
    result = await start(wf, {"n": 4})
    assert result.status == "success"
    assert log == [("b", {"doubled": 10})]


async def test_map_async_function_builds_next_input(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    async def wrap(ctx: tf.StepContext) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"wrapped": ctx.input_data}

    wf = (
        tf.create_workflow(id="map-async")
        .then(add_step("a", 1))
        .map(wrap)
        .then(recording_step("b", log))
        .commit()
    )
    await start(wf, {"n": 0})
    assert log == [("b", {"wrapped": {"n": 1}})]


async def test_map_from_step_with_dotted_path(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    a = recording_step("a", log, {"a": {"b": "deep", "other": 1}})
    wf = (
        tf.create_workflow(id="map-from-step")
        .then(a)
        .then(recording_step("mid", log, {"mid": True}))
        .map(
            {
                "by_step": tf.from_step(a, path="a.b"),
                "by_id": tf.from_step("a", path="a.other"),
                "whole": tf.from_step(a),
            }
        )
        .then(recording_step("b", log))
        .commit()
    )
    await start(wf, {})
    assert log[-1] == (
        "b",
        {"by_step": "deep", "by_id": 1, "whole": {"a": {"b": "deep", "other": 1}}},
    )


async def test_map_from_init_with_path(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="map-from-init")
        .then(add_step("a", 1))
        .map({"user": tf.from_init(path="user.name"), "init": tf.from_init()})
        .then(recording_step("b", log))
        .commit()
    )
    await start(wf, {"n": 0, "user": {"name": "ada"}})
    assert log == [("b", {"user": "ada", "init": {"n": 0, "user": {"name": "ada"}}})]


async def test_map_from_context_with_dotted_path(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="map-from-ctx")
        .then(add_step("a", 1))
        .map({"tenant": tf.from_context("k.sub")})
        .then(recording_step("b", log))
        .commit()
    )
    await start(wf, {"n": 0}, request_context={"k": {"sub": "acme"}})
    assert log == [("b", {"tenant": "acme"})]


async def test_map_const_values(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="map-const")
        .then(add_step("a", 1))
        .map(
            {
                "limit": tf.const(10),
                "tags": tf.const(["x", "y"]),
                "prev": tf.from_step("a", path="n"),
            }
        )
        .then(recording_step("b", log))
        .commit()
    )
    await start(wf, {"n": 0})
    assert log == [("b", {"limit": 10, "tags": ["x", "y"], "prev": 1})]


async def test_map_default_id_is_position_in_workflow(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def ident(ctx: tf.StepContext) -> Any:
        return ctx.input_data

    wf = (
        tf.create_workflow(id="map-default-id")
        .then(add_step("a", 1))
        .parallel([add_step("p", 1), add_step("q", 2)])
        .map(ident)
        .then(recording_step("b", log))
        .map(ident)
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert "map_2" in result.steps
    assert "map_4" in result.steps
    assert result.steps["map_2"].output == {"p": {"n": 2}, "q": {"n": 3}}


async def test_map_id_override_appears_in_result_steps(rt: Any) -> None:
    def shape(ctx: tf.StepContext) -> dict[str, int]:
        return {"v": ctx.input_data["n"]}

    wf = tf.create_workflow(id="map-id").then(add_step("a", 1)).map(shape, id="shape_it").commit()
    result = await start(wf, {"n": 1})
    assert result.steps["shape_it"].status == "success"
    assert result.steps["shape_it"].output == {"v": 2}
    assert "map_1" not in result.steps
    assert result.result == {"v": 2}


async def test_map_function_can_read_init_data_and_step_results(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def combine(ctx: tf.StepContext) -> dict[str, Any]:
        return {
            "init": ctx.get_init_data(),
            "a": ctx.get_step_result("a"),
            "prev": ctx.input_data,
        }

    wf = (
        tf.create_workflow(id="map-ctx")
        .then(add_step("a", 1))
        .then(add_step("b", 1))
        .map(combine)
        .then(recording_step("c", log))
        .commit()
    )
    await start(wf, {"n": 0})
    assert log == [("c", {"init": {"n": 0}, "a": {"n": 1}, "prev": {"n": 2}})]


# --------------------------------------------------------------------------------------------
# .sleep / .sleep_until
# --------------------------------------------------------------------------------------------


def timed_step(step_id: str, times: dict[str, float]) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        times[step_id] = trio.current_time()
        return ctx.input_data

    return make_step(step_id, execute)


async def test_sleep_seconds_waits_and_passes_input_through(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}
    log: list[tuple[str, Any]] = []
    wf = (
        tf.create_workflow(id="sleep-secs")
        .then(timed_step("a", times))
        .sleep(5)
        .then(timed_step("b", times))
        .then(recording_step("c", log))
        .commit()
    )
    result = await start(wf, {"v": 1})
    assert result.status == "success"
    assert times["b"] - times["a"] == pytest.approx(5, abs=0.01)
    assert log == [("c", {"v": 1})]
    assert result.steps["sleep_1"].output == {"v": 1}


async def test_sleep_accepts_timedelta(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}
    wf = (
        tf.create_workflow(id="sleep-td")
        .then(timed_step("a", times))
        .sleep(timedelta(minutes=2))
        .then(timed_step("b", times))
        .commit()
    )
    result = await start(wf, {"v": 1})
    assert result.status == "success"
    assert times["b"] - times["a"] == pytest.approx(120, abs=0.01)
    assert result.result == {"v": 1}


async def test_sleep_accepts_sync_function_of_context(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}

    def how_long(ctx: tf.StepContext) -> float:
        return float(ctx.input_data["wait"])

    wf = (
        tf.create_workflow(id="sleep-fn")
        .then(timed_step("a", times))
        .sleep(how_long)
        .then(timed_step("b", times))
        .commit()
    )
    await start(wf, {"wait": 7})
    assert times["b"] - times["a"] == pytest.approx(7, abs=0.01)


async def test_sleep_accepts_async_function_of_context(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}

    async def how_long(ctx: tf.StepContext) -> float:
        await trio.lowlevel.checkpoint()
        return float(ctx.input_data["wait"]) * 2

    wf = (
        tf.create_workflow(id="sleep-afn")
        .then(timed_step("a", times))
        .sleep(how_long)
        .then(timed_step("b", times))
        .commit()
    )
    result = await start(wf, {"wait": 3})
    assert times["b"] - times["a"] == pytest.approx(6, abs=0.01)
    assert result.result == {"wait": 3}


async def test_sleep_default_ids_and_override(rt: Any, autojump_clock: Any) -> None:
    wf = (
        tf.create_workflow(id="sleep-ids")
        .sleep(1)
        .then(add_step("a", 1))
        .sleep(1)
        .sleep(1, id="nap")
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.steps["sleep_0"].output == {"n": 0}
    assert result.steps["sleep_2"].output == {"n": 1}
    assert result.steps["nap"].output == {"n": 1}
    assert "sleep_3" not in result.steps


async def test_run_status_is_waiting_while_sleeping(rt: Any, autojump_clock: Any) -> None:
    entered = trio.Event()

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        entered.set()
        return ctx.input_data

    wf = tf.create_workflow(id="sleep-waiting").then(make_step("a", a)).sleep(60).commit()
    run = await wf.create_run()
    results: list[Any] = []

    async def go() -> None:
        results.append(await run.start(input_data={"x": 1}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go)
        await entered.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert run.status == "waiting"
    assert results[0].status == "success"
    assert run.status == "success"


async def test_sleep_until_aware_datetime_waits_until_then(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}
    target = datetime.now(UTC) + timedelta(hours=1)
    wf = (
        tf.create_workflow(id="sleep-until")
        .then(timed_step("a", times))
        .sleep_until(target)
        .then(timed_step("b", times))
        .commit()
    )
    with trio.fail_after(7200):
        result = await start(wf, {"v": 2})
    assert result.status == "success"
    # the wall clock moves on a little (real time) between definition and execution
    assert 3590 <= times["b"] - times["a"] <= 3600.5
    assert result.result == {"v": 2}
    assert result.steps["sleep_until_1"].output == {"v": 2}


async def test_sleep_until_past_datetime_does_not_wait(rt: Any, autojump_clock: Any) -> None:
    times: dict[str, float] = {}
    wf = (
        tf.create_workflow(id="sleep-until-past")
        .then(timed_step("a", times))
        .sleep_until(datetime.now(UTC) - timedelta(days=1))
        .then(timed_step("b", times))
        .commit()
    )
    with trio.fail_after(60):
        result = await start(wf, {"v": 3})
    assert result.status == "success"
    assert times["b"] - times["a"] == pytest.approx(0, abs=0.01)
    assert result.result == {"v": 3}


async def test_sleep_until_accepts_function_returning_datetime(
    rt: Any, autojump_clock: Any
) -> None:
    times: dict[str, float] = {}

    def deadline(ctx: tf.StepContext) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=ctx.input_data["in"])

    wf = (
        tf.create_workflow(id="sleep-until-fn")
        .then(timed_step("a", times))
        .sleep_until(deadline, id="until")
        .then(timed_step("b", times))
        .commit()
    )
    with trio.fail_after(3600):
        result = await start(wf, {"in": 600})
    assert result.status == "success"
    assert 590 <= times["b"] - times["a"] <= 600.5
    assert result.steps["until"].output == {"in": 600}


def test_sleep_until_naive_datetime_is_value_error_at_definition() -> None:
    wf = tf.create_workflow(id="sleep-naive")
    with pytest.raises(ValueError):  # noqa: PT011 - SPEC names only the type
        wf.sleep_until(datetime(2030, 1, 1, 12, 0))


# --------------------------------------------------------------------------------------------
# nested workflows
# --------------------------------------------------------------------------------------------


async def test_nested_workflow_output_becomes_step_output_and_next_input(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    inner = (
        tf.create_workflow(id="inner").then(add_step("i1", 10)).then(add_step("i2", 100)).commit()
    )
    outer = (
        tf.create_workflow(id="outer")
        .then(add_step("a", 1))
        .then(inner)
        .then(recording_step("b", log, {"end": True}))
        .commit()
    )
    result = await start(outer, {"n": 0})
    assert result.status == "success"
    assert result.steps["inner"].status == "success"
    assert result.steps["inner"].output == {"n": 111}
    assert log == [("b", {"n": 111})]


async def test_nested_workflow_failure_fails_parent_with_same_error(rt: Any) -> None:
    exc = Boom("inner failure")
    log: list[tuple[str, Any]] = []
    inner = tf.create_workflow(id="inner-fail").then(failing_step("i1", exc)).commit()
    outer = (
        tf.create_workflow(id="outer-fail").then(inner).then(recording_step("after", log)).commit()
    )
    result = await start(outer, {})
    assert result.status == "failed"
    assert result.steps["inner-fail"].status == "failed"
    assert result.error is exc
    assert log == []


async def test_nested_workflow_starts_with_parent_state_and_merges_back(rt: Any) -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"a": 1})
        return ctx.input_data

    async def i1(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["inner"] = dict(ctx.state)
        ctx.set_state({"inner": "yes"})
        return ctx.input_data

    async def b(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["after"] = dict(ctx.state)
        return ctx.input_data

    inner = tf.create_workflow(id="inner-state").then(make_step("i1", i1)).commit()
    outer = (
        tf.create_workflow(id="outer-state")
        .then(make_step("a", a))
        .then(inner)
        .then(make_step("b", b))
        .commit()
    )
    result = await start(outer, {}, initial_state={"p": 0})
    assert result.status == "success"
    assert seen["inner"] == {"p": 0, "a": 1}
    assert seen["after"] == {"p": 0, "a": 1, "inner": "yes"}
    assert result.state == {"p": 0, "a": 1, "inner": "yes"}


async def test_nested_workflow_shares_request_context(rt: Any) -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.request_context["from_parent"] = "p"
        return ctx.input_data

    async def i1(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["inner"] = (ctx.request_context.get("given"), ctx.request_context.get("from_parent"))
        ctx.request_context["from_nested"] = "n"
        return ctx.input_data

    async def b(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["after"] = ctx.request_context.get("from_nested")
        return ctx.input_data

    inner = tf.create_workflow(id="inner-rc").then(make_step("i1", i1)).commit()
    outer = (
        tf.create_workflow(id="outer-rc")
        .then(make_step("a", a))
        .then(inner)
        .then(make_step("b", b))
        .commit()
    )
    result = await start(outer, {}, request_context={"given": "g"})
    assert result.status == "success"
    assert seen == {"inner": ("g", "p"), "after": "n"}


async def test_nested_workflow_as_parallel_branch(rt: Any) -> None:
    inner = tf.create_workflow(id="inner-par").then(add_step("i1", 100)).commit()
    wf = tf.create_workflow(id="outer-par").parallel([inner, add_step("plain", 1)]).commit()
    result = await start(wf, {"n": 1})
    assert result.status == "success"
    assert result.result == {"inner-par": {"n": 101}, "plain": {"n": 2}}


async def test_nested_workflow_as_loop_body_accumulates(rt: Any) -> None:
    inner = (
        tf.create_workflow(id="inner-loop").then(add_step("i1", 1)).then(add_step("i2", 1)).commit()
    )

    def below_six(ctx: tf.StepContext) -> bool:
        return bool(ctx.input_data["n"] < 6)

    wf = tf.create_workflow(id="outer-loop").dowhile(inner, below_six).commit()
    with trio.fail_after(10):
        result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.result == {"n": 6}


async def test_sleep_inside_nested_workflow_takes_virtual_time(
    rt: Any, autojump_clock: Any
) -> None:
    times: dict[str, float] = {}
    inner = tf.create_workflow(id="inner-sleep").sleep(30).commit()
    wf = (
        tf.create_workflow(id="outer-sleep")
        .then(timed_step("a", times))
        .then(inner)
        .then(timed_step("b", times))
        .commit()
    )
    result = await start(wf, {"v": 9})
    assert result.status == "success"
    assert times["b"] - times["a"] == pytest.approx(30, abs=0.01)
    assert result.result == {"v": 9}


# --------------------------------------------------------------------------------------------
# workflow state
# --------------------------------------------------------------------------------------------


async def test_set_state_is_applied_at_step_end_and_ctx_state_is_state_at_step_start(
    rt: Any,
) -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: tf.StepContext) -> Any:
        ctx.set_state({"x": 1})
        await trio.lowlevel.checkpoint()
        seen["a_after_set"] = dict(ctx.state)
        return ctx.input_data

    async def b(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["b"] = dict(ctx.state)
        return ctx.input_data

    wf = (
        tf.create_workflow(id="state-timing")
        .then(make_step("a", a))
        .then(make_step("b", b))
        .commit()
    )
    result = await start(wf, {})
    assert seen["a_after_set"] == {}
    assert seen["b"] == {"x": 1}
    assert result.state == {"x": 1}


async def test_set_state_is_shallow_merged(rt: Any) -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"nested": {"q": 2}, "new": True})
        return ctx.input_data

    async def b(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["b"] = dict(ctx.state)
        return ctx.input_data

    wf = (
        tf.create_workflow(id="state-merge")
        .then(make_step("a", a))
        .then(make_step("b", b))
        .commit()
    )
    result = await start(wf, {}, initial_state={"nested": {"p": 1}, "keep": "k"})
    expected = {"nested": {"q": 2}, "keep": "k", "new": True}
    assert seen["b"] == expected
    assert result.state == expected


async def test_state_defaults_to_empty_dict(rt: Any) -> None:
    seen: list[Any] = []

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen.append(ctx.state)
        return ctx.input_data

    wf = tf.create_workflow(id="state-empty").then(make_step("a", a)).commit()
    result = await start(wf, {})
    assert seen == [{}]
    assert result.state == {}


async def test_set_state_is_discarded_when_attempt_fails(rt: Any) -> None:
    seen: list[Any] = []

    async def flaky(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        if ctx.retry_count == 0:
            ctx.set_state({"bad": True})
            raise Boom("first attempt")
        seen.append(dict(ctx.state))
        ctx.set_state({"good": True})
        return ctx.input_data

    wf = tf.create_workflow(id="state-retry").then(make_step("flaky", flaky, retries=1)).commit()
    result = await start(wf, {}, initial_state={"init": 1})
    assert result.status == "success"
    assert seen == [{"init": 1}]
    assert result.state == {"init": 1, "good": True}


async def test_set_state_of_failing_step_is_not_in_failed_result(rt: Any) -> None:
    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"a": 1})
        return ctx.input_data

    async def bad(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"bad": True})
        raise Boom("nope")

    wf = (
        tf.create_workflow(id="state-fail")
        .then(make_step("a", a))
        .then(make_step("bad", bad))
        .commit()
    )
    result = await start(wf, {})
    assert result.status == "failed"
    assert result.state == {"a": 1}


async def test_set_state_from_parallel_branches_are_all_kept(rt: Any) -> None:
    seen: list[Any] = []

    def setter(step_id: str) -> Any:
        async def execute(ctx: tf.StepContext) -> Any:
            await trio.lowlevel.checkpoint()
            ctx.set_state({step_id: True})
            return step_id

        return make_step(step_id, execute)

    async def after(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen.append(dict(ctx.state))
        return None

    wf = (
        tf.create_workflow(id="state-par")
        .parallel([setter("l"), setter("r")])
        .then(make_step("after", after))
        .commit()
    )
    result = await start(wf, {})
    assert seen == [{"l": True, "r": True}]
    assert result.state == {"l": True, "r": True}


@attrs.frozen
class Counter:
    count: int = 0
    label: str = "none"


def _as_dict(state: Any) -> Any:
    # SPEC does not say whether result.state is the schema instance or its dict form.
    return attrs.asdict(state) if attrs.has(type(state)) else state


async def test_state_schema_gives_instances_and_merges_dict_updates(rt: Any) -> None:
    seen: list[Any] = []

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen.append(ctx.state)
        ctx.set_state({"count": ctx.state.count + 1})
        return ctx.input_data

    async def b(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen.append(ctx.state)
        ctx.set_state(Counter(count=ctx.state.count * 10, label="b"))
        return ctx.input_data

    wf = (
        tf.create_workflow(id="state-schema", state_schema=Counter)
        .then(make_step("a", a))
        .then(make_step("b", b))
        .commit()
    )
    result = await start(wf, {}, initial_state={"count": 1})
    assert result.status == "success"
    assert seen == [Counter(count=1, label="none"), Counter(count=2, label="none")]
    assert _as_dict(result.state) == {"count": 20, "label": "b"}


async def test_state_schema_defaults_apply_when_no_initial_state(rt: Any) -> None:
    seen: list[Any] = []

    async def a(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen.append(ctx.state)
        return ctx.input_data

    wf = (
        tf.create_workflow(id="state-schema-default", state_schema=Counter)
        .then(make_step("a", a))
        .commit()
    )
    await start(wf, {})
    assert seen == [Counter()]
    assert isinstance(seen[0], Counter)


async def test_state_of_failing_parallel_branch_is_discarded_sibling_state_kept(
    rt: Any,
) -> None:
    async def ok(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"ok": True})
        return "ok"

    async def bad(ctx: tf.StepContext) -> Any:
        ctx.set_state({"bad": True})
        await trio.lowlevel.checkpoint()
        raise Boom("branch")

    wf = (
        tf.create_workflow(id="state-par-fail")
        .parallel([make_step("ok", ok), make_step("bad", bad)])
        .commit()
    )
    result = await start(wf, {}, initial_state={"base": 0})
    assert result.status == "failed"
    assert result.state == {"base": 0, "ok": True}


async def test_loop_condition_sees_state_set_by_body(rt: Any) -> None:
    async def body(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"laps": ctx.state.get("laps", 0) + 1})
        return ctx.input_data

    def until_three_laps(ctx: tf.StepContext) -> bool:
        return bool(ctx.state.get("laps", 0) >= 3)

    wf = (
        tf.create_workflow(id="state-loop")
        .dountil(make_step("lap", body), until_three_laps)
        .commit()
    )
    with trio.fail_after(10):
        result = await start(wf, {})
    assert result.status == "success"
    assert result.state == {"laps": 3}


# --------------------------------------------------------------------------------------------
# bail
# --------------------------------------------------------------------------------------------


async def test_bail_ends_workflow_successfully_with_the_bail_value(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    async def bailer(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        return ctx.bail({"early": ctx.input_data["n"]})

    wf = (
        tf.create_workflow(id="bail")
        .then(add_step("a", 1))
        .then(make_step("bailer", bailer))
        .then(recording_step("later", log))
        .then(recording_step("later2", log))
        .commit()
    )
    result = await start(wf, {"n": 0})
    assert result.status == "success"
    assert result.result == {"early": 1}
    assert result.steps["bailer"].output == {"early": 1}
    # SPEC §1: "this step succeeds"; §2 also lists a step-level `bailed` status.
    assert result.steps["bailer"].status in ("success", "bailed")
    assert log == []
    assert "later" not in result.steps
    assert "later2" not in result.steps


async def test_bail_inside_loop_ends_the_workflow(rt: Any) -> None:
    log: list[tuple[str, Any]] = []
    calls: list[int] = []

    async def body(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        calls.append(ctx.iteration_count)
        if ctx.iteration_count == 2:
            return ctx.bail({"stopped_at": 2})
        return ctx.input_data

    def forever(ctx: tf.StepContext) -> bool:
        return True

    wf = (
        tf.create_workflow(id="bail-loop")
        .dowhile(make_step("body", body), forever)
        .then(recording_step("after", log))
        .commit()
    )
    with trio.fail_after(10):
        result = await start(wf, {})
    assert result.status == "success"
    assert result.result == {"stopped_at": 2}
    assert calls == [1, 2]
    assert log == []


# --------------------------------------------------------------------------------------------
# get_step_result / get_init_data
# --------------------------------------------------------------------------------------------


async def test_get_step_result_by_step_and_by_id(rt: Any) -> None:
    seen: dict[str, Any] = {}
    a = recording_step("a", [], {"from_a": 1})

    async def c(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["by_step"] = ctx.get_step_result(a)
        seen["by_id"] = ctx.get_step_result("a")
        seen["b"] = ctx.get_step_result("b")
        return None

    wf = (
        tf.create_workflow(id="gsr")
        .then(a)
        .then(recording_step("b", [], {"from_b": 2}))
        .then(make_step("c", c))
        .commit()
    )
    await start(wf, {})
    assert seen == {"by_step": {"from_a": 1}, "by_id": {"from_a": 1}, "b": {"from_b": 2}}


async def test_get_step_result_is_none_for_steps_that_did_not_run(rt: Any) -> None:
    seen: dict[str, Any] = {}

    def no(ctx: tf.StepContext) -> bool:
        return False

    def yes(ctx: tf.StepContext) -> bool:
        return True

    async def c(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        seen["skipped"] = ctx.get_step_result("skipped")
        seen["taken"] = ctx.get_step_result("taken")
        seen["later"] = ctx.get_step_result("later")
        seen["unknown"] = ctx.get_step_result("no-such-step")
        return None

    wf = (
        tf.create_workflow(id="gsr-none")
        .branch([(no, add_step("skipped", 1)), (yes, add_step("taken", 2))])
        .then(make_step("c", c))
        .then(add_step("later", 3))
        .commit()
    )
    await start(wf, {"n": 0})
    assert seen == {"skipped": None, "taken": {"n": 2}, "later": None, "unknown": None}


async def test_get_init_data_is_workflow_input_in_every_step(rt: Any) -> None:
    seen: list[Any] = []

    def grab(step_id: str) -> Any:
        async def execute(ctx: tf.StepContext) -> Any:
            await trio.lowlevel.checkpoint()
            seen.append((step_id, ctx.get_init_data()))
            return {"changed": step_id}

        return make_step(step_id, execute)

    wf = tf.create_workflow(id="init").then(grab("a")).then(grab("b")).then(grab("c")).commit()
    await start(wf, {"orig": [1, 2]})
    assert seen == [("a", {"orig": [1, 2]}), ("b", {"orig": [1, 2]}), ("c", {"orig": [1, 2]})]


async def test_condition_can_read_step_results_and_init_data(rt: Any) -> None:
    log: list[tuple[str, Any]] = []

    def cond(ctx: tf.StepContext) -> bool:
        return ctx.get_init_data()["go"] is True and ctx.get_step_result("a") == {"n": 1}

    wf = (
        tf.create_workflow(id="cond-ctx")
        .then(add_step("a", 1))
        .branch([(cond, recording_step("ran", log))])
        .commit()
    )
    await start(wf, {"n": 0, "go": True})
    assert log == [("ran", {"n": 1})]


# --------------------------------------------------------------------------------------------
# definition errors and runtime lookup
# --------------------------------------------------------------------------------------------


async def test_create_run_on_empty_workflow_raises_empty_workflow_error(rt: Any) -> None:
    wf = tf.create_workflow(id="empty").commit()
    with pytest.raises(tf.EmptyWorkflowError):
        await wf.create_run()
    assert issubclass(tf.EmptyWorkflowError, tf.TrioflowError)


async def test_create_run_on_uncommitted_workflow_raises_not_committed(rt: Any) -> None:
    wf = tf.create_workflow(id="uncommitted").then(add_step("a", 1))
    with pytest.raises(tf.WorkflowNotCommittedError):
        await wf.create_run()
    assert issubclass(tf.WorkflowNotCommittedError, tf.TrioflowError)


async def test_registering_a_workflow_commits_it() -> None:
    wf = tf.create_workflow(id="registered").then(add_step("a", 1))
    async with tf.open_runtime(workflows=[wf]):
        result = await start(wf, {"n": 1})
    assert result.status == "success"
    assert result.result == {"n": 2}


async def test_create_run_outside_a_runtime_raises_no_runtime_error() -> None:
    wf = tf.create_workflow(id="no-rt").then(add_step("a", 1)).commit()
    with pytest.raises(tf.NoRuntimeError):
        await wf.create_run()


async def test_create_run_after_runtime_closed_raises_no_runtime_error() -> None:
    wf = tf.create_workflow(id="closed-rt").then(add_step("a", 1)).commit()
    async with tf.open_runtime():
        assert (await start(wf, {"n": 0})).status == "success"
    with pytest.raises(tf.NoRuntimeError):
        await wf.create_run()


# --------------------------------------------------------------------------------------------
# isolation between concurrent runs
# --------------------------------------------------------------------------------------------


async def test_failing_run_does_not_disturb_concurrent_run(rt: Any, autojump_clock: Any) -> None:
    exc = Boom("run one fails")
    done: list[str] = []
    failing_wf = tf.create_workflow(id="iso-fail").then(failing_step("bad", exc, delay=1)).commit()
    ok_wf = (
        tf.create_workflow(id="iso-ok")
        .then(slow_step("slow", 5, done, {"fine": True}))
        .then(recording_step("after", [], {"after": True}))
        .commit()
    )
    results: dict[str, Any] = {}

    async def go(name: str, wf: Any, data: Any) -> None:
        results[name] = await start(wf, data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go, "fail", failing_wf, {})
        nursery.start_soon(go, "ok", ok_wf, {})

    assert results["fail"].status == "failed"
    assert results["fail"].error is exc
    assert results["ok"].status == "success"
    assert done == ["slow"]
    assert results["ok"].steps["slow"].output == {"fine": True}
    assert results["ok"].result == {"after": True}
    # the runtime keeps working afterwards
    assert (await start(ok_wf, {})).status == "success"


async def test_concurrent_runs_of_same_workflow_keep_separate_data_and_state(
    rt: Any, autojump_clock: Any
) -> None:
    async def a(ctx: tf.StepContext) -> Any:
        ctx.set_state({"who": ctx.input_data["who"]})
        await trio.sleep(ctx.input_data["delay"])
        return {"who": ctx.input_data["who"]}

    async def b(ctx: tf.StepContext) -> Any:
        await trio.sleep(1)
        return {"state_who": ctx.state["who"], "input_who": ctx.input_data["who"]}

    wf = tf.create_workflow(id="iso-same").then(make_step("a", a)).then(make_step("b", b)).commit()
    results: dict[str, Any] = {}

    async def go(who: str, delay: float) -> None:
        results[who] = await start(wf, {"who": who, "delay": delay})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go, "x", 3)
        nursery.start_soon(go, "y", 1)

    assert results["x"].result == {"state_who": "x", "input_who": "x"}
    assert results["y"].result == {"state_who": "y", "input_who": "y"}
    assert results["x"].run_id != results["y"].run_id
