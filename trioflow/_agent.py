"""Agent steps: wrap any model object with ``async def stream(prompt)`` as a step.

The model speaks :class:`ModelChunk` (trioflow's model-side type); what the step forwards
through its writer is Mastra's agent-chunk shape, so a Mastra client reading
``workflow-step-output.payload.output`` sees what a Mastra agent step sends:
``{"type", "runId", "from": "AGENT", "payload": {...camelCase...}}`` with the types
``start``, ``step-start``, ``text-start``, ``text-delta``, ``text-end``,
``tool-call-input-streaming-start``, ``tool-call-delta``, ``tool-call-input-streaming-end``,
``tool-call``, ``step-finish`` and ``finish`` (usage at ``payload.output.usage``).
Captured from Mastra 1.71: tests/fixtures/mastra_1_71/agent_usage.json, agent_tool.json.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

import attrs
import trio

from ._context import StepContext
from ._core._model import Usage
from ._effects import call_maybe_async, now_ms
from ._workflow import Step, create_step

ModelChunkType = Literal[
    "text-delta", "tool-call-start", "tool-call-delta", "tool-call-finish", "finish"
]
_TYPES = frozenset(
    {"text-delta", "tool-call-start", "tool-call-delta", "tool-call-finish", "finish"}
)


def _check_type(_: object, __: object, value: str) -> None:
    if value not in _TYPES:
        raise ValueError(f"ModelChunk type must be one of {sorted(_TYPES)}, got {value!r}")


@attrs.frozen
class ModelChunk:
    """One chunk of a model's stream. ``finish`` may carry the call's ``usage``."""

    type: str = attrs.field(validator=_check_type)
    text: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    args: Any = None
    args_text_delta: str | None = None
    usage: Usage | None = None


class Model(Protocol):
    def stream(self, prompt: str) -> AsyncIterator[ModelChunk]: ...


_OPTIONAL_USAGE = ("reasoning_tokens", "cached_input_tokens", "cache_creation_input_tokens")


def usage_to_agent_wire(usage: Usage) -> dict[str, int]:
    """Usage as a Mastra agent chunk carries it: the three counts every model reports, and
    the optional ones only when the model reported them (non-zero)."""
    out = {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
    }
    for name in _OPTIONAL_USAGE:
        value = getattr(usage, name)
        if value:
            head, *rest = name.split("_")
            out[head + "".join(part.capitalize() for part in rest)] = value
    return out


class AgentChunks:
    """Turns one agent call's :class:`ModelChunk` stream into Mastra's agent chunks.

    ``feed`` maps one model chunk (opening/closing the ``text-*`` block and the model
    ``step-*`` turn around it as Mastra does); ``end`` closes what is open and sends the
    final ``finish`` with the whole call's usage. Pure: no I/O.
    """

    def __init__(self, step_id: str) -> None:
        self._run_id = str(uuid.uuid4())
        self._message_id = str(uuid.uuid4())
        self._step_id = step_id
        self._started = False
        self._in_turn = False
        self._text_id: str | None = None
        self._text_blocks = 0
        self._text: list[str] = []
        self._tool_calls: list[dict[str, Any]] = []
        self._usage = Usage()
        self._reason = "stop"

    def _chunk(self, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"type": type_, "runId": self._run_id, "from": "AGENT", "payload": payload}

    def _open(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(self._chunk("start", {"id": self._step_id, "messageId": self._message_id}))
        if not self._in_turn:
            self._in_turn = True
            payload: dict[str, Any] = {
                "request": {},
                "warnings": [],
                "messageId": self._message_id,
                "startedAt": now_ms(),
            }
            out.append(self._chunk("step-start", payload))
        return out

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text_id is None:
            return []
        text_id, self._text_id = self._text_id, None
        return [self._chunk("text-end", {"type": "text-end", "id": text_id})]

    def _finish_payload(self, usage: Usage) -> dict[str, Any]:
        return {
            "messageId": self._message_id,
            "stepResult": {"reason": self._reason, "isContinued": False},
            "output": {
                "text": "".join(self._text),
                "toolCalls": list(self._tool_calls),
                "usage": usage_to_agent_wire(usage),
            },
        }

    def feed(self, chunk: ModelChunk) -> list[dict[str, Any]]:
        out = self._open()
        if chunk.type == "text-delta":
            if self._text_id is None:
                self._text_id = str(self._text_blocks)
                self._text_blocks += 1
                out.append(self._chunk("text-start", {"id": self._text_id}))
            self._text.append(chunk.text or "")
            out.append(self._chunk("text-delta", {"id": self._text_id, "text": chunk.text or ""}))
            return out
        out += self._close_text()
        if chunk.type == "finish":
            usage = chunk.usage if chunk.usage is not None else Usage()
            self._usage = self._usage + usage
            self._in_turn = False
            out.append(self._chunk("step-finish", self._finish_payload(usage)))
        else:
            out.append(self._tool_chunk(chunk))
            if chunk.type == "tool-call-finish":
                out.append(self._tool_call(chunk))
        return out

    def _tool_chunk(self, chunk: ModelChunk) -> dict[str, Any]:
        ids = {"toolCallId": chunk.tool_call_id, "toolName": chunk.tool_name}
        if chunk.type == "tool-call-start":
            return self._chunk("tool-call-input-streaming-start", _present(ids))
        if chunk.type == "tool-call-delta":
            payload = {"argsTextDelta": chunk.args_text_delta, **ids}
            return self._chunk("tool-call-delta", _present(payload))
        return self._chunk("tool-call-input-streaming-end", _present({"toolCallId": ids["toolCallId"]}))

    def _tool_call(self, chunk: ModelChunk) -> dict[str, Any]:
        call = _present(
            {"toolCallId": chunk.tool_call_id, "toolName": chunk.tool_name, "args": chunk.args}
        )
        self._tool_calls.append(call)
        self._reason = "tool-calls"
        return self._chunk("tool-call", dict(call))

    def end(self) -> list[dict[str, Any]]:
        """The chunks that close the call: an open text block or turn, then ``finish``."""
        out = self._open() if not self._started else []
        out += self._close_text()
        if self._in_turn:
            self._in_turn = False
            out.append(self._chunk("step-finish", self._finish_payload(Usage())))
        out.append(self._chunk("finish", self._finish_payload(self._usage)))
        return out


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def agent_step(
    id: str,
    model: Model,
    *,
    prompt: str | Callable[[StepContext], Any] | None = None,
    retries: int | None = None,
    timeout: float | None = None,
) -> Step:
    """A step that streams ``model``'s answer to a prompt.

    The prompt is ``prompt`` (a str, or ``fn(ctx)`` returning one), else the step input's
    ``"prompt"``. The model's chunks are forwarded as ``workflow-step-output`` chunks in
    Mastra's agent-chunk shape (see :class:`AgentChunks`); each ``finish`` chunk's usage is
    added to the run's usage. Output: ``{"text": all text deltas joined}``.
    """
    if not hasattr(model, "stream"):
        raise TypeError(f"model must have an async stream(prompt) method, got {model!r}")

    async def execute(ctx: StepContext) -> dict[str, str]:
        if prompt is None:
            data = ctx.input_data
            text = data.get("prompt") if isinstance(data, dict) else getattr(data, "prompt", None)
        elif callable(prompt):
            text = await call_maybe_async(prompt, ctx)
        else:
            text = prompt
        if not isinstance(text, str):
            raise TypeError(f"agent step {id!r} needs a str prompt, got {text!r}")
        parts: list[str] = []
        agent_chunks = AgentChunks(id)
        stream = model.stream(text)
        try:
            async for chunk in stream:
                if not isinstance(chunk, ModelChunk):
                    raise TypeError(f"model stream yielded {chunk!r}, expected a tf.ModelChunk")
                for out in agent_chunks.feed(chunk):
                    await ctx.writer.write(out)
                if chunk.type == "text-delta" and chunk.text:
                    parts.append(chunk.text)
                elif chunk.type == "finish" and chunk.usage is not None:
                    ctx.record_usage(chunk.usage)
            for out in agent_chunks.end():
                await ctx.writer.write(out)
        finally:
            # Stopping early (an error, a cancel) must close an async-generator model now,
            # not leave it to the garbage collector.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        return {"text": "".join(parts)}

    return create_step(
        id=id,
        execute=execute,
        retries=retries,
        timeout=timeout,
        description=f"agent step over {type(model).__name__}",
    )
