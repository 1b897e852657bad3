"""What the bridge server checks before it touches storage, and how it describes errors.

SPEC §5: a refused op stores nothing. ``Runtime.create_run`` stores a ``pending`` run
before ``Run.stream`` validates the start's values, so the server makes the same checks
first (the run API's own functions, in the same order), then creates the run.
"""

from __future__ import annotations

from typing import Any

from .._context import coerce_request_context
from .._core._json import JsonValueError, check_strict_json
from .._errors import ValidationError
from .._groups import leaves
from .._run import _initial_state
from .._serde import to_jsonable, validate
from .._workflow import Workflow
from . import _protocol as p


def _strict(value: Any, prefix: str) -> None:
    """ValidationError (like the run API's) when ``value`` is not strict JSON: a lone
    surrogate in a string, or nesting deeper than the documented limit."""
    try:
        check_strict_json(value)
    except JsonValueError as exc:
        raise ValidationError(prefix, [(exc.path, exc.reason)]) from None


def check_start(workflow: Workflow, request: p.Start) -> None:
    """Raise what ``Run.stream`` would raise for this start's values (ValidationError,
    TypeError), before anything is stored."""
    _strict(request.input_data, "Invalid input data:")
    _strict(request.initial_state, "Invalid initial state:")
    _strict(request.request_context, "Invalid request context:")
    if workflow.validate_inputs and workflow.input_schema is not None:
        value = validate(request.input_data, workflow.input_schema, "Invalid input data:")
    else:
        value = request.input_data
    _initial_state(workflow, request.initial_state)
    try:
        to_jsonable(value)
    except TypeError as exc:
        raise ValidationError("Invalid input data:", [("", str(exc))]) from None
    coerce_request_context(request.request_context)


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
