"""Agent steps and token usage: `tf.agent_step`, `tf.ModelChunk`, the scripted model of
`trioflow.testing`, `ctx.record_usage`, `out.usage()` and the usage of `workflow-finish`.

Contract: SPEC §3.5 (agent steps: prompt sources, output `{"text": ...}`, model chunks
forwarded as `workflow-step-output` and as `tool-call*` legacy events, usage summed into
`out.usage()` and `workflow-finish`, `ScriptedModel`), SPEC §3.1 (`out.usage()` may be
awaited at any time and resolves when the stream ends; summed over the run, nested
workflows included), SPEC §3.3 (legacy event types), the `record_usage` row of the
step-context table in SPEC §1. Background: mastra-behaviour.md §4.4 (two agents reporting
10/20/30 each give 20/40/60; runs without agents give zeros; nested runs count) and §2.3
(agent steps forward every chunk through the writer; legacy `tool-call-streaming-*`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import ScriptedModel

USAGE = tf.Usage(input_tokens=10, output_tokens=20, total_tokens=30)

# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime() as runtime:
        yield runtime


def tool_chunks() -> list[tf.ModelChunk]:
    """A model turn: a streamed tool call, some text, and a finish with usage."""
    return [
        tf.ModelChunk("tool-call-start", tool_call_id="call-1", tool_name="search"),
        tf.ModelChunk(
            "tool-call-delta", tool_call_id="call-1", tool_name="search", args_text_delta='{"q": '
        ),
        tf.ModelChunk(
            "tool-call-delta", tool_call_id="call-1", tool_name="search", args_text_delta='"trio"}'
        ),
        tf.ModelChunk(
            "tool-call-finish", tool_call_id="call-1", tool_name="search", args={"q": "trio"}
        ),
        tf.ModelChunk("text-delta", text="Found "),
        tf.ModelChunk("text-delta", text="it."),
        tf.ModelChunk("finish", usage=USAGE),
    ]


def plain(step_id: str, fn: Callable[[tf.StepContext], Any]) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        return fn(ctx)

    return tf.create_step(id=step_id, execute=execute)


async def stream_all(
    wf: tf.Workflow, input_data: Any
) -> tuple[list[tf.Chunk], tf.WorkflowResult, tf.Usage]:
    run = await wf.create_run()
    out = await run.stream(input_data=input_data)
    chunks = [chunk async for chunk in out]
    return chunks, await out.result(), await out.usage()


def outputs_of(chunks: Sequence[tf.Chunk], step_name: str) -> list[Any]:
    return [
        c.payload.output
        for c in chunks
        if isinstance(c, tf.WorkflowStepOutput) and c.payload.step_name == step_name
    ]


def finish_of(chunks: Sequence[tf.Chunk]) -> tf.WorkflowFinish:
    finishes = [c for c in chunks if isinstance(c, tf.WorkflowFinish)]
    assert len(finishes) == 1
    return finishes[0]


def agent_types(outputs: Sequence[Any]) -> list[str]:
    """The Mastra agent-chunk types of forwarded outputs (each must be an AGENT chunk)."""
    assert all(o["from"] == "AGENT" for o in outputs)
    return [o["type"] for o in outputs]


# What tool_chunks() becomes on the wire: Mastra's agent vocabulary (SPEC §3.5; captured
# from Mastra 1.71 in tests/fixtures/mastra_1_71/agent_tool.json).
TOOL_TURN_TYPES = [
    "start",
    "step-start",
    "tool-call-input-streaming-start",
    "tool-call-delta",
    "tool-call-delta",
    "tool-call-input-streaming-end",
    "tool-call",
    "text-start",
    "text-delta",
    "text-delta",
    "text-end",
    "step-finish",
    "finish",
]


class GatedModel:
    """Streams one text delta, then waits for ``release`` before finishing with ``usage``."""

    def __init__(self, usage: tf.Usage) -> None:
        self.usage = usage
        self.release = trio.Event()

    # Users write models as async generators; agent_step must cope with them.
    async def stream(self, prompt: str) -> AsyncIterator[tf.ModelChunk]:  # noqa: ASYNC900
        yield tf.ModelChunk("text-delta", text=prompt)
        await self.release.wait()
        yield tf.ModelChunk("finish", usage=self.usage)


class BadModel:
    """Streams a plain dict instead of a tf.ModelChunk (an iterator object, no generator)."""

    def stream(self, prompt: str) -> BadModel:
        self.items = [{"type": "text-delta", "text": prompt}]
        return self

    def __aiter__(self) -> BadModel:
        return self

    async def __anext__(self) -> Any:
        await trio.lowlevel.checkpoint()
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)


class GeneratorModel:
    """An async-generator model that records whether its stream was closed (``finally``)."""

    def __init__(self, items: list[Any], *, block: bool = False) -> None:
        self.items = items
        self.block = block
        self.closed = False
        self.started = trio.Event()

    async def stream(self, prompt: str) -> AsyncIterator[Any]:  # noqa: ASYNC900
        try:
            for item in self.items:
                yield item
            self.started.set()
            if self.block:
                await trio.sleep_forever()
        finally:
            self.closed = True


# --------------------------------------------------------------------------- ModelChunk


@pytest.mark.parametrize(
    "kind", ["text-delta", "tool-call-start", "tool-call-delta", "tool-call-finish", "finish"]
)
def test_model_chunk_accepts_the_five_types(kind: str) -> None:
    assert tf.ModelChunk(kind).type == kind


@pytest.mark.parametrize("kind", ["text", "tool-call", "reasoning-delta", "", "FINISH"])
def test_model_chunk_with_unknown_type_is_a_value_error(kind: str) -> None:
    with pytest.raises(ValueError, match="type"):
        tf.ModelChunk(kind)


def test_model_chunk_optional_fields_default_to_none() -> None:
    chunk = tf.ModelChunk("finish")
    assert (chunk.text, chunk.tool_call_id, chunk.tool_name, chunk.args) == (None,) * 4
    assert chunk.args_text_delta is None
    assert chunk.usage is None


# --------------------------------------------------------------------------- ScriptedModel


async def test_scripted_model_from_text_replays_text_then_finish_with_usage() -> None:
    model = ScriptedModel.from_text("hello big world", usage=USAGE)
    chunks = [chunk async for chunk in model.stream("hi")]
    assert "".join(c.text or "" for c in chunks if c.type == "text-delta") == "hello big world"
    assert chunks[-1] == tf.ModelChunk("finish", usage=USAGE)
    assert model.prompts == ["hi"]


# --------------------------------------------------------------------------- agent_step


async def test_agent_output_is_the_joined_text(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("the quick brown fox")
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    result = await (await wf.create_run()).start(input_data={"prompt": "go"})
    assert result.status == "success"
    assert result.result == {"text": "the quick brown fox"}
    assert result.steps["agent"].output == {"text": "the quick brown fox"}


async def test_agent_output_joins_only_text_deltas(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", ScriptedModel(tool_chunks())))
    result = await (await wf.commit().create_run()).start(input_data={"prompt": "go"})
    assert result.result == {"text": "Found it."}


async def test_agent_with_no_text_outputs_empty_text(rt: tf.Runtime) -> None:
    model = ScriptedModel([tf.ModelChunk("finish", usage=USAGE)])
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    result = await (await wf.create_run()).start(input_data={"prompt": "go"})
    assert result.result == {"text": ""}


async def test_agent_prompt_comes_from_the_input(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("ok")
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    await (await wf.create_run()).start(input_data={"prompt": "What is trio?"})
    assert model.prompts == ["What is trio?"]


async def test_agent_prompt_str_overrides_the_input(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("ok")
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model, prompt="fixed")).commit()
    result = await (await wf.create_run()).start(input_data={"prompt": "ignored"})
    assert result.status == "success"
    assert model.prompts == ["fixed"]


async def test_agent_prompt_fn_builds_the_prompt_from_ctx(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("ok")

    def build(ctx: tf.StepContext) -> str:
        return f"summarise {ctx.input_data['doc']} for {ctx.get_init_data()['user']}"

    wf = (
        tf.create_workflow(id="w")
        .then(plain("load", lambda ctx: {"doc": "README"}))
        .then(tf.agent_step("agent", model, prompt=build))
        .commit()
    )
    result = await (await wf.create_run()).start(input_data={"user": "ann"})
    assert result.status == "success"
    assert model.prompts == ["summarise README for ann"]


async def test_agent_is_called_once_per_foreach_item_with_its_prompt(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("ok", usage=USAGE)
    wf = tf.create_workflow(id="w").foreach(tf.agent_step("agent", model)).commit()
    items = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    chunks, result, usage = await stream_all(wf, items)
    assert result.result == [{"text": "ok"}] * 3
    assert model.prompts == ["a", "b", "c"]
    assert usage == tf.Usage(input_tokens=30, output_tokens=60, total_tokens=90)
    assert finish_of(chunks).payload.usage == usage


async def test_agent_without_a_prompt_fails_the_step(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("ok")
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    result = await (await wf.create_run()).start(input_data={"question": "no prompt key"})
    assert result.status == "failed"
    assert result.steps["agent"].status == "failed"
    assert model.prompts == []


async def test_every_model_chunk_is_forwarded_as_step_output(rt: tf.Runtime) -> None:
    script = tool_chunks()
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", ScriptedModel(script))).commit()
    chunks, result, _ = await stream_all(wf, {"prompt": "go"})
    assert result.status == "success"
    assert agent_types(outputs_of(chunks, "agent")) == TOOL_TURN_TYPES
    forwarded = [c for c in chunks if isinstance(c, tf.WorkflowStepOutput)]
    assert all(c.from_ == "USER" for c in forwarded)


async def test_forwarded_chunks_come_between_the_step_start_and_its_result(
    rt: tf.Runtime,
) -> None:
    model = ScriptedModel.from_text("a b", usage=USAGE)
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    chunks, _, _ = await stream_all(wf, {"prompt": "go"})
    assert [c.type for c in chunks] == [
        "workflow-start",
        "workflow-step-start",
        *["workflow-step-output"] * 8,
        "workflow-step-result",
        "workflow-finish",
    ]
    outputs = outputs_of(chunks, "agent")
    assert agent_types(outputs) == [
        "start",
        "step-start",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "step-finish",
        "finish",
    ]
    usage = {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30}
    assert outputs[-1]["payload"]["output"]["usage"] == usage


async def test_agent_chunks_in_a_nested_workflow_are_relayed_with_the_dotted_id(
    rt: tf.Runtime,
) -> None:
    model = ScriptedModel.from_text("hi", usage=USAGE)
    inner = tf.create_workflow(id="inner").then(tf.agent_step("agent", model)).commit()
    wf = tf.create_workflow(id="outer").then(inner).commit()
    chunks, result, _ = await stream_all(wf, {"prompt": "go"})
    assert result.result == {"text": "hi"}
    outputs = outputs_of(chunks, "inner.agent")
    assert agent_types(outputs)[:3] == ["start", "step-start", "text-start"]
    assert [o["payload"]["text"] for o in outputs if o["type"] == "text-delta"] == ["hi"]


async def test_model_yielding_a_non_model_chunk_fails_the_step_with_type_error(
    rt: tf.Runtime,
) -> None:
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", BadModel())).commit()
    result = await (await wf.create_run()).start(input_data={"prompt": "go"})
    assert result.status == "failed"
    assert isinstance(result.steps["agent"].error, TypeError)
    assert isinstance(result.error, TypeError)


async def test_model_stream_is_closed_when_it_yields_a_non_model_chunk(rt: tf.Runtime) -> None:
    model = GeneratorModel([tf.ModelChunk("text-delta", text="a"), "not a chunk", "never read"])
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    result = await (await wf.create_run()).start(input_data={"prompt": "go"})
    assert result.status == "failed"
    assert isinstance(result.steps["agent"].error, TypeError)
    # agent_step stopped reading early: it must aclose() the model's stream, not leave it
    # to the garbage collector.
    assert model.closed


async def test_model_stream_is_closed_when_the_run_is_canceled(rt: tf.Runtime) -> None:
    model = GeneratorModel([tf.ModelChunk("text-delta", text="a")], block=True)
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data={"prompt": "go"})
    await model.started.wait()
    await run.cancel()
    result = await out.result()
    assert result.status == "canceled"
    assert model.closed


# --------------------------------------------------------------------------- usage


async def test_usage_of_two_agents_is_summed(rt: tf.Runtime) -> None:
    wf = (
        tf.create_workflow(id="w")
        .then(tf.agent_step("first", ScriptedModel.from_text("one", usage=USAGE)))
        .map(lambda ctx: {"prompt": ctx.input_data["text"]})
        .then(tf.agent_step("second", ScriptedModel.from_text("two", usage=USAGE)))
        .commit()
    )
    _chunks, result, usage = await stream_all(wf, {"prompt": "go"})
    assert result.result == {"text": "two"}
    assert usage == tf.Usage(input_tokens=20, output_tokens=40, total_tokens=60)


async def test_workflow_finish_carries_the_summed_usage(rt: tf.Runtime) -> None:
    wf = (
        tf.create_workflow(id="w")
        .parallel(
            [
                tf.agent_step("first", ScriptedModel.from_text("one", usage=USAGE)),
                tf.agent_step("second", ScriptedModel.from_text("two", usage=USAGE)),
            ]
        )
        .commit()
    )
    chunks, _, usage = await stream_all(wf, {"prompt": "go"})
    expected = tf.Usage(input_tokens=20, output_tokens=40, total_tokens=60)
    assert usage == expected
    assert finish_of(chunks).payload.usage == expected


async def test_record_usage_from_a_plain_step_counts(rt: tf.Runtime) -> None:
    async def counting(ctx: tf.StepContext) -> int:
        ctx.record_usage(tf.Usage(input_tokens=1, output_tokens=2, total_tokens=3))
        ctx.record_usage(tf.Usage(input_tokens=4, output_tokens=5, total_tokens=9))
        return 0

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="count", execute=counting))
        .map(lambda ctx: {"prompt": "go"})
        .then(tf.agent_step("agent", ScriptedModel.from_text("x", usage=USAGE)))
        .commit()
    )
    chunks, _, usage = await stream_all(wf, None)
    expected = tf.Usage(input_tokens=15, output_tokens=27, total_tokens=42)
    assert usage == expected
    assert finish_of(chunks).payload.usage == expected


async def test_every_usage_field_is_summed(rt: tf.Runtime) -> None:
    one = tf.Usage(
        input_tokens=1,
        output_tokens=2,
        total_tokens=3,
        reasoning_tokens=4,
        cached_input_tokens=5,
        cache_creation_input_tokens=6,
    )

    async def counting(ctx: tf.StepContext) -> None:
        ctx.record_usage(one)
        ctx.record_usage(one)

    wf = tf.create_workflow(id="w").then(tf.create_step(id="count", execute=counting)).commit()
    chunks, _, usage = await stream_all(wf, None)
    assert usage == tf.Usage(
        input_tokens=2,
        output_tokens=4,
        total_tokens=6,
        reasoning_tokens=8,
        cached_input_tokens=10,
        cache_creation_input_tokens=12,
    )
    assert finish_of(chunks).payload.usage == usage


async def test_usage_in_a_nested_workflow_counts(rt: tf.Runtime) -> None:
    inner = (
        tf.create_workflow(id="inner")
        .then(tf.agent_step("inner_agent", ScriptedModel.from_text("in", usage=USAGE)))
        .commit()
    )
    wf = (
        tf.create_workflow(id="outer")
        .then(tf.agent_step("outer_agent", ScriptedModel.from_text("out", usage=USAGE)))
        .map(lambda ctx: {"prompt": ctx.input_data["text"]})
        .then(inner)
        .commit()
    )
    chunks, result, usage = await stream_all(wf, {"prompt": "go"})
    assert result.result == {"text": "in"}
    expected = tf.Usage(input_tokens=20, output_tokens=40, total_tokens=60)
    assert usage == expected
    assert finish_of(chunks).payload.usage == expected


async def test_record_usage_in_a_doubly_nested_workflow_counts(rt: tf.Runtime) -> None:
    async def counting(ctx: tf.StepContext) -> int:
        ctx.record_usage(tf.Usage(input_tokens=7, total_tokens=7))
        return 1

    deepest = tf.create_workflow(id="deep").then(tf.create_step(id="c", execute=counting))
    middle = tf.create_workflow(id="middle").then(deepest.commit()).commit()
    wf = tf.create_workflow(id="top").then(middle).commit()
    chunks, _, usage = await stream_all(wf, None)
    assert usage == tf.Usage(input_tokens=7, total_tokens=7)
    assert finish_of(chunks).payload.usage == usage


async def test_run_without_usage_reports_zeros(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(plain("a", lambda ctx: 1)).commit()
    chunks, _, usage = await stream_all(wf, None)
    assert usage == tf.Usage()
    assert attrs.asdict(usage) == dict.fromkeys(attrs.asdict(tf.Usage()), 0)
    assert finish_of(chunks).payload.usage == tf.Usage()


async def test_agent_without_usage_reports_zeros(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", ScriptedModel.from_text("x")))
    chunks, result, usage = await stream_all(wf.commit(), {"prompt": "go"})
    assert result.status == "success"
    assert usage == tf.Usage()
    assert finish_of(chunks).payload.usage == tf.Usage()


async def test_usage_before_a_failure_is_still_reported(rt: tf.Runtime) -> None:
    def explode(ctx: tf.StepContext) -> Any:
        raise RuntimeError("after the agent")

    wf = (
        tf.create_workflow(id="w")
        .then(tf.agent_step("agent", ScriptedModel.from_text("x", usage=USAGE)))
        .then(plain("explode", explode))
        .commit()
    )
    chunks, result, usage = await stream_all(wf, {"prompt": "go"})
    assert result.status == "failed"
    assert usage == USAGE
    assert finish_of(chunks).payload.usage == USAGE


async def test_usage_awaited_before_the_stream_ends_resolves_when_it_ends(
    rt: tf.Runtime,
) -> None:
    model = GatedModel(USAGE)
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data={"prompt": "go"})
    got: list[tf.Usage] = []

    async def wait_usage() -> None:
        got.append(await out.usage())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_usage)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert out.status == "running"
        model.release.set()
    assert got == [USAGE]
    assert (await out.result()).result == {"text": "go"}


async def test_usage_of_a_stream_kept_open_across_suspension_sums_every_execution(
    rt: tf.Runtime,
) -> None:
    async def approve(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"ask": "approve"})
        return {"prompt": "again"}

    wf = (
        tf.create_workflow(id="w")
        .then(tf.agent_step("before", ScriptedModel.from_text("x", usage=USAGE)))
        .then(tf.create_step(id="approve", execute=approve))
        .then(tf.agent_step("after", ScriptedModel.from_text("y", usage=USAGE)))
        .commit()
    )
    run = await wf.create_run()
    out = await run.stream(input_data={"prompt": "go"}, close_on_suspend=False)
    async with trio.open_nursery() as nursery:

        async def resume_when_suspended() -> None:
            async for chunk in out:
                if isinstance(chunk, tf.WorkflowStepSuspended):
                    await run.resume(resume_data=True)

        nursery.start_soon(resume_when_suspended)
    result = await out.result()
    assert result.status == "success"
    assert await out.usage() == tf.Usage(input_tokens=20, output_tokens=40, total_tokens=60)


# --------------------------------------------------------------------------- legacy stream


async def test_legacy_stream_emits_tool_call_events(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", ScriptedModel(tool_chunks())))
    run = await wf.commit().create_run()
    out = await run.stream_legacy(input_data={"prompt": "go"})
    events = [event async for event in out.stream]
    assert [e.type for e in events] == [
        "start",
        "step-start",
        "tool-call-streaming-start",
        "tool-call-delta",
        "tool-call-delta",
        "tool-call-streaming-finish",
        "tool-call",
        "step-result",
        "step-finish",
        "finish",
    ]
    tool_events = [e for e in events if e.type.startswith("tool-call")]
    assert all(e.payload["toolCallId"] == "call-1" for e in tool_events)
    assert all(e.payload["name"] == "search" for e in tool_events)
    deltas = [e.payload["argsTextDelta"] for e in events if e.type == "tool-call-delta"]
    assert "".join(deltas) == '{"q": "trio"}'
    finished = [e for e in events if e.type in ("tool-call-streaming-finish", "tool-call")]
    assert all(e.payload["args"] == {"q": "trio"} for e in finished)
    assert (await out.get_workflow_state()).result == {"text": "Found it."}


async def test_legacy_stream_drops_text_deltas(rt: tf.Runtime) -> None:
    model = ScriptedModel.from_text("just words", usage=USAGE)
    wf = tf.create_workflow(id="w").then(tf.agent_step("agent", model)).commit()
    out = await (await wf.create_run()).stream_legacy(input_data={"prompt": "go"})
    events = [event async for event in out.stream]
    assert [e.type for e in events] == [
        "start",
        "step-start",
        "step-result",
        "step-finish",
        "finish",
    ]
