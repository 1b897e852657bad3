"""Tracing: options, spans and the tracer protocol."""

from ._options import TracingOptions as TracingOptions
from ._options import coerce_tracing_options as coerce_tracing_options
