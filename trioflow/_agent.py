"""Agent steps: wrap any model object with ``async def stream(prompt)`` as a step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

import attrs
import trio

from ._context import StepContext
from ._core._model import Usage
from ._engine import call_maybe_async
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
    ``"prompt"``. Every model chunk is forwarded as a ``workflow-step-output`` chunk; the
    ``finish`` chunk's usage is added to the run's usage. Output: ``{"text": all text
    deltas joined}``.
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
        stream = model.stream(text)
        try:
            async for chunk in stream:
                if not isinstance(chunk, ModelChunk):
                    raise TypeError(f"model stream yielded {chunk!r}, expected a tf.ModelChunk")
                await ctx.writer.write(chunk)
                if chunk.type == "text-delta" and chunk.text:
                    parts.append(chunk.text)
                elif chunk.type == "finish" and chunk.usage is not None:
                    ctx.record_usage(chunk.usage)
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
