"""Spans and the tracer protocol.

The engine reports a span when it starts and when it ends; a tracer exports them
(``InMemoryTracer`` for tests, :mod:`trioflow.tracing.otel` for OpenTelemetry). Tracer
methods are synchronous and must not block: they run on the engine's hot path.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol, runtime_checkable

import attrs

#: The span of the step/entry/run the current task executes in.
current_span: contextvars.ContextVar[Span] = contextvars.ContextVar("trioflow_span")

SPAN_KINDS = (
    "workflow_run",
    "workflow_step",
    "workflow_parallel",
    "workflow_conditional",
    "workflow_loop",
    "workflow_sleep",
)


@attrs.define(eq=False, kw_only=True)
class Span:
    """One traced unit: a run execution (root), a step, or a parallel/branch/loop/sleep."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    started_at: int
    ended_at: int | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()
    status: str = "running"
    error: str | None = None


@runtime_checkable
class Tracer(Protocol):
    def span_started(self, span: Span) -> None: ...

    def span_ended(self, span: Span) -> None: ...


class InMemoryTracer:
    """Keeps every span, in start order (``spans``) and in end order (``ended``)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.ended: list[Span] = []

    def span_started(self, span: Span) -> None:
        self.spans.append(span)

    def span_ended(self, span: Span) -> None:
        self.ended.append(span)

    def by_kind(self, kind: str) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]

    def children_of(self, span: Span) -> list[Span]:
        return [s for s in self.spans if s.parent_span_id == span.span_id]
