"""Tracing: options, spans and the tracer protocol (``trioflow.tracing.otel`` maps spans
onto OpenTelemetry when the ``otel`` extra is installed)."""

from ._options import TracingOptions as TracingOptions
from ._options import coerce_tracing_context as coerce_tracing_context
from ._options import coerce_tracing_options as coerce_tracing_options
from ._options import with_parent_span as with_parent_span
from ._spans import InMemoryTracer as InMemoryTracer
from ._spans import Span as Span
from ._spans import Tracer as Tracer
from ._spans import current_span as current_span

from .._fixup import fixup_module_metadata as _fixup_module_metadata  # isort: skip

_fixup_module_metadata(__name__, globals())
