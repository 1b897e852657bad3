"""What the bridge server checks before it touches storage, and how it describes errors.

SPEC §5: a refused op stores nothing. ``Runtime.create_run`` stores a ``pending`` run
before ``Run.stream`` validates the start's values, so the server first makes the run
API's own checks (``trioflow._admit.admit_start``), then creates the run. What a client
sends must also be strict JSON as sent, also in a field a schema would drop.
"""

from __future__ import annotations

from typing import Any

from .._admit import admit_start
from .._core._errors import ValidationError
from .._core._json import JsonValueError, check_strict_json
from .._groups import leaves
from .._workflow import WorkflowGraph
from . import _protocol as p


def _strict(value: Any, prefix: str) -> None:
    """ValidationError (like the run API's) when ``value`` is not strict JSON: a lone
    surrogate in a string, or nesting deeper than the documented limit."""
    try:
        check_strict_json(value)
    except JsonValueError as exc:
        raise ValidationError(prefix, [(exc.path, exc.reason)]) from None


def check_start(workflow: WorkflowGraph, request: p.Start) -> None:
    """Raise what ``Run.stream`` would raise for this start's values (ValidationError,
    TypeError, a graph error), before anything is stored."""
    _strict(request.input_data, "Invalid input data:")
    _strict(request.initial_state, "Invalid initial state:")
    _strict(request.request_context, "Invalid request context:")
    admit_start(workflow, request.input_data, request.initial_state, request.request_context)


def check_resume(request: p.Resume) -> None:
    """ValidationError when the resume's raw values are not strict JSON (also a field the
    resume schema would drop: what a client sends is strict JSON or refused)."""
    _strict(request.resume_data, "Invalid resume data:")
    _strict(request.request_context, "Invalid request context:")


def describe(exc: BaseException) -> str:
    """``ClassName: message`` of an exception on one line (each leaf of a group), for the
    log: the traceback is there too, but the one-line log handler of the command line
    prints it only with ``TRIOFLOW_DEBUG``."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(leaf) for leaf in leaves(exc))
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
