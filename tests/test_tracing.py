"""Tracing: `tf.TracingOptions` validation and the spans a run reports to the runtime's tracer.

Contract: SPEC §3.6 (tracing options, one root span per execution, one span per
step/parallel/branch/loop/sleep, a resumed execution continues the same trace, spans go to
the runtime's `tracer`, `trioflow.tracing.otel` maps them onto OpenTelemetry), SPEC §2
(`tracing_options` is a `tf.TracingOptions` or a dict, `result.trace_id` always set), the
`tracing_context` row of the step-context table in SPEC §1. Background:
mastra-behaviour.md §4.3 (span kinds `workflow_run`, `workflow_step`, `workflow_parallel`,
`workflow_conditional`, `workflow_loop`, `workflow_sleep`; tags/metadata on the root span
only; the stored tracing context lets a resumed run continue the same trace).

Spans are collected with `trioflow.tracing.InMemoryTracer` (start order in `spans`, end
order in `ended`); the OpenTelemetry tests export through the SDK's in-memory exporter.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trioflow as tf
from trioflow.tracing import InMemoryTracer, Span
from trioflow.tracing.otel import OpenTelemetryTracer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tracer() -> InMemoryTracer:
    return InMemoryTracer()


@pytest.fixture
async def rt(tracer: InMemoryTracer) -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime(tracer=tracer) as runtime:
        yield runtime


def inc(step_id: str, seen: dict[str, list[Span]] | None = None) -> tf.Step:
    """A step returning ``input + 1``; records ``ctx.tracing_context`` into ``seen``."""

    async def execute(ctx: tf.StepContext) -> int:
        if seen is not None:
            seen.setdefault(step_id, []).append(ctx.tracing_context)
        return int(ctx.input_data) + 1

    return tf.create_step(id=step_id, execute=execute)


def gate(step_id: str) -> tf.Step:
    """Suspends; once resumed returns ``input + resume_data``."""

    async def execute(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"ask": step_id})
        return int(ctx.input_data) + int(ctx.resume_data)

    return tf.create_step(id=step_id, execute=execute)


class Boom(Exception):
    pass


def failing(step_id: str) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> int:
        raise Boom(f"{step_id} exploded")

    return tf.create_step(id=step_id, execute=execute)


def roots(tracer: InMemoryTracer) -> list[Span]:
    return tracer.by_kind("workflow_run")


def only_root(tracer: InMemoryTracer) -> Span:
    found = roots(tracer)
    assert len(found) == 1, found
    return found[0]


def only(spans: list[Span]) -> Span:
    assert len(spans) == 1, spans
    return spans[0]


def span_by_id(tracer: InMemoryTracer, span_id: str) -> Span:
    return only([s for s in tracer.spans if s.span_id == span_id])


def assert_properly_nested(tracer: InMemoryTracer) -> None:
    """Every span started is ended exactly once, after all of its children."""
    ended_ids = [s.span_id for s in tracer.ended]
    assert sorted(ended_ids) == sorted(s.span_id for s in tracer.spans)
    position = {span_id: i for i, span_id in enumerate(ended_ids)}
    for span in tracer.spans:
        for child in tracer.children_of(span):
            assert position[child.span_id] < position[span.span_id], (child, span)


async def run_once(wf: tf.Workflow, input_data: Any = 0, **kwargs: Any) -> tf.WorkflowResult:
    run = await wf.create_run()
    return await run.start(input_data=input_data, **kwargs)


# --------------------------------------------------------------------------- TracingOptions


@pytest.mark.parametrize("trace_id", ["a", "0", "ABCDEF", "aBcD01", "f" * 32, TRACE_ID])
def test_trace_id_of_1_to_32_hex_chars_is_accepted(trace_id: str) -> None:
    assert tf.TracingOptions(trace_id=trace_id).trace_id == trace_id


@pytest.mark.parametrize("trace_id", ["", "g", "f" * 33, "0x12", " ab", "ab ", "12-34", "zz", "é"])
def test_trace_id_that_is_not_1_to_32_hex_chars_is_a_value_error(trace_id: str) -> None:
    with pytest.raises(ValueError, match="trace_id"):
        tf.TracingOptions(trace_id=trace_id)


@pytest.mark.parametrize("span_id", ["1", "ABC", PARENT_SPAN_ID, "f" * 16])
def test_parent_span_id_of_1_to_16_hex_chars_is_accepted(span_id: str) -> None:
    assert tf.TracingOptions(parent_span_id=span_id).parent_span_id == span_id


@pytest.mark.parametrize("span_id", ["", "f" * 17, TRACE_ID, "xyz", "0x1", "1 2"])
def test_parent_span_id_that_is_not_1_to_16_hex_chars_is_a_value_error(span_id: str) -> None:
    with pytest.raises(ValueError, match="parent_span_id"):
        tf.TracingOptions(parent_span_id=span_id)


def test_tracing_options_defaults_are_empty() -> None:
    options = tf.TracingOptions()
    assert options.metadata is None
    assert tuple(options.request_context_keys) == ()
    assert options.trace_id is None
    assert options.parent_span_id is None
    assert tuple(options.tags) == ()


async def test_dict_tracing_options_are_accepted_by_start(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    result = await run_once(wf, tracing_options={"trace_id": TRACE_ID, "tags": ["x"]})
    assert result.status == "success"
    assert result.trace_id == TRACE_ID


async def test_dict_tracing_options_with_bad_trace_id_fail_before_the_run_starts(
    rt: tf.Runtime,
) -> None:
    ran: list[str] = []

    async def execute(ctx: tf.StepContext) -> int:
        ran.append("a")
        return 1

    wf = tf.create_workflow(id="w").then(tf.create_step(id="a", execute=execute)).commit()
    run = await wf.create_run()
    with pytest.raises(ValueError, match="trace_id"):
        await run.start(input_data=0, tracing_options={"trace_id": "not-hex"})
    assert ran == []
    assert run.status == "pending"
    # The run was left untouched: it can still start.
    result = await run.start(input_data=0)
    assert result.status == "success"
    assert ran == ["a"]


@pytest.mark.parametrize("key", ["bogus", "root_span_name", "rootSpanName", "TraceId"])
async def test_dict_tracing_options_with_unknown_key_are_rejected(rt: tf.Runtime, key: str) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    run = await wf.create_run()
    with pytest.raises((ValueError, TypeError), match=key):
        await run.start(input_data=0, tracing_options={key: "ab"})
    assert run.status == "pending"


async def test_generated_trace_ids_are_hex_and_differ_between_runs(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    first = await run_once(wf)
    second = await run_once(wf)
    for result in (first, second):
        assert re.fullmatch(r"[0-9a-f]{1,32}", result.trace_id), result.trace_id
    assert first.trace_id != second.trace_id


async def test_trace_id_is_set_without_a_tracer() -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    async with tf.open_runtime():
        generated = await run_once(wf)
        given = await run_once(wf, tracing_options=tf.TracingOptions(trace_id=TRACE_ID))
    assert generated.trace_id
    assert given.trace_id == TRACE_ID


# --------------------------------------------------------------------------- span tree


async def test_one_root_span_per_execution(rt: tf.Runtime, tracer: InMemoryTracer) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(inc("b")).commit()
    result = await run_once(wf)
    root = only_root(tracer)
    assert root.parent_span_id is None
    assert root.status == "success"
    assert root.ended_at is not None
    assert root.ended_at >= root.started_at
    assert "w" in root.name
    assert tracer.spans[0] is root
    assert tracer.ended[-1] is root
    assert result.trace_id == root.trace_id


async def test_every_span_shares_the_result_trace_id(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = (
        tf.create_workflow(id="w")
        .then(inc("a"))
        .parallel([inc("b"), inc("c")])
        .map(lambda ctx: ctx.input_data["b"])
        .then(inc("d"))
        .commit()
    )
    run = await wf.create_run()
    out = await run.stream(input_data=0)
    result = await out.result()
    assert result.status == "success"
    assert out.trace_id == result.trace_id
    assert len(tracer.spans) >= 6
    assert {s.trace_id for s in tracer.spans} == {result.trace_id}
    assert_properly_nested(tracer)


async def test_steps_of_a_chain_are_children_of_the_root(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    wf = tf.create_workflow(id="w").then(inc("a", seen)).then(inc("b", seen)).commit()
    await run_once(wf)
    root = only_root(tracer)
    steps = tracer.by_kind("workflow_step")
    assert [s.span_id for s in steps] == [seen["a"][0].span_id, seen["b"][0].span_id]
    assert all(s.parent_span_id == root.span_id for s in steps)
    assert all(s.status == "success" for s in steps)
    assert "a" in steps[0].name
    assert "b" in steps[1].name


async def test_step_inside_parallel_is_a_child_of_the_parallel_span(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    wf = tf.create_workflow(id="w").parallel([inc("b", seen), inc("c", seen)]).commit()
    await run_once(wf)
    root = only_root(tracer)
    parallel = only(tracer.by_kind("workflow_parallel"))
    assert parallel.parent_span_id == root.span_id
    assert parallel.status == "success"
    children = tracer.children_of(parallel)
    assert {s.span_id for s in children} == {seen["b"][0].span_id, seen["c"][0].span_id}
    assert all(s.kind == "workflow_step" for s in children)


async def test_branch_has_a_conditional_span_parenting_the_steps_that_ran(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    wf = (
        tf.create_workflow(id="w")
        .branch(
            [
                (lambda ctx: True, inc("yes", seen)),
                (lambda ctx: False, inc("no", seen)),
            ]
        )
        .commit()
    )
    result = await run_once(wf)
    assert result.status == "success"
    branch = only(tracer.by_kind("workflow_conditional"))
    assert branch.parent_span_id == only_root(tracer).span_id
    steps = tracer.by_kind("workflow_step")
    assert [s.span_id for s in steps] == [seen["yes"][0].span_id]
    assert steps[0].parent_span_id == branch.span_id
    assert "no" not in seen


@pytest.mark.parametrize("kind", ["dowhile", "dountil"])
async def test_loop_has_a_loop_span_with_one_step_span_per_iteration(
    rt: tf.Runtime, tracer: InMemoryTracer, kind: str
) -> None:
    seen: dict[str, list[Span]] = {}
    body = inc("body", seen)
    builder = tf.create_workflow(id="w")
    if kind == "dowhile":
        builder = builder.dowhile(body, lambda ctx: ctx.input_data < 3)
    else:
        builder = builder.dountil(body, lambda ctx: ctx.input_data >= 3)
    result = await run_once(builder.commit(), 0)
    assert result.result == 3
    loop = only(tracer.by_kind("workflow_loop"))
    assert loop.parent_span_id == only_root(tracer).span_id
    iterations = tracer.children_of(loop)
    assert len(iterations) == 3
    assert [s.span_id for s in iterations] == [s.span_id for s in seen["body"]]
    assert len({s.span_id for s in iterations}) == 3


async def test_sleep_has_a_sleep_span(
    rt: tf.Runtime, tracer: InMemoryTracer, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).sleep(5).then(inc("b")).commit()
    result = await run_once(wf)
    assert result.result == 2
    sleep = only(tracer.by_kind("workflow_sleep"))
    assert sleep.parent_span_id == only_root(tracer).span_id
    assert sleep.status == "success"
    assert sleep.ended_at is not None
    assert sleep.ended_at >= sleep.started_at
    # Started between the two steps, in graph order.
    assert [s.kind for s in tracer.spans] == [
        "workflow_run",
        "workflow_step",
        "workflow_sleep",
        "workflow_step",
    ]


async def test_foreach_has_a_span_with_one_step_span_per_item(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    wf = tf.create_workflow(id="w").foreach(inc("item", seen), concurrency=2).commit()
    result = await run_once(wf, [1, 2, 3])
    assert result.result == [2, 3, 4]
    foreach = only(tracer.by_kind("workflow_loop"))
    assert foreach.parent_span_id == only_root(tracer).span_id
    items = tracer.children_of(foreach)
    assert len(items) == 3
    assert {s.span_id for s in items} == {s.span_id for s in seen["item"]}
    assert all(s.kind == "workflow_step" for s in items)


async def test_nested_workflow_step_is_a_child_of_the_nested_step_span(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    inner = tf.create_workflow(id="inner").then(inc("x", seen)).then(inc("y", seen)).commit()
    wf = tf.create_workflow(id="outer").then(inc("a", seen)).then(inner).commit()
    result = await run_once(wf)
    assert result.result == 3
    root = only_root(tracer)
    nested = [s for s in tracer.children_of(root) if s.span_id != seen["a"][0].span_id]
    nested_span = only(nested)
    assert nested_span.kind == "workflow_step"
    assert "inner" in nested_span.name
    inner_ids = {seen["x"][0].span_id, seen["y"][0].span_id}
    assert {s.span_id for s in tracer.children_of(nested_span)} == inner_ids
    # One execution, one root: the nested run does not open a second workflow_run span.
    assert len(roots(tracer)) == 1


async def test_nested_workflow_inside_foreach_keeps_the_chain_of_parents(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    inner = tf.create_workflow(id="inner").then(inc("x", seen)).commit()
    wf = tf.create_workflow(id="outer").foreach(inner).commit()
    result = await run_once(wf, [10, 20])
    assert result.result == [11, 21]
    foreach = only(tracer.by_kind("workflow_loop"))
    for x_span in seen["x"]:
        nested_span = span_by_id(tracer, x_span.parent_span_id or "")
        assert nested_span.kind == "workflow_step"
        assert nested_span.parent_span_id == foreach.span_id


async def test_step_inside_parallel_inside_nested_workflow(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    inner = tf.create_workflow(id="inner").parallel([inc("p", seen), inc("q", seen)]).commit()
    wf = tf.create_workflow(id="outer").then(inner).commit()
    await run_once(wf)
    parallel = only(tracer.by_kind("workflow_parallel"))
    nested_span = span_by_id(tracer, parallel.parent_span_id or "")
    assert nested_span.kind == "workflow_step"
    assert nested_span.parent_span_id == only_root(tracer).span_id
    assert seen["p"][0].parent_span_id == parallel.span_id
    assert seen["q"][0].parent_span_id == parallel.span_id


# --------------------------------------------------------------------------- options on spans


async def test_request_context_keys_copy_dotted_values_into_root_metadata(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    await run_once(
        wf,
        request_context={"user": {"id": "u-7", "org": {"name": "acme"}}, "plan": "pro"},
        tracing_options={"request_context_keys": ["user.id", "user.org.name", "plan"]},
    )
    metadata = only_root(tracer).metadata
    assert metadata["user.id"] == "u-7"
    assert metadata["user.org.name"] == "acme"
    assert metadata["plan"] == "pro"


async def test_request_context_keys_read_values_set_on_a_request_context_object(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    context = tf.RequestContext({"tenant": {"region": "eu"}})
    await run_once(
        wf,
        request_context=context,
        tracing_options=tf.TracingOptions(request_context_keys=("tenant.region",)),
    )
    assert only_root(tracer).metadata["tenant.region"] == "eu"


async def test_metadata_and_tags_go_on_the_root_span(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    await run_once(
        wf,
        tracing_options=tf.TracingOptions(
            metadata={"release": "1.2", "attempt": 3}, tags=("prod", "nightly")
        ),
    )
    root = only_root(tracer)
    assert root.metadata["release"] == "1.2"
    assert root.metadata["attempt"] == 3
    assert tuple(root.tags) == ("prod", "nightly")


async def test_tags_and_metadata_stay_on_the_root_span_only(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).parallel([inc("b")]).commit()
    await run_once(wf, tracing_options={"metadata": {"release": "1.2"}, "tags": ["prod"]})
    others = [s for s in tracer.spans if s.kind != "workflow_run"]
    assert others
    for span in others:
        assert tuple(span.tags) == ()
        assert "release" not in span.metadata


async def test_parent_span_id_becomes_the_parent_of_the_root_span(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    result = await run_once(
        wf, tracing_options={"trace_id": TRACE_ID, "parent_span_id": PARENT_SPAN_ID}
    )
    root = only_root(tracer)
    assert root.parent_span_id == PARENT_SPAN_ID
    assert root.trace_id == TRACE_ID == result.trace_id
    step = only(tracer.by_kind("workflow_step"))
    assert step.parent_span_id == root.span_id


async def test_given_trace_id_is_used_by_every_span(rt: tf.Runtime, tracer: InMemoryTracer) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).parallel([inc("b"), inc("c")]).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=0, tracing_options=tf.TracingOptions(trace_id=TRACE_ID))
    result = await out.result()
    assert out.trace_id == result.trace_id == TRACE_ID
    assert {s.trace_id for s in tracer.spans} == {TRACE_ID}


# --------------------------------------------------------------------------- ctx.tracing_context


async def test_tracing_context_is_the_span_of_the_running_step(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    wf = tf.create_workflow(id="w").then(inc("a", seen)).then(inc("b", seen)).commit()
    await run_once(wf)
    a_span, b_span = seen["a"][0], seen["b"][0]
    assert a_span.span_id != b_span.span_id
    assert a_span in tracer.spans
    assert b_span in tracer.spans
    assert a_span.kind == b_span.kind == "workflow_step"
    assert a_span.trace_id == only_root(tracer).trace_id


async def test_tracing_context_of_concurrent_branches_does_not_leak_between_them(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    seen: dict[str, list[Span]] = {}
    both_running = trio.Event()
    arrived: list[str] = []

    def waiting(step_id: str) -> tf.Step:
        async def execute(ctx: tf.StepContext) -> str:
            arrived.append(step_id)
            if len(arrived) == 2:
                both_running.set()
            await both_running.wait()
            # Read the context after the sibling has started too.
            seen[step_id] = [ctx.tracing_context]
            return step_id

        return tf.create_step(id=step_id, execute=execute)

    wf = tf.create_workflow(id="w").parallel([waiting("b"), waiting("c")]).commit()
    await run_once(wf)
    steps = tracer.by_kind("workflow_step")
    by_name = {s.span_id: s for s in steps}
    assert seen["b"][0].span_id in by_name
    assert seen["c"][0].span_id in by_name
    assert seen["b"][0].span_id != seen["c"][0].span_id
    assert "b" in seen["b"][0].name
    assert "c" in seen["c"][0].name


# --------------------------------------------------------------------------- statuses


async def test_failing_step_marks_its_span_and_the_root_failed(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(failing("b")).commit()
    result = await run_once(wf)
    assert result.status == "failed"
    a_span, b_span = tracer.by_kind("workflow_step")
    assert a_span.status == "success"
    assert a_span.error is None
    assert b_span.status == "failed"
    assert b_span.error is not None
    assert "b exploded" in b_span.error
    root = only_root(tracer)
    assert root.status == "failed"
    assert_properly_nested(tracer)


async def test_failure_inside_parallel_marks_the_parallel_span_failed(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").parallel([inc("ok"), failing("bad")]).commit()
    result = await run_once(wf)
    assert result.status == "failed"
    assert only(tracer.by_kind("workflow_parallel")).status == "failed"
    statuses = {s.name: s.status for s in tracer.by_kind("workflow_step")}
    assert sorted(statuses.values()) == ["failed", "success"]


async def test_suspended_step_and_root_spans_say_suspended(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(gate("g")).commit()
    result = await run_once(wf)
    assert result.status == "suspended"
    assert [s.status for s in tracer.by_kind("workflow_step")] == ["success", "suspended"]
    assert only_root(tracer).status == "suspended"
    assert_properly_nested(tracer)


async def test_canceled_run_ends_its_spans_canceled(rt: tf.Runtime, tracer: InMemoryTracer) -> None:
    async def forever(ctx: tf.StepContext) -> None:
        await trio.sleep_forever()

    wf = tf.create_workflow(id="w").then(tf.create_step(id="slow", execute=forever)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=0)
    await trio.testing.wait_all_tasks_blocked()
    await run.cancel()
    result = await out.result()
    assert result.status == "canceled"
    assert only(tracer.by_kind("workflow_step")).status == "canceled"
    assert only_root(tracer).status == "canceled"
    assert_properly_nested(tracer)


# --------------------------------------------------------------------------- resume


async def test_resumed_execution_continues_the_same_trace(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(gate("g")).commit()
    run = await wf.create_run()
    first = await run.start(input_data=0)
    assert first.status == "suspended"
    first_root = only_root(tracer)
    second = await run.resume(resume_data=10)
    assert second.status == "success"
    assert second.result == 11
    assert second.trace_id == first.trace_id
    start_root, resume_root = roots(tracer)
    assert start_root is first_root
    assert resume_root.span_id != first_root.span_id
    assert resume_root.trace_id == first.trace_id
    assert resume_root.metadata["resumed"] is True
    assert resume_root.metadata["resumed_from_span_id"] == first_root.span_id
    assert resume_root.status == "success"
    assert {s.trace_id for s in tracer.spans} == {first.trace_id}


async def test_resumed_step_span_is_a_child_of_the_resumed_root(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(gate("g")).commit()
    run = await wf.create_run()
    await run.start(input_data=0)
    await run.resume(resume_data=1)
    _, resume_root = roots(tracer)
    resumed_steps = tracer.children_of(resume_root)
    assert [s.kind for s in resumed_steps] == ["workflow_step"]
    assert resumed_steps[0].status == "success"


async def test_start_root_span_is_not_marked_resumed(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(gate("g")).commit()
    await run_once(wf)
    metadata = only_root(tracer).metadata
    assert "resumed" not in metadata or metadata["resumed"] is False
    assert "resumed_from_span_id" not in metadata


async def test_each_resume_points_at_the_previous_execution_root(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(gate("g1")).then(gate("g2")).commit()
    run = await wf.create_run()
    await run.start(input_data=0)
    assert (await run.resume(resume_data=1)).status == "suspended"
    final = await run.resume(resume_data=2)
    assert final.status == "success"
    assert final.result == 3
    first, second, third = roots(tracer)
    assert second.metadata["resumed_from_span_id"] == first.span_id
    assert third.metadata["resumed_from_span_id"] == second.span_id
    assert {first.trace_id, second.trace_id, third.trace_id} == {final.trace_id}


async def test_resume_stream_keeps_the_trace_id(rt: tf.Runtime, tracer: InMemoryTracer) -> None:
    wf = tf.create_workflow(id="w").then(gate("g")).commit()
    run = await wf.create_run()
    first = await run.start(input_data=0, tracing_options={"trace_id": TRACE_ID})
    out = await run.resume_stream(resume_data=5)
    result = await out.result()
    assert first.trace_id == out.trace_id == result.trace_id == TRACE_ID
    assert {s.trace_id for s in tracer.spans} == {TRACE_ID}


async def test_resume_through_a_new_runtime_on_the_same_storage_continues_the_trace() -> None:
    storage = tf.MemoryStorage()
    wf = tf.create_workflow(id="w").then(inc("a")).then(gate("g")).commit()
    before, after = InMemoryTracer(), InMemoryTracer()
    async with tf.open_runtime(storage=storage, tracer=before):
        run = await wf.create_run()
        first = await run.start(input_data=0)
        assert first.status == "suspended"
    async with tf.open_runtime(storage=storage, tracer=after):
        again = await wf.create_run(run_id=run.run_id)
        second = await again.resume(resume_data=1)
    assert second.status == "success"
    assert second.result == 2
    assert second.trace_id == first.trace_id
    resume_root = only_root(after)
    assert resume_root.trace_id == first.trace_id
    assert resume_root.metadata["resumed"] is True
    assert resume_root.metadata["resumed_from_span_id"] == only_root(before).span_id
    assert {s.trace_id for s in after.spans} == {first.trace_id}


# --------------------------------------------------------------------------- OpenTelemetry


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def otel_rt(exporter: InMemorySpanExporter) -> AsyncIterator[tf.Runtime]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with tf.open_runtime(tracer=OpenTelemetryTracer(provider)) as runtime:
        yield runtime
    provider.shutdown()


def otel_named(spans: tuple[ReadableSpan, ...], match: Callable[[str], bool]) -> ReadableSpan:
    found = [s for s in spans if match(s.name)]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def otel_root(spans: tuple[ReadableSpan, ...], workflow_id: str) -> ReadableSpan:
    return otel_named(spans, lambda name: name.startswith("workflow run") and workflow_id in name)


def otel_step(spans: tuple[ReadableSpan, ...], step_id: str) -> ReadableSpan:
    return otel_named(
        spans, lambda name: name.startswith("workflow step") and f"'{step_id}'" in name
    )


def otel_parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def otel_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_otel_exports_a_span_per_run_and_step(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="otel-wf").then(inc("a")).then(inc("b")).commit()
    result = await run_once(wf)
    assert result.status == "success"
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    root = otel_root(spans, "otel-wf")
    a_span, b_span = otel_step(spans, "a"), otel_step(spans, "b")
    assert otel_parent_id(a_span) == otel_id(root)
    assert otel_parent_id(b_span) == otel_id(root)
    assert all(s.end_time is not None for s in spans)


async def test_otel_spans_use_the_run_trace_id(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).parallel([inc("b"), inc("c")]).commit()
    result = await run_once(wf)
    spans = exporter.get_finished_spans()
    assert len(spans) == 5
    assert {s.context.trace_id for s in spans if s.context} == {int(result.trace_id, 16)}


async def test_otel_step_inside_parallel_is_a_child_of_the_parallel_span(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").parallel([inc("b"), inc("c")]).commit()
    await run_once(wf)
    spans = exporter.get_finished_spans()
    parallel = otel_named(spans, lambda name: name.startswith("parallel"))
    assert otel_parent_id(parallel) == otel_id(otel_root(spans, "w"))
    assert otel_parent_id(otel_step(spans, "b")) == otel_id(parallel)
    assert otel_parent_id(otel_step(spans, "c")) == otel_id(parallel)


async def test_otel_nested_workflow_step_is_a_child_of_the_nested_step(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    inner = tf.create_workflow(id="inner").then(inc("x")).commit()
    wf = tf.create_workflow(id="outer").then(inner).commit()
    await run_once(wf)
    spans = exporter.get_finished_spans()
    nested = otel_step(spans, "inner")
    inner_step = otel_named(spans, lambda name: "x'" in name)
    assert otel_parent_id(nested) == otel_id(otel_root(spans, "outer"))
    assert otel_parent_id(inner_step) == otel_id(nested)


async def test_otel_given_trace_id_and_parent_span_id(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    await run_once(wf, tracing_options={"trace_id": TRACE_ID, "parent_span_id": PARENT_SPAN_ID})
    spans = exporter.get_finished_spans()
    root = otel_root(spans, "w")
    assert root.context is not None
    assert root.context.trace_id == int(TRACE_ID, 16)
    assert otel_parent_id(root) == int(PARENT_SPAN_ID, 16)
    assert otel_parent_id(otel_step(spans, "a")) == otel_id(root)


async def test_otel_failure_sets_error_status(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(failing("b")).commit()
    result = await run_once(wf)
    assert result.status == "failed"
    spans = exporter.get_finished_spans()
    assert otel_step(spans, "b").status.status_code is StatusCode.ERROR
    assert otel_root(spans, "w").status.status_code is StatusCode.ERROR
    assert otel_step(spans, "a").status.status_code is not StatusCode.ERROR


async def test_otel_success_has_no_error_status(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).sleep(0).then(inc("b")).commit()
    await run_once(wf)
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans)


async def test_otel_resumed_run_spans_share_the_trace_id(
    otel_rt: tf.Runtime, exporter: InMemorySpanExporter
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).then(gate("g")).commit()
    run = await wf.create_run()
    first = await run.start(input_data=0)
    assert first.status == "suspended"
    before = len(exporter.get_finished_spans())
    second = await run.resume(resume_data=3)
    assert second.status == "success"
    spans = exporter.get_finished_spans()
    assert len(spans) > before
    assert {s.context.trace_id for s in spans if s.context} == {int(first.trace_id, 16)}
    run_spans = [s for s in spans if s.name.startswith("workflow run")]
    assert len(run_spans) == 2
    # The suspended execution is not an error.
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans)


async def test_otel_resume_in_a_new_runtime_continues_the_trace(
    exporter: InMemorySpanExporter,
) -> None:
    storage = tf.MemoryStorage()
    wf = tf.create_workflow(id="w").then(gate("g")).commit()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with tf.open_runtime(storage=storage, tracer=OpenTelemetryTracer(provider)):
        run = await wf.create_run()
        first = await run.start(input_data=0)
    async with tf.open_runtime(storage=storage, tracer=OpenTelemetryTracer(provider)):
        again = await wf.create_run(run_id=run.run_id)
        second = await again.resume(resume_data=1)
    provider.shutdown()
    assert second.status == "success"
    spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.name.startswith("workflow run")]) == 2
    assert {s.context.trace_id for s in spans if s.context} == {int(first.trace_id, 16)}


# ------------------------------------------------- run-level tracing_context (issue 13 #11)
# Mastra 1.71's run methods take `tracingContext: {currentSpan}`: the run's root span
# becomes a child of that span, in its trace (fixtures/mastra_1_71/tracing.json lists the
# parameter names).


def external_parent() -> Span:
    return Span(
        trace_id=TRACE_ID,
        span_id=PARENT_SPAN_ID,
        parent_span_id=None,
        name="http request",
        kind="external",
        started_at=0,
    )


@pytest.mark.parametrize(
    "how", ["span", "currentSpan", "current_span", "object"], ids=lambda h: str(h)
)
async def test_tracing_context_makes_the_run_a_child_of_the_span(
    rt: tf.Runtime, tracer: InMemoryTracer, how: str
) -> None:
    parent = external_parent()
    given: Any = {
        "span": parent,
        "currentSpan": {"currentSpan": parent},
        "current_span": {"current_span": parent},
        "object": type("Ctx", (), {"current_span": parent})(),
    }[how]
    wf = tf.create_workflow(id="child").then(inc("a")).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1, tracing_context=given)
    result = await out.result()
    root = only_root(tracer)
    assert root.trace_id == parent.trace_id == result.trace_id == out.trace_id
    assert root.parent_span_id == parent.span_id
    step = only(tracer.by_kind("workflow_step"))
    assert (step.trace_id, step.parent_span_id) == (parent.trace_id, root.span_id)


async def test_a_step_starting_a_run_nests_it_under_its_own_span(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    inner = tf.create_workflow(id="inner").then(inc("x")).commit()

    async def launch(ctx: tf.StepContext) -> Any:
        run = await inner.create_run()
        result = await run.start(input_data=1, tracing_context=ctx.tracing_context)
        return result.result

    outer = tf.create_workflow(id="outer").then(tf.create_step(id="launch", execute=launch))
    result = await (await outer.commit().create_run()).start(input_data=None)
    assert result.result == 2
    outer_root, inner_root = roots(tracer)
    (launch_span,) = [s for s in tracer.by_kind("workflow_step") if s.name.endswith("'launch'")]
    assert inner_root.trace_id == outer_root.trace_id
    assert inner_root.parent_span_id == launch_span.span_id


async def test_resume_takes_a_tracing_context_too(rt: tf.Runtime, tracer: InMemoryTracer) -> None:
    wf = tf.create_workflow(id="gated").then(gate("g")).commit()
    run = await wf.create_run()
    parent = external_parent()
    await run.start(input_data=1, tracing_context=parent)
    out = await run.resume_stream(resume_data=2, tracing_context={"currentSpan": parent})
    assert (await out.result()).result == 3
    first, resumed = roots(tracer)
    assert resumed.trace_id == first.trace_id == parent.trace_id
    assert resumed.parent_span_id == parent.span_id
    assert resumed.metadata["resumed_from_span_id"] == first.span_id


@pytest.mark.parametrize(
    "bad",
    ["00f067aa0ba902b7", {"currentSpan": "00f067aa0ba902b7"}, {"span": None}, 42],
    ids=["str", "currentSpan-str", "unknown-key", "int"],
)
async def test_a_tracing_context_that_is_no_span_is_refused_before_the_run(
    rt: tf.Runtime, bad: Any
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    run = await wf.create_run()
    # (Not Python's "unexpected keyword argument 'tracing_context'".)
    with pytest.raises(TypeError, match=r"^tracing_context(:| must)"):
        await run.start(input_data=1, tracing_context=bad)
    assert (await rt.get_run_state(run.run_id)).status == "pending"
    # Nothing was claimed: the run still starts.
    assert (await run.start(input_data=1)).result == 2


async def test_a_tracing_context_in_another_trace_than_trace_id_is_refused(
    rt: tf.Runtime,
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    run = await wf.create_run()
    with pytest.raises(ValueError, match="differs from the trace of tracing_context"):
        await run.stream(
            input_data=1,
            tracing_options={"traceId": "ab" * 16},
            tracing_context=external_parent(),
        )
    assert (await rt.get_run_state(run.run_id)).status == "pending"


async def test_the_legacy_stream_takes_a_tracing_context(
    rt: tf.Runtime, tracer: InMemoryTracer
) -> None:
    wf = tf.create_workflow(id="w").then(inc("a")).commit()
    out = await (await wf.create_run()).stream_legacy(
        input_data=1, tracing_context=external_parent()
    )
    assert [e.type async for e in out.stream][-1] == "finish"
    assert only_root(tracer).parent_span_id == PARENT_SPAN_ID
    assert out.trace_id == TRACE_ID
