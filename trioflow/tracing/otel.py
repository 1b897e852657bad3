"""Export trioflow spans to OpenTelemetry (extra ``otel``).

``OpenTelemetryTracer(tracer_provider=None)`` implements the tracer protocol: every
trioflow span becomes an OpenTelemetry span with the same parent links. A run's root span
joins the run's own ``trace_id`` (so a resumed execution, in any process, continues the
same trace) and, when ``TracingOptions.parent_span_id`` is set, hangs under that span.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from ._spans import Span

_OK = frozenset({"success", "suspended", "paused", "waiting"})


def _attribute(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


class OpenTelemetryTracer:
    """Maps trioflow spans onto an OpenTelemetry tracer."""

    def __init__(self, tracer_provider: Any = None, *, name: str = "trioflow") -> None:
        self._tracer = trace.get_tracer(name, tracer_provider=tracer_provider)
        self._open: dict[str, trace.Span] = {}

    def _parent_context(self, span: Span) -> Any:
        parent = self._open.get(span.parent_span_id or "")
        if parent is not None:
            return trace.set_span_in_context(parent)
        # The root span: continue the run's trace (and an external parent span, if any).
        remote_parent = int(span.parent_span_id, 16) if span.parent_span_id else 1
        remote = SpanContext(
            trace_id=int(span.trace_id, 16),
            span_id=remote_parent,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(remote))

    def span_started(self, span: Span) -> None:
        attributes = {f"trioflow.{k}": _attribute(v) for k, v in span.metadata.items()}
        attributes["trioflow.kind"] = span.kind
        attributes["trioflow.span_id"] = span.span_id
        if span.tags:
            attributes["trioflow.tags"] = list(span.tags)
        self._open[span.span_id] = self._tracer.start_span(
            span.name,
            context=self._parent_context(span),
            attributes=attributes,
            start_time=span.started_at * 1_000_000,
        )

    def span_ended(self, span: Span) -> None:
        otel_span = self._open.pop(span.span_id, None)
        if otel_span is None:
            return
        otel_span.set_attribute("trioflow.status", span.status)
        if span.error is not None or span.status not in _OK:
            otel_span.set_status(Status(StatusCode.ERROR, span.error or span.status))
        ended = span.ended_at if span.ended_at is not None else span.started_at
        otel_span.end(end_time=ended * 1_000_000)
