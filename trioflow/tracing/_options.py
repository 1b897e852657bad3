"""``TracingOptions``: validated at construction."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._spans import Span

_HEX = re.compile(r"[0-9a-fA-F]+")


def _hex_of(max_len: int) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is None:
            return
        if (
            not isinstance(value, str)
            or not 1 <= len(value) <= max_len
            or not _HEX.fullmatch(value)
        ):
            raise ValueError(
                f"{attribute.name} must be 1-{max_len} hexadecimal characters, got {value!r}"
            )

    return check


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise TypeError(f"expected a list of str, got the str {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected a list of str, got item {item!r}")
    return items


@attrs.frozen(kw_only=True)
class TracingOptions:
    """How an execution is traced.

    ``trace_id`` (1-32 hex chars) joins an existing trace; ``parent_span_id`` (1-16 hex
    chars) makes the root span a child of an external span; ``request_context_keys`` copies
    request-context values (dotted paths reach nested values) into the root span's
    metadata; ``metadata`` and ``tags`` go on the root span. As a dict, the keys may also
    be spelled as Mastra does (``traceId``, ``parentSpanId``, ``requestContextKeys``).
    """

    metadata: dict[str, Any] | None = None
    request_context_keys: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    trace_id: str | None = attrs.field(default=None, validator=_hex_of(32))
    parent_span_id: str | None = attrs.field(default=None, validator=_hex_of(16))
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)


_FIELDS = ("metadata", "request_context_keys", "trace_id", "parent_span_id", "tags")

# Mastra's own spelling of each option (its TracingOptions is camelCase), so options written
# for a Mastra client can be passed as they are.
_CAMEL = {
    "metadata": "metadata",
    "requestContextKeys": "request_context_keys",
    "traceId": "trace_id",
    "parentSpanId": "parent_span_id",
    "tags": "tags",
}


def _snake_keys(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    unknown: list[str] = []
    for key, item in value.items():
        name = key if key in _FIELDS else _CAMEL.get(key)
        if name is None:
            unknown.append(repr(key))
            continue
        if name in out:
            raise ValueError(f"tracing option {name} given twice: as {given_as[name]} and as {key}")
        out[name] = item
        given_as[name] = key
    if unknown:
        accepted = ", ".join(f"{k} ({c})" for c, k in _CAMEL.items() if c != k)
        raise ValueError(
            f"unknown tracing option(s): {', '.join(sorted(unknown))}; accepted: "
            f"metadata, tags, {accepted}"
        )
    return out


def coerce_tracing_options(value: TracingOptions | Mapping[str, Any] | None) -> TracingOptions:
    """A TracingOptions from one, from a dict with snake_case or Mastra's camelCase keys
    (``traceId``, ``parentSpanId``, ``requestContextKeys``), or from None."""
    if value is None:
        return TracingOptions()
    if isinstance(value, TracingOptions):
        return value
    if isinstance(value, Mapping):
        return TracingOptions(**_snake_keys(value))
    raise TypeError(f"tracing_options must be a TracingOptions or a dict, got {value!r}")


def coerce_tracing_context(value: Any) -> Span | None:
    """The span a run's root span becomes a child of: a :class:`Span` (what
    ``ctx.tracing_context`` gives a step), Mastra's ``{"currentSpan": span}`` (or
    ``{"current_span": span}``), an object with a ``current_span`` attribute, or None.
    TypeError naming ``tracing_context`` for anything else."""
    if value is None or isinstance(value, Span):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(repr(k) for k in value if k not in ("currentSpan", "current_span"))
        if unknown:
            raise TypeError(
                f"tracing_context: unknown key(s) {', '.join(unknown)}; expected currentSpan"
            )
        if "currentSpan" in value and "current_span" in value:
            raise TypeError("tracing_context: give currentSpan or current_span, not both")
        span = value.get("currentSpan", value.get("current_span"))
    else:
        span = getattr(value, "current_span", _MISSING)
        if span is _MISSING:
            raise TypeError(
                "tracing_context must be a trioflow.tracing.Span, {'currentSpan': span} or "
                f"None, got {value!r}"
            )
    if span is None or isinstance(span, Span):
        return span
    raise TypeError(f"tracing_context: currentSpan must be a trioflow.tracing.Span, got {span!r}")


_MISSING = object()


def with_parent_span(options: TracingOptions, parent: Span | None) -> TracingOptions:
    """``options`` with the run's root span placed under ``parent``: its trace and its
    span id (the parent wins over ``parent_span_id``). ValueError when ``trace_id`` names
    another trace than the parent's."""
    if parent is None:
        return options
    if options.trace_id is not None and options.trace_id != parent.trace_id:
        raise ValueError(
            f"tracing_options.trace_id {options.trace_id!r} differs from the trace of "
            f"tracing_context's span ({parent.trace_id!r}): give one or make them agree"
        )
    try:
        return attrs.evolve(options, trace_id=parent.trace_id, parent_span_id=parent.span_id)
    except ValueError as exc:
        raise ValueError(f"tracing_context: the span's ids cannot be used: {exc}") from None
