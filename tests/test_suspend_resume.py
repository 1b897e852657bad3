"""Suspend and resume of workflow runs.

Covers SPEC §1 (the step context: ``suspend``, ``resume_data``, ``suspend_data``, state and
request context), SPEC §2 (``Run.resume``/``restart``/``start``, the errors raised before
anything executes, validation messages, resume semantics, ``Runtime.get_run_state``,
``list_runs`` and ``delete_run``) and mastra-behaviour.md §3.4, §6.4 and §7: which step is
resumed (by Step, id, dotted id, path, label, or auto-detected), what it sees when it runs
again, how parallel/branch/loop entries continue, and how bad resume data is rejected while
the run stays suspended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf

# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def rt() -> AsyncIterator[Any]:
    async with tf.open_runtime() as runtime:
        yield runtime


@attrs.define
class Call:
    """One execution of a step, as the step saw it."""

    step: str
    input: Any
    resume: Any
    suspend_data: Any


def gate(
    step_id: str, calls: list[Call], *, label: str | list[str] | None = None, **step_kwargs: Any
) -> Any:
    """A step that suspends with ``{"ask": step_id}`` on its first run and, once resumed,
    returns its input unchanged. Every execution is recorded in ``calls``."""

    async def execute(ctx: tf.StepContext) -> Any:
        calls.append(Call(step_id, ctx.input_data, ctx.resume_data, ctx.suspend_data))
        if ctx.resume_data is None:
            return await ctx.suspend({"ask": step_id}, resume_label=label)
        return ctx.input_data

    return tf.create_step(id=step_id, execute=execute, **step_kwargs)


def adder(step_id: str, n: int, log: list[str]) -> Any:
    """A step that appends its id to ``log`` and returns ``input + n``."""

    async def execute(ctx: tf.StepContext) -> int:
        log.append(step_id)
        return int(ctx.input_data) + n

    return tf.create_step(id=step_id, execute=execute)


def chain(wf_id: str, *steps: Any) -> Any:
    wf = tf.create_workflow(id=wf_id)
    for s in steps:
        wf = wf.then(s)
    return wf.commit()


def resumed(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.resume is not None]


@attrs.frozen
class Review:
    approved: bool = False
    by: str = "nobody"


@attrs.frozen
class Approval:
    approved: bool
    by: str = "unknown"


@attrs.frozen
class Decision:
    approved: bool
    level: int


@attrs.frozen
class Order:
    id: str
    amount: int


@attrs.frozen
class Num:
    n: int


@attrs.frozen
class Flag:
    on: bool


@attrs.frozen
class Item:
    x: int


@attrs.frozen
class Basket:
    items: list[Item]


@attrs.frozen
class Inner:
    b: int


@attrs.frozen
class Outer:
    a: Inner


@attrs.frozen
class Counter:
    count: int


@attrs.frozen
class Reason:
    reason: str
    level: int


@attrs.define
class ChainRun:
    run: Any
    first: Any
    calls: list[Call]
    log: list[str]


async def suspended_chain_run() -> ChainRun:
    """``a`` (+1) -> ``gate`` (suspends) -> ``c`` (+10), started with input 1."""
    calls: list[Call] = []
    log: list[str] = []
    wf = chain("plain", adder("a", 1, log), gate("gate", calls), adder("c", 10, log))
    run = await wf.create_run()
    first = await run.start(input_data=1)
    assert first.status == "suspended"
    return ChainRun(run, first, calls, log)


def nested_workflows(calls: list[Call], *, label: str | None = None) -> tuple[Any, Any, Any]:
    """``top`` = then(``outer``) where ``outer`` = then(``inner`` gate). Returns
    (top, outer, inner_step)."""
    inner_step = gate("inner", calls, label=label)
    outer = chain("outer", inner_step)
    top = chain("top", outer)
    return top, outer, inner_step


# --------------------------------------------------------------------------- plain chain


async def test_suspended_result_reports_path_payload_and_steps(rt: Any) -> None:
    cr = await suspended_chain_run()
    result = cr.first
    assert result.suspended == [["gate"]]
    assert result.suspend_payload == {"gate": {"ask": "gate"}}
    assert result.result is None
    assert result.steps["gate"].status == "suspended"
    assert result.steps["gate"].suspend_payload == {"ask": "gate"}
    assert result.steps["gate"].payload == 2
    assert result.steps["a"].status == "success"
    assert "c" not in result.steps
    assert cr.log == ["a"]


async def test_resumed_step_reruns_from_top_with_resume_and_suspend_data(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls = cr.run, cr.calls
    await run.resume(resume_data={"ok": True})
    assert [c.step for c in calls] == ["gate", "gate"]
    first, second = calls
    assert (first.input, first.resume, first.suspend_data) == (2, None, None)
    assert second.input == 2  # its original input, not the resume data
    assert second.resume == {"ok": True}
    assert second.suspend_data == {"ask": "gate"}


async def test_steps_after_resumed_step_run_and_earlier_steps_do_not(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, log = cr.run, cr.log
    result = await run.resume(resume_data={"ok": True})
    assert result.status == "success"
    assert result.result == 12
    assert log == ["a", "c"]
    assert result.steps["c"].output == 12
    assert result.steps["c"].payload == 2


async def test_resume_data_is_none_outside_the_resumed_step(rt: Any) -> None:
    seen: list[tuple[str, Any]] = []

    def recorder(step_id: str) -> Any:
        async def execute(ctx: tf.StepContext) -> Any:
            seen.append((step_id, ctx.resume_data))
            return ctx.input_data

        return tf.create_step(id=step_id, execute=execute)

    calls: list[Call] = []
    run = await chain(
        "rdnone", recorder("before"), gate("g", calls), recorder("after")
    ).create_run()
    await run.start(input_data=0)
    await run.resume(resume_data={"ok": True})
    assert seen == [("before", None), ("after", None)]
    assert [c.resume for c in calls] == [None, {"ok": True}]


async def test_resumed_step_result_records_resume_payload(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    result = await run.resume(resume_data={"ok": True})
    gate_result = result.steps["gate"]
    assert gate_result.status == "success"
    assert gate_result.output == 2
    assert gate_result.resume_payload == {"ok": True}
    assert isinstance(gate_result.resumed_at, int)
    assert gate_result.resumed_at >= gate_result.started_at


async def test_suspend_returns_none(rt: Any) -> None:
    returned: list[Any] = []

    async def execute(ctx: tf.StepContext) -> str:
        returned.append(await ctx.suspend({"p": 1}))
        return "after"

    wf = chain("ret", tf.create_step(id="s", execute=execute))
    run = await wf.create_run()
    await run.start(input_data=0)
    assert returned == [None]


async def test_suspend_then_return_value_becomes_suspend_output(rt: Any) -> None:
    async def execute(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            await ctx.suspend({"why": "wait"})
            return {"partial": 41}
        return {"final": 42}

    wf = chain("out", tf.create_step(id="s", execute=execute))
    run = await wf.create_run()
    result = await run.start(input_data=0)
    assert result.status == "suspended"
    assert result.steps["s"].status == "suspended"
    assert result.steps["s"].suspend_output == {"partial": 41}
    assert result.steps["s"].suspend_payload == {"why": "wait"}
    assert result.suspend_payload == {"s": {"why": "wait"}}
    resumed_result = await run.resume(resume_data={"go": 1})
    assert resumed_result.result == {"final": 42}


async def test_run_status_follows_suspend_and_resume(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    assert run.status == "suspended"
    await run.resume(resume_data={"ok": True})
    assert run.status == "success"
    assert (await rt.get_run_state(run.run_id)).status == "success"


async def test_run_suspended_twice_in_a_chain_needs_two_resumes(rt: Any) -> None:
    calls: list[Call] = []
    log: list[str] = []
    wf = chain("two", gate("g1", calls), adder("mid", 1, log), gate("g2", calls))
    run = await wf.create_run()
    first = await run.start(input_data=5)
    assert first.suspended == [["g1"]]
    second = await run.resume(resume_data={"n": 1})
    assert second.status == "suspended"
    assert second.suspended == [["g2"]]
    assert second.suspend_payload == {"g2": {"ask": "g2"}}
    third = await run.resume(resume_data={"n": 2})
    assert third.status == "success"
    assert third.result == 6
    assert [(c.step, c.resume) for c in resumed(calls)] == [("g1", {"n": 1}), ("g2", {"n": 2})]


async def test_successful_resume_clears_suspension_fields(rt: Any) -> None:
    cr = await suspended_chain_run()
    result = await cr.run.resume(resume_data={"ok": True})
    assert result.suspended == []
    assert result.suspend_payload == {}


async def test_resume_data_may_be_a_schema_instance(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("inst", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    result = await run.resume(resume_data=Approval(approved=True, by="bob"))
    assert result.status == "success"
    assert resumed(calls)[0].resume == Approval(approved=True, by="bob")


# --------------------------------------------------------------------------- targeting


async def test_resume_by_step_object(rt: Any) -> None:
    calls: list[Call] = []
    g = gate("gate", calls)
    run = await chain("obj", g).create_run()
    await run.start(input_data=3)
    result = await run.resume(resume_data={"ok": 1}, step=g)
    assert result.status == "success"
    assert result.result == 3


async def test_resume_by_step_id(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("byid", gate("gate", calls)).create_run()
    await run.start(input_data=3)
    result = await run.resume(resume_data={"ok": 1}, step="gate")
    assert result.status == "success"
    assert resumed(calls)[0].resume == {"ok": 1}


async def test_nested_suspension_reports_full_path_and_dotted_payload_key(rt: Any) -> None:
    calls: list[Call] = []
    top, _outer, _inner = nested_workflows(calls)
    run = await top.create_run()
    result = await run.start(input_data=7)
    assert result.status == "suspended"
    assert result.suspended == [["outer", "inner"]]
    assert result.suspend_payload == {"outer.inner": {"ask": "inner"}}
    assert result.steps["outer"].status == "suspended"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(lambda outer, inner: "outer.inner", id="dotted-id"),
        pytest.param(lambda outer, inner: ["outer", "inner"], id="list-of-ids"),
        pytest.param(lambda outer, inner: [outer, inner], id="list-of-objects"),
    ],
)
async def test_resume_nested_step_by_path(rt: Any, target: Callable[[Any, Any], Any]) -> None:
    calls: list[Call] = []
    top, outer, inner = nested_workflows(calls)
    run = await top.create_run()
    await run.start(input_data=7)
    result = await run.resume(resume_data={"ok": True}, step=target(outer, inner))
    assert result.status == "success"
    assert result.result == 7
    [call] = resumed(calls)
    assert (call.step, call.input, call.resume) == ("inner", 7, {"ok": True})


async def test_resume_auto_detects_single_path_three_levels_deep(rt: Any) -> None:
    calls: list[Call] = []
    log: list[str] = []
    wf_b = chain("b", gate("c", calls))
    wf_a = chain("a", wf_b)
    top = chain("top3", wf_a, adder("after", 100, log))
    run = await top.create_run()
    result = await run.start(input_data=1)
    assert result.status == "suspended"
    assert result.suspended == [["a", "b", "c"]]
    assert result.suspend_payload == {"a.b.c": {"ask": "c"}}
    final = await run.resume(resume_data={"deep": True})
    assert final.status == "success"
    assert final.result == 101
    assert [(c.step, c.resume) for c in resumed(calls)] == [("c", {"deep": True})]
    assert log == ["after"]


async def test_resume_by_label(rt: Any) -> None:
    calls: list[Call] = []
    wf = (
        tf.create_workflow(id="labels")
        .parallel([gate("left", calls, label="go-left"), gate("right", calls, label="go-right")])
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=0)
    result = await run.resume(resume_data={"via": "label"}, label="go-right")
    assert result.status == "suspended"
    assert result.suspended == [["left"]]
    assert [c.step for c in resumed(calls)] == ["right"]


@pytest.mark.parametrize("label", ["first-name", "second-name"])
async def test_resume_by_any_label_of_a_label_list(rt: Any, label: str) -> None:
    calls: list[Call] = []
    wf = (
        tf.create_workflow(id="labellist")
        .parallel([gate("p1", calls, label=["first-name", "second-name"]), gate("p2", calls)])
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=0)
    result = await run.resume(resume_data={"l": label}, label=label)
    assert result.suspended == [["p2"]]
    assert [(c.step, c.resume) for c in resumed(calls)] == [("p1", {"l": label})]


async def test_resume_by_label_of_nested_step(rt: Any) -> None:
    calls: list[Call] = []
    top, _outer, _inner = nested_workflows(calls, label="inner-approval")
    run = await top.create_run()
    await run.start(input_data=7)
    result = await run.resume(resume_data={"ok": True}, label="inner-approval")
    assert result.status == "success"
    assert [c.step for c in resumed(calls)] == ["inner"]


async def test_resume_by_nested_workflow_object_resumes_its_suspended_step(rt: Any) -> None:
    calls: list[Call] = []
    top, outer, _inner = nested_workflows(calls)
    run = await top.create_run()
    await run.start(input_data=7)
    result = await run.resume(resume_data={"ok": True}, step=outer)
    assert result.status == "success"
    assert [(c.step, c.resume) for c in resumed(calls)] == [("inner", {"ok": True})]


@pytest.mark.parametrize("target", ["a.b.c", ["a", "b", "c"]], ids=["dotted", "list"])
async def test_resume_three_levels_deep_by_explicit_path(rt: Any, target: Any) -> None:
    calls: list[Call] = []
    top = chain("top3", chain("a", chain("b", gate("c", calls))))
    run = await top.create_run()
    await run.start(input_data=1)
    result = await run.resume(resume_data={"deep": 1}, step=target)
    assert result.status == "success"
    assert result.result == 1
    assert [c.step for c in resumed(calls)] == ["c"]


async def test_resume_of_wrong_inner_step_of_nested_path(rt: Any) -> None:
    calls: list[Call] = []
    top, _outer, _inner = nested_workflows(calls)
    run = await top.create_run()
    await run.start(input_data=7)
    with pytest.raises(tf.StepNotSuspendedError):
        await run.resume(resume_data={"ok": True}, step="outer.nope")
    assert len(calls) == 1
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_invalid_resume_data_for_nested_step_is_rejected_before_running(rt: Any) -> None:
    calls: list[Call] = []
    inner = gate("inner", calls, resume_schema=Approval)
    top = chain("top", chain("outer", inner))
    run = await top.create_run()
    await run.start(input_data=7)
    with pytest.raises(tf.ValidationError) as info:
        await run.resume(resume_data={"approved": "nope"}, step="outer.inner")
    assert str(info.value).startswith("Invalid resume data:")
    assert [p for p, _ in info.value.errors] == ["approved"]
    assert len(calls) == 1
    assert run.status == "suspended"
    assert (await rt.get_run_state(run.run_id)).status == "suspended"
    result = await run.resume(resume_data={"approved": True})
    assert result.status == "success"
    assert resumed(calls)[0].resume == Approval(approved=True)


async def test_state_set_inside_nested_workflow_survives_its_suspension(rt: Any) -> None:
    seen: list[Any] = []

    async def inner(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            ctx.set_state({"inner": "set"})
            return await ctx.suspend()
        return "inner-done"

    async def after(ctx: tf.StepContext) -> Any:
        seen.append(dict(ctx.state))
        return ctx.input_data

    top = chain(
        "top",
        chain("outer", tf.create_step(id="inner", execute=inner)),
        tf.create_step(id="after", execute=after),
    )
    run = await top.create_run()
    await run.start(input_data=0, initial_state={"outer": "kept"})
    result = await run.resume(resume_data={"go": 1})
    assert result.status == "success"
    assert result.result == "inner-done"
    assert seen == [{"outer": "kept", "inner": "set"}]


# --------------------------------------------------------------------------- parallel


async def test_parallel_with_two_suspended_branches_lists_both(rt: Any) -> None:
    calls: list[Call] = []
    wf = tf.create_workflow(id="par").parallel([gate("p1", calls), gate("p2", calls)]).commit()
    run = await wf.create_run()
    result = await run.start(input_data=4)
    assert result.status == "suspended"
    assert sorted(result.suspended) == [["p1"], ["p2"]]
    assert result.suspend_payload == {"p1": {"ask": "p1"}, "p2": {"ask": "p2"}}


async def test_parallel_two_suspended_branches_need_two_resumes(rt: Any) -> None:
    calls: list[Call] = []
    after_inputs: list[Any] = []

    async def after(ctx: tf.StepContext) -> str:
        after_inputs.append(ctx.input_data)
        return "done"

    wf = (
        tf.create_workflow(id="par2")
        .parallel([gate("p1", calls), gate("p2", calls)])
        .then(tf.create_step(id="after", execute=after))
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=4)
    first = await run.resume(resume_data={"r": 1}, step="p1")
    assert first.status == "suspended"
    assert first.suspended == [["p2"]]
    assert first.steps["p1"].status == "success"
    assert after_inputs == []
    second = await run.resume(resume_data={"r": 2}, step="p2")
    assert second.status == "success"
    assert after_inputs == [{"p1": 4, "p2": 4}]
    assert second.result == "done"


async def test_parallel_resume_reruns_only_the_resumed_branch(rt: Any) -> None:
    calls: list[Call] = []
    log: list[str] = []
    wf = tf.create_workflow(id="par3").parallel([gate("p1", calls), adder("ok", 1, log)]).commit()
    run = await wf.create_run()
    await run.start(input_data=4)
    result = await run.resume(resume_data={"r": 1})
    assert result.status == "success"
    assert result.result == {"p1": 4, "ok": 5}
    assert log == ["ok"]
    assert [c.step for c in calls] == ["p1", "p1"]


async def test_parallel_step_execution_path_lists_each_step_once(rt: Any) -> None:
    calls: list[Call] = []
    log: list[str] = []
    wf = (
        tf.create_workflow(id="parpath")
        .parallel([gate("p1", calls), gate("p2", calls)])
        .then(adder("after", 0, log))
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=0)
    await run.resume(resume_data={"r": 1}, step="p2")
    result = await run.resume(resume_data={"r": 2}, step="p1")
    path = result.step_execution_path
    assert sorted(path[:2]) == ["p1", "p2"]
    assert path[2:] == ["after"]


# --------------------------------------------------------------------------- branch


async def test_branch_resume_does_not_reevaluate_conditions(rt: Any) -> None:
    calls: list[Call] = []
    log: list[str] = []
    evaluated: list[str] = []

    def yes(ctx: Any) -> bool:
        evaluated.append("yes")
        return True

    async def no(ctx: Any) -> bool:
        evaluated.append("no")
        return False

    wf = (
        tf.create_workflow(id="br")
        .branch([(yes, gate("g", calls)), (no, adder("never", 1, log))])
        .commit()
    )
    run = await wf.create_run()
    started = await run.start(input_data=9)
    assert started.suspended == [["g"]]
    assert sorted(evaluated) == ["no", "yes"]
    result = await run.resume(resume_data={"r": 1})
    assert result.status == "success"
    assert result.result == {"g": 9}
    assert sorted(evaluated) == ["no", "yes"]
    assert log == []
    assert "never" not in result.steps


async def test_branch_with_two_suspended_branches_resumes_one_at_a_time(rt: Any) -> None:
    calls: list[Call] = []
    evaluations: list[int] = []

    def always(ctx: Any) -> bool:
        evaluations.append(1)
        return True

    wf = (
        tf.create_workflow(id="br2")
        .branch([(always, gate("b1", calls)), (always, gate("b2", calls))])
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=1)
    first = await run.resume(resume_data={"r": 1}, step="b2")
    assert first.status == "suspended"
    assert first.suspended == [["b1"]]
    second = await run.resume(resume_data={"r": 2}, step="b1")
    assert second.status == "success"
    assert second.result == {"b1": 1, "b2": 1}
    assert len(evaluations) == 2


# --------------------------------------------------------------------------- loops


def suspending_increment(seen: list[tuple[int, Any, Any]]) -> Any:
    """Suspends on every fresh iteration; once resumed returns ``{"value": value + 1}``.
    Records (input value, resume data, ctx.iteration_count)."""

    async def execute(ctx: tf.StepContext) -> Any:
        value = ctx.input_data["value"]
        seen.append((value, ctx.resume_data, ctx.iteration_count))
        if ctx.resume_data is None:
            return await ctx.suspend({"value": value})
        return {"value": value + 1}

    return tf.create_step(id="inc", execute=execute)


async def test_dountil_body_suspends_each_iteration(rt: Any) -> None:
    seen: list[tuple[int, Any, Any]] = []
    cond_counts: list[int] = []

    def done(ctx: Any) -> bool:
        cond_counts.append(ctx.iteration_count)
        return bool(ctx.input_data["value"] >= 3)

    wf = tf.create_workflow(id="loop").dountil(suspending_increment(seen), done).commit()
    run = await wf.create_run()
    result = await run.start(input_data={"value": 0})
    statuses = [result.status]
    payloads = [result.suspend_payload]
    while result.status == "suspended" and len(statuses) < 10:
        assert result.suspended == [["inc"]]
        result = await run.resume(resume_data={"go": True})
        statuses.append(result.status)
        payloads.append(result.suspend_payload)
    assert statuses == ["suspended", "suspended", "suspended", "success"]
    assert result.result == {"value": 3}
    assert [v for v, r, _ in seen if r is not None] == [0, 1, 2]
    assert payloads[:3] == [{"inc": {"value": 0}}, {"inc": {"value": 1}}, {"inc": {"value": 2}}]
    assert cond_counts == [1, 2, 3]


async def test_loop_iteration_count_carries_on_across_resume(rt: Any) -> None:
    seen: list[tuple[int, Any, Any]] = []

    def keep_going(ctx: Any) -> bool:
        return bool(ctx.input_data["value"] < 2)

    wf = tf.create_workflow(id="loop2").dowhile(suspending_increment(seen), keep_going).commit()
    run = await wf.create_run()
    await run.start(input_data={"value": 0})
    await run.resume(resume_data={"go": 1})
    final = await run.resume(resume_data={"go": 2})
    assert final.status == "success"
    assert final.result == {"value": 2}
    assert [(v, it) for v, r, it in seen if r is not None] == [(0, 1), (1, 2)]
    assert [(v, it) for v, r, it in seen if r is None] == [(0, 1), (1, 2)]


async def as_previous_version_stored_it(rt: Any, run_id: str, step_id: str) -> None:
    """Rewrite a stored suspended run as trioflow stored it before engine metadata was
    camelCased: the loop count under ``iteration_count``."""
    snapshot = await rt.storage.load_snapshot(run_id)
    steps = dict(snapshot.steps)
    record = dict(steps[step_id])
    metadata = dict(record["metadata"])
    metadata["iteration_count"] = metadata.pop("iterationCount")
    steps[step_id] = {**record, "metadata": metadata}
    saved = await rt.storage.save_snapshot(
        attrs.evolve(snapshot, steps=steps), expected_status=tf.RunStatus.SUSPENDED
    )
    assert saved


async def test_a_loop_stored_with_iteration_count_resumes_counting(rt: Any) -> None:
    seen: list[tuple[int, Any, Any]] = []

    def keep_going(ctx: Any) -> bool:
        return bool(ctx.input_data["value"] < 2)

    wf = tf.create_workflow(id="loop2").dowhile(suspending_increment(seen), keep_going).commit()
    run = await wf.create_run()
    await run.start(input_data={"value": 0})
    second = await run.resume(resume_data={"go": 1})
    assert second.steps["inc"].metadata == {"iterationCount": 2}
    await as_previous_version_stored_it(rt, run.run_id, "inc")
    # The public state of an old stored run names the count as today's does.
    state = await rt.get_run_state(run.run_id)
    assert state.steps["inc"].metadata == {"iterationCount": 2}
    final = await run.resume(resume_data={"go": 2})
    assert final.status == "success"
    assert [(v, it) for v, r, it in seen if r is not None] == [(0, 1), (1, 2)]
    assert final.steps["inc"].metadata == {"iterationCount": 2}


async def test_a_nested_loop_body_stored_by_the_previous_version_resumes(rt: Any) -> None:
    # A nested workflow's stored result keeps its bookkeeping (its header) beside the loop
    # count; a run stored with the old count name continues at the right iteration and
    # shows neither the bookkeeping nor the old name.
    async def approve(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"value": ctx.input_data})
        return ctx.input_data + 1

    inner = tf.create_workflow(id="inner").then(tf.create_step(id="approve", execute=approve))
    wf = (
        tf.create_workflow(id="wf")
        .dowhile(inner.commit(), lambda ctx: ctx.iteration_count < 2)
        .commit()
    )
    run = await wf.create_run()
    await run.start(input_data=1)
    second = await run.resume(resume_data={"ok": True})
    assert second.status == "suspended"
    assert second.steps["inner"].metadata == {"iterationCount": 2}
    await as_previous_version_stored_it(rt, run.run_id, "inner")
    stored = (await rt.storage.load_snapshot(run.run_id)).steps["inner"]["metadata"]
    assert set(stored) == {"nested", "iteration_count"}
    final = await run.resume(resume_data={"ok": True})
    # Read as iteration 1, the loop would run a third time and suspend again.
    assert final.status == "success"
    assert final.result == 3
    assert final.steps["inner"].metadata == {"iterationCount": 2}


async def test_suspend_data_on_resume_is_the_current_iterations_payload(rt: Any) -> None:
    seen: list[Any] = []

    async def execute(ctx: tf.StepContext) -> Any:
        value = ctx.input_data
        if ctx.resume_data is None:
            return await ctx.suspend({"at": value})
        seen.append(ctx.suspend_data)
        return value + 1

    def done(ctx: Any) -> bool:
        return bool(ctx.input_data >= 2)

    step = tf.create_step(id="s", execute=execute)
    run = await tf.create_workflow(id="sd").dountil(step, done).commit().create_run()
    await run.start(input_data=0)
    await run.resume(resume_data={"go": 1})
    result = await run.resume(resume_data={"go": 2})
    assert result.status == "success"
    assert result.result == 2
    assert seen == [{"at": 0}, {"at": 1}]


# --------------------------------------------------------------------------- schemas


async def test_resume_data_is_structured_by_resume_schema(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("sch", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    await run.resume(resume_data={"approved": True, "extra": "ignored"})
    assert resumed(calls)[0].resume == Approval(approved=True, by="unknown")


async def test_resume_schema_defaults_fill_empty_resume_data(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("defaults", gate("g", calls, resume_schema=Review)).create_run()
    await run.start(input_data=0)
    result = await run.resume(resume_data={})
    assert result.status == "success"
    assert resumed(calls)[0].resume == Review(approved=False, by="nobody")


async def test_invalid_resume_data_raises_validation_error(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("bad", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    with pytest.raises(tf.ValidationError) as info:
        await run.resume(resume_data={"approved": "yes"})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, tf.TrioflowError)
    message = str(info.value)
    assert message.startswith("Invalid resume data:")
    assert "\n- approved: expected bool" in message


async def test_invalid_resume_data_lists_every_failing_path(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("bad2", gate("g", calls, resume_schema=Decision)).create_run()
    await run.start(input_data=0)
    with pytest.raises(tf.ValidationError) as info:
        await run.resume(resume_data={"approved": "yes", "level": "high"})
    message = str(info.value)
    assert "\n- approved: " in message
    assert "\n- level: " in message
    assert message.count("\n- ") == 2
    assert sorted(path for path, _msg in info.value.errors) == ["approved", "level"]
    assert all(isinstance(msg, str) and msg for _path, msg in info.value.errors)


async def test_missing_required_resume_field_is_reported(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("missing", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    with pytest.raises(tf.ValidationError) as info:
        await run.resume(resume_data={"by": "ann"})
    assert [path for path, _ in info.value.errors] == ["approved"]


async def test_invalid_resume_leaves_run_suspended_and_valid_resume_succeeds(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("retry", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    with pytest.raises(tf.ValidationError):
        await run.resume(resume_data={"approved": 3})
    assert len(calls) == 1  # the step was not run again
    assert run.status == "suspended"
    state = await rt.get_run_state(run.run_id)
    assert state.status == "suspended"
    assert state.suspended == [["g"]]
    result = await run.resume(resume_data={"approved": True, "by": "ann"})
    assert result.status == "success"
    assert resumed(calls)[0].resume == Approval(approved=True, by="ann")


async def test_invalid_input_data_raises_before_anything_runs(rt: Any) -> None:
    log: list[str] = []

    async def record(ctx: tf.StepContext) -> int:
        log.append("ran")
        return int(ctx.input_data.amount)

    wf = (
        tf.create_workflow(id="inp", input_schema=Order)
        .then(tf.create_step(id="s", execute=record, input_schema=Order))
        .commit()
    )
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data={"id": "o1", "amount": "5"})
    message = str(info.value)
    assert message.startswith("Invalid input data:")
    assert "\n- amount: " in message
    assert log == []
    assert run.status == "pending"
    result = await run.start(input_data={"id": "o1", "amount": 5})
    assert result.status == "success"
    assert result.result == 5
    assert log == ["ran"]


async def test_invalid_initial_state_raises(rt: Any) -> None:
    log: list[str] = []
    wf = tf.create_workflow(id="st", state_schema=Counter).then(adder("a", 1, log)).commit()
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=1, initial_state={"count": "many"})
    message = str(info.value)
    assert message.startswith("Invalid initial state:")
    assert "\n- count: " in message
    assert [p for p, _ in info.value.errors] == ["count"]
    assert log == []
    assert run.status == "pending"


@pytest.mark.parametrize(
    ("schema", "value", "path"),
    [
        pytest.param(Num, {"n": "5"}, "n", id="str-is-not-int"),
        pytest.param(Num, {"n": 1.5}, "n", id="fractional-float-is-not-int"),
        pytest.param(Flag, {"on": "true"}, "on", id="str-is-not-bool"),
    ],
)
async def test_no_lossy_coercion(rt: Any, schema: type, value: dict[str, Any], path: str) -> None:
    log: list[str] = []
    wf = tf.create_workflow(id="coerce", input_schema=schema).then(adder("a", 0, log)).commit()
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=value)
    assert [p for p, _ in info.value.errors] == [path]
    assert log == []


@pytest.mark.parametrize(
    ("schema", "value", "path"),
    [
        pytest.param(
            Basket, {"items": [{"x": 1}, {"x": 2}, {"x": "three"}]}, "items[2].x", id="list-index"
        ),
        pytest.param(Outer, {"a": {"b": "no"}}, "a.b", id="attribute"),
    ],
)
async def test_nested_paths_in_validation_messages(
    rt: Any, schema: type, value: dict[str, Any], path: str
) -> None:
    wf = tf.create_workflow(id="paths", input_schema=schema).then(adder("a", 0, [])).commit()
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError) as info:
        await run.start(input_data=value)
    assert [p for p, _ in info.value.errors] == [path]
    assert f"\n- {path}: " in str(info.value)


async def test_invalid_suspend_payload_fails_the_step(rt: Any) -> None:
    raised: list[BaseException] = []

    async def execute(ctx: tf.StepContext) -> Any:
        try:
            return await ctx.suspend({"reason": "check", "level": "high"})
        except tf.ValidationError as exc:
            raised.append(exc)
            raise

    wf = chain("susp", tf.create_step(id="s", execute=execute, suspend_schema=Reason))
    run = await wf.create_run()
    result = await run.start(input_data=0)
    assert result.status == "failed"
    assert result.steps["s"].status == "failed"
    [exc] = raised
    assert result.error is exc
    assert str(exc).startswith("Invalid suspend data:")
    assert "\n- level: " in str(exc)
    assert result.suspended == []


async def test_valid_suspend_payload_passes_suspend_schema(rt: Any) -> None:
    async def execute(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"reason": "check", "level": 2})
        return "ok"

    wf = chain("susp2", tf.create_step(id="s", execute=execute, suspend_schema=Reason))
    run = await wf.create_run()
    result = await run.start(input_data=0)
    assert result.status == "suspended"
    assert result.suspended == [["s"]]


async def test_resumed_step_gets_structured_input_and_state_from_storage() -> None:
    storage = tf.MemoryStorage()
    seen: list[Any] = []

    async def check(ctx: tf.StepContext) -> Any:
        seen.append((ctx.input_data, ctx.state, ctx.get_init_data()))
        if ctx.resume_data is None:
            return await ctx.suspend({"reason": "needs approval"})
        return {"approved": ctx.resume_data.approved}

    def build() -> Any:
        step = tf.create_step(
            id="check",
            execute=check,
            input_schema=Order,
            resume_schema=Approval,
            state_schema=Counter,
        )
        return (
            tf.create_workflow(id="orders", input_schema=Order, state_schema=Counter)
            .then(step)
            .commit()
        )

    async with tf.open_runtime(storage=storage):
        run = await build().create_run()
        await run.start(input_data={"id": "o1", "amount": 5}, initial_state={"count": 3})
        run_id = run.run_id
    async with tf.open_runtime(storage=storage):
        bound = await build().create_run(run_id=run_id)
        result = await bound.resume(resume_data={"approved": True})
    assert result.status == "success"
    assert result.result == {"approved": True}
    assert result.input == Order(id="o1", amount=5)
    expected = (Order(id="o1", amount=5), Counter(count=3), Order(id="o1", amount=5))
    assert seen == [expected, expected]


async def test_rejected_resume_leaves_stored_run_unchanged(rt: Any) -> None:
    calls: list[Call] = []
    run = await chain("same", gate("g", calls, resume_schema=Approval)).create_run()
    await run.start(input_data=0)
    before = await rt.get_run_state(run.run_id)
    with pytest.raises(tf.ValidationError):
        await run.resume(resume_data={"approved": None})
    after = await rt.get_run_state(run.run_id)
    assert after == before


# --------------------------------------------------------------------------- context after resume


async def test_state_from_before_suspension_is_visible_after_resume(rt: Any) -> None:
    seen: list[Any] = []

    async def set_x(ctx: tf.StepContext) -> int:
        ctx.set_state({"x": 1})
        return 0

    async def suspender(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            ctx.set_state({"y": 2})  # kept: the step suspends, it does not fail
            return await ctx.suspend()
        seen.append(dict(ctx.state))
        return 0

    async def last(ctx: tf.StepContext) -> Any:
        seen.append(dict(ctx.state))
        return "end"

    wf = chain(
        "state",
        tf.create_step(id="a", execute=set_x),
        tf.create_step(id="b", execute=suspender),
        tf.create_step(id="c", execute=last),
    )
    run = await wf.create_run()
    await run.start(input_data=0, initial_state={"w": 0})
    result = await run.resume(resume_data={"go": 1})
    assert seen == [{"w": 0, "x": 1, "y": 2}, {"w": 0, "x": 1, "y": 2}]
    assert result.state == {"w": 0, "x": 1, "y": 2}


async def test_request_context_is_persisted_across_suspension(rt: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def writer(ctx: tf.StepContext) -> int:
        ctx.request_context["set_by_step"] = "a"
        return 0

    async def suspender(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend()
        seen.append(dict(ctx.request_context))
        return 0

    wf = chain(
        "rc",
        tf.create_step(id="a", execute=writer),
        tf.create_step(id="b", execute=suspender),
    )
    run = await wf.create_run()
    await run.start(input_data=0, request_context={"user": "ann"})
    await run.resume(resume_data={"go": 1})
    assert seen == [{"user": "ann", "set_by_step": "a"}]


async def test_resume_request_context_merges_over_persisted_one(rt: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def suspender(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend()
        seen.append(dict(ctx.request_context))
        return 0

    run = await chain("rcmerge", tf.create_step(id="b", execute=suspender)).create_run()
    await run.start(input_data=0, request_context={"user": "ann", "role": "viewer"})
    await run.resume(resume_data={"go": 1}, request_context={"role": "admin", "extra": 1})
    assert seen == [{"user": "ann", "role": "admin", "extra": 1}]


async def test_earlier_step_results_and_init_data_visible_after_resume(rt: Any) -> None:
    seen: list[Any] = []
    first = adder("first", 5, [])

    async def suspender(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend()
        seen.append((ctx.get_step_result(first), ctx.get_step_result("first"), ctx.get_init_data()))
        return 0

    run = await chain("gsr", first, tf.create_step(id="b", execute=suspender)).create_run()
    await run.start(input_data=10)
    result = await run.resume(resume_data={"go": 1})
    assert seen == [(15, 15, 10)]
    assert result.input == 10
    assert result.steps["first"].output == 15


async def test_step_execution_path_lists_each_step_once(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    result = await run.resume(resume_data={"ok": True})
    assert result.step_execution_path == ["a", "gate", "c"]


async def test_resume_in_a_new_runtime_sharing_storage() -> None:
    storage = tf.MemoryStorage()
    calls: list[Call] = []
    log: list[str] = []
    seen_state: list[Any] = []

    async def tail(ctx: tf.StepContext) -> Any:
        seen_state.append((dict(ctx.state), dict(ctx.request_context), ctx.get_step_result("a")))
        return "end"

    def build() -> Any:
        return chain(
            "durable",
            adder("a", 1, log),
            gate("gate", calls),
            tf.create_step(id="tail", execute=tail),
        )

    async with tf.open_runtime(storage=storage):
        run = await build().create_run()
        first = await run.start(
            input_data=1, initial_state={"k": "v"}, request_context={"user": "ann"}
        )
        assert first.status == "suspended"
        run_id = run.run_id

    async with tf.open_runtime(storage=storage):
        bound = await build().create_run(run_id=run_id)
        assert bound.run_id == run_id
        assert bound.status == "suspended"
        result = await bound.resume(resume_data={"ok": True})
    assert result.status == "success"
    assert result.result == "end"
    assert log == ["a"]
    assert [(c.input, c.resume) for c in resumed(calls)] == [(2, {"ok": True})]
    assert seen_state == [({"k": "v"}, {"user": "ann"}, 2)]


# --------------------------------------------------------------------------- errors


async def test_resume_of_finished_run_raises_not_suspended(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    await run.resume(resume_data={"ok": True})
    with pytest.raises(tf.NotSuspendedError, match="This workflow run was not suspended"):
        await run.resume(resume_data={"ok": True})


async def test_resume_of_failed_run_raises_not_suspended(rt: Any) -> None:
    async def boom(ctx: tf.StepContext) -> None:
        raise RuntimeError("boom")

    run = await chain("fail", tf.create_step(id="s", execute=boom)).create_run()
    result = await run.start(input_data=0)
    assert result.status == "failed"
    with pytest.raises(tf.NotSuspendedError):
        await run.resume(resume_data={"x": 1})


async def test_resume_of_canceled_suspended_run_raises_not_suspended(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls = cr.run, cr.calls
    await run.cancel()
    assert (await rt.get_run_state(run.run_id)).status == "canceled"
    with pytest.raises(tf.NotSuspendedError):
        await run.resume(resume_data={"ok": True})
    assert len(calls) == 1


async def test_resume_of_step_that_is_not_suspended(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls = cr.run, cr.calls
    with pytest.raises(tf.StepNotSuspendedError) as info:
        await run.resume(resume_data={"ok": True}, step="a")
    assert "gate" in str(info.value)
    assert len(calls) == 1
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_resume_of_unknown_step_id(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    with pytest.raises(tf.StepNotSuspendedError, match="gate"):
        await run.resume(resume_data={"ok": True}, step="no-such-step")


async def test_resume_without_step_when_several_are_suspended(rt: Any) -> None:
    calls: list[Call] = []
    wf = tf.create_workflow(id="multi").parallel([gate("p1", calls), gate("p2", calls)]).commit()
    run = await wf.create_run()
    await run.start(input_data=0)
    with pytest.raises(tf.MultipleSuspendedStepsError) as info:
        await run.resume(resume_data={"r": 1})
    assert "p1" in str(info.value)
    assert "p2" in str(info.value)
    assert len(calls) == 2
    assert run.status == "suspended"


async def test_start_twice_raises_run_already_started(rt: Any) -> None:
    log: list[str] = []
    run = await chain("twice", adder("a", 1, log)).create_run()
    await run.start(input_data=1)
    with pytest.raises(tf.RunAlreadyStartedError):
        await run.start(input_data=1)
    assert log == ["a"]


async def test_start_of_suspended_run_raises_run_already_started(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls, log = cr.run, cr.calls, cr.log
    with pytest.raises(tf.RunAlreadyStartedError):
        await run.start(input_data=1)
    assert log == ["a"]
    assert len(calls) == 1
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_resume_of_deleted_run_raises_snapshot_not_found(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls = cr.run, cr.calls
    await rt.delete_run(run.run_id)
    with pytest.raises(tf.SnapshotNotFoundError):
        await run.resume(resume_data={"ok": True})
    with pytest.raises(tf.SnapshotNotFoundError):
        await rt.get_run_state(run.run_id)
    assert len(calls) == 1


async def test_get_run_state_of_unknown_run_raises_snapshot_not_found(rt: Any) -> None:
    with pytest.raises(tf.SnapshotNotFoundError):
        await rt.get_run_state("no-such-run")


async def _concurrent_resumes(first: Any, second: Any, release: trio.Event) -> list[str]:
    outcomes: list[str] = []

    async def attempt(run: Any) -> None:
        try:
            result = await run.resume(resume_data={"go": True})
        except tf.ResumeAlreadyClaimedError:
            outcomes.append("claimed")
        else:
            outcomes.append(str(result.status))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, first)
        nursery.start_soon(attempt, second)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    return outcomes


def blocking_workflow(release: trio.Event, log: list[str]) -> Any:
    async def slow(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend()
        log.append("resumed")
        await release.wait()
        return "released"

    async def downstream(ctx: tf.StepContext) -> Any:
        log.append("downstream")
        return ctx.input_data

    return chain(
        "claim",
        tf.create_step(id="slow", execute=slow),
        tf.create_step(id="down", execute=downstream),
    )


async def test_concurrent_resume_of_one_run_object_one_wins(rt: Any) -> None:
    release = trio.Event()
    log: list[str] = []
    run = await blocking_workflow(release, log).create_run()
    await run.start(input_data=0)
    outcomes = await _concurrent_resumes(run, run, release)
    assert sorted(outcomes) == ["claimed", "success"]
    assert log == ["resumed", "downstream"]


async def test_concurrent_resume_through_two_bound_runs_one_wins(rt: Any) -> None:
    release = trio.Event()
    log: list[str] = []
    wf = blocking_workflow(release, log)
    run = await wf.create_run()
    await run.start(input_data=0)
    other = await wf.create_run(run_id=run.run_id)
    outcomes = await _concurrent_resumes(run, other, release)
    assert sorted(outcomes) == ["claimed", "success"]
    assert log == ["resumed", "downstream"]
    assert (await rt.get_run_state(run.run_id)).status == "success"


async def test_concurrent_resume_across_runtimes_sharing_storage_one_wins() -> None:
    storage = tf.MemoryStorage()
    release = trio.Event()
    log: list[str] = []
    wf = blocking_workflow(release, log)
    async with tf.open_runtime(storage=storage) as rt1, tf.open_runtime(storage=storage) as rt2:
        run = await rt1.create_run(wf)
        await run.start(input_data=0)
        other = await rt2.create_run(wf, run_id=run.run_id)
        assert other.status == "suspended"
        outcomes = await _concurrent_resumes(run, other, release)
        final = await rt2.get_run_state(run.run_id)
    assert sorted(outcomes) == ["claimed", "success"]
    assert log == ["resumed", "downstream"]
    assert final.status == "success"


async def test_create_run_with_existing_id_binds_to_stored_run(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls, log = cr.run, cr.calls, cr.log
    calls_before = len(calls)
    # A second Run object for the same stored run, made from a fresh workflow definition.
    new_calls: list[Call] = []
    again = chain("plain", adder("a", 1, log), gate("gate", new_calls), adder("c", 10, log))
    bound = await again.create_run(run_id=run.run_id)
    assert bound.run_id == run.run_id
    assert bound.workflow_id == "plain"
    assert bound.status == "suspended"
    result = await bound.resume(resume_data={"ok": True})
    assert result.status == "success"
    assert result.result == 12
    assert len(calls) == calls_before
    assert [(c.input, c.resume) for c in new_calls] == [(2, {"ok": True})]


async def test_get_run_state_of_suspended_run(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    state = await rt.get_run_state(run.run_id)
    assert state.run_id == run.run_id
    assert state.workflow_id == "plain"
    assert state.status == "suspended"
    assert state.input == 1
    assert state.state == {}
    assert state.suspended == [["gate"]]
    assert set(state.steps) == {"a", "gate"}
    assert state.steps["a"].output == 2
    assert state.steps["gate"].status == "suspended"
    assert state.result is None
    assert state.error is None
    assert state.created_at <= state.updated_at


async def test_get_run_state_after_resume_to_success(rt: Any) -> None:
    cr = await suspended_chain_run()
    run = cr.run
    before = await rt.get_run_state(run.run_id)
    await run.resume(resume_data={"ok": True})
    state = await rt.get_run_state(run.run_id)
    assert state.status == "success"
    assert state.result == 12
    assert state.suspended == []
    assert state.steps["c"].output == 12
    assert state.created_at == before.created_at
    assert state.updated_at >= before.updated_at


async def _three_runs() -> tuple[str, str, str]:
    """run1: wf_a suspended, run2: wf_a success, run3: wf_b suspended (created in order)."""
    calls: list[Call] = []
    wf_a = chain("wf_a", gate("g", calls))
    wf_b = chain("wf_b", gate("g", calls))
    run1 = await wf_a.create_run()
    await run1.start(input_data=0)
    run2 = await wf_a.create_run()
    await run2.start(input_data=0)
    assert (await run2.resume(resume_data={"ok": 1})).status == "success"
    run3 = await wf_b.create_run()
    await run3.start(input_data=0)
    return run1.run_id, run2.run_id, run3.run_id


async def test_list_runs_filters_by_status(rt: Any) -> None:
    run1, _run2, run3 = await _three_runs()
    infos = await rt.list_runs(status="suspended")
    assert {i.run_id for i in infos} == {run1, run3}
    assert all(i.status == "suspended" for i in infos)


async def test_list_runs_filters_by_workflow_id(rt: Any) -> None:
    run1, run2, _run3 = await _three_runs()
    infos = await rt.list_runs(workflow_id="wf_a")
    assert {i.run_id for i in infos} == {run1, run2}
    assert {i.workflow_id for i in infos} == {"wf_a"}
    both = await rt.list_runs(workflow_id="wf_a", status="success")
    assert [i.run_id for i in both] == [run2]


async def test_list_runs_newest_first(rt: Any) -> None:
    run1, run2, run3 = await _three_runs()
    infos = await rt.list_runs()
    assert [i.run_id for i in infos] == [run3, run2, run1]
    assert infos[0].created_at >= infos[-1].created_at


async def test_restart_of_never_started_run_raises_run_not_active(rt: Any) -> None:
    log: list[str] = []
    run = await chain("never", adder("a", 1, log)).create_run()
    with pytest.raises(tf.RunNotActiveError):
        await run.restart()
    assert log == []


async def test_restart_of_suspended_run_raises_run_not_active(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls, log = cr.run, cr.calls, cr.log
    with pytest.raises(tf.RunNotActiveError):
        await run.restart()
    assert len(calls) == 1
    assert log == ["a"]
    assert (await rt.get_run_state(run.run_id)).status == "suspended"


async def test_restart_of_finished_run_returns_stored_result_without_executing(rt: Any) -> None:
    cr = await suspended_chain_run()
    run, calls, log = cr.run, cr.calls, cr.log
    finished = await run.resume(resume_data={"ok": True})
    executions = (len(calls), list(log))
    again = await run.restart()
    assert again.status == "success"
    assert again.result == finished.result == 12
    assert (len(calls), log) == executions


async def test_restart_of_failed_run_returns_stored_outcome_without_executing(rt: Any) -> None:
    attempts: list[int] = []

    async def boom(ctx: tf.StepContext) -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    run = await chain("failrestart", tf.create_step(id="s", execute=boom)).create_run()
    assert (await run.start(input_data=0)).status == "failed"
    again = await run.restart()
    assert again.status == "failed"
    assert again.error is not None
    assert "boom" in str(getattr(again.error, "message", again.error))
    assert attempts == [1]


async def test_restart_through_bound_run_of_finished_run(rt: Any) -> None:
    cr = await suspended_chain_run()
    await cr.run.resume(resume_data={"ok": True})
    executions = (len(cr.calls), list(cr.log))
    wf = chain("plain", adder("a", 1, cr.log), gate("gate", cr.calls), adder("c", 10, cr.log))
    bound = await wf.create_run(run_id=cr.run.run_id)
    assert bound.status == "success"
    again = await bound.restart()
    assert again.status == "success"
    assert again.result == 12
    assert (len(cr.calls), cr.log) == executions


@pytest.mark.parametrize(
    "error",
    [
        "ValidationError",
        "NotSuspendedError",
        "StepNotSuspendedError",
        "MultipleSuspendedStepsError",
        "ResumeAlreadyClaimedError",
        "SnapshotNotFoundError",
        "RunAlreadyStartedError",
        "RunNotActiveError",
    ],
)
def test_resume_errors_inherit_trioflow_error(error: str) -> None:
    cls = getattr(tf, error)
    assert issubclass(cls, tf.TrioflowError)
    assert issubclass(tf.TrioflowError, Exception)


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(tf.ValidationError, ValueError)
