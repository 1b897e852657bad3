"""The legacy (v0) stream format of ``stream_legacy()``: Mastra's ``streamLegacy`` events
(SPEC §3.3), read from a :class:`RunOutput`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs

from ._broadcast import Subscription
from ._core._chunks import (
    Chunk,
    WorkflowFinish,
    WorkflowStart,
    WorkflowStepOutput,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
    WorkflowStepWaiting,
)
from ._core._model import WorkflowResult
from ._core._serde import to_wire
from ._output import RunOutput


@attrs.frozen
class LegacyEvent:
    """An event of the v0 stream format: ``type`` and a ``payload`` dict.

    Keys are Mastra's camelCase (``stepCallId``, ``startedAt``, ...) and there is no
    ``stepName`` (Mastra 1.71 ``streamLegacy``: tests/fixtures/mastra_1_71/legacy.json).
    """

    type: str
    payload: dict[str, Any]


# Mastra agent chunks (see _agent.AgentChunks) that the legacy stream reports as tool-call
# events; the end of a call's input carries no args, the tool-call chunk after it does.
_TOOL_TYPES = {
    "tool-call-input-streaming-start": ("tool-call-streaming-start",),
    "tool-call-delta": ("tool-call-delta",),
    "tool-call": ("tool-call-streaming-finish", "tool-call"),
}


def legacy_events(chunk: Chunk, run_id: str) -> list[LegacyEvent]:
    """The v0 events one chunk maps to (possibly none)."""
    if isinstance(chunk, WorkflowStart):
        return [LegacyEvent("start", {"runId": run_id})]
    if isinstance(chunk, WorkflowFinish):
        return [LegacyEvent("finish", {"runId": run_id})]
    if isinstance(chunk, WorkflowStepStart):
        return [LegacyEvent("step-start", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepResult):
        finish: dict[str, Any] = {"id": chunk.payload.id}
        if chunk.payload.step_call_id is not None:
            finish["stepCallId"] = chunk.payload.step_call_id
        finish["metadata"] = {}
        return [
            LegacyEvent("step-result", _payload_dict(chunk)),
            LegacyEvent("step-finish", finish),
        ]
    if isinstance(chunk, WorkflowStepSuspended):
        return [LegacyEvent("step-suspended", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepWaiting):
        return [LegacyEvent("step-waiting", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepOutput):
        return _legacy_tool_events(chunk.payload.output)
    return []


def _legacy_tool_events(output: Any) -> list[LegacyEvent]:
    if not isinstance(output, dict) or output.get("from") != "AGENT":
        return []
    types = _TOOL_TYPES.get(str(output.get("type")))
    payload = output.get("payload")
    if types is None or not isinstance(payload, dict):
        return []
    body = {
        "name": payload.get("toolName"),
        "args": payload.get("args"),
        "toolCallId": payload.get("toolCallId"),
        "argsTextDelta": payload.get("argsTextDelta"),
    }
    body = {k: v for k, v in body.items() if v is not None}
    return [LegacyEvent(t, dict(body)) for t in types]


def _payload_dict(chunk: Chunk) -> dict[str, Any]:
    # The wire payload (camelCase field names, None fields left out, user data untouched)
    # minus the stepName copy that only the v1 stream adds.
    payload = dict(to_wire(chunk).get("payload", {}))
    payload.pop("stepName", None)
    return payload


class _LegacyEvents:
    def __init__(self, sub: Subscription, run_id: str) -> None:
        self._sub = sub
        self._run_id = run_id
        self._pending: list[LegacyEvent] = []

    def __aiter__(self) -> _LegacyEvents:
        return self

    async def __anext__(self) -> LegacyEvent:
        while not self._pending:
            chunk = await self._sub.__anext__()
            self._pending = legacy_events(chunk, self._run_id)
        return self._pending.pop(0)  # noqa: ASYNC910 - the subscription checkpoints

    async def aclose(self) -> None:
        await self._sub.aclose()


class LegacyRunOutput:
    """What ``stream_legacy()`` returns: ``stream`` (v0 events), ``get_workflow_state()``
    and ``trace_id``. The stream stays open across a suspension (a resume adds no second
    ``start``) and closes after the final ``finish``."""

    def __init__(self, output: RunOutput) -> None:
        self._output = output

    @property
    def trace_id(self) -> str:
        return self._output.trace_id

    @property
    def stream(self) -> AsyncIterator[LegacyEvent]:
        """A new iterator over the v0 events (from this stream's start)."""
        return _LegacyEvents(self._output.full_stream(), self._output.run_id)

    async def get_workflow_state(self) -> WorkflowResult:
        return await self._output.result()
