"""Durable step records: a StepResult as stored and back, the results a run lists, and the
records of interrupted nodes (time passed in: the planner reads no clock).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .._errors import NotJsonError
from .._json import JsonValueError, plainly_json
from .._model import (
    ITERATION_COUNT,
    RESUME_COUNT,
    StepResult,
    public_metadata,
    public_step_result,
)
from .._resume import nested_header
from .._serde import (
    _describe,
    _safe_text,
    dump_error,
    load_error,
    to_jsonable,
    to_strict_jsonable,
)
from .._status import StepStatus
from ._values import Announced, NodeResume

_S = StepStatus
# ``member.value`` goes through enum's descriptor machinery: too slow for the step path.
VALUE: dict[StepStatus, str] = {status: status.value for status in StepStatus}


# --- stored step results ---------------------------------------------------------------


def dump_step_result(result: StepResult) -> dict[str, Any]:
    # Field by field, not a loop over names: this runs once per settled step.
    out: dict[str, Any] = {"status": VALUE[result.status]}
    if (value := result.output) is not None:
        out["output"] = to_jsonable(value)
    if (value := result.payload) is not None:
        out["payload"] = to_jsonable(value)
    if (value := result.suspend_payload) is not None:
        out["suspend_payload"] = to_jsonable(value)
    if (value := result.suspend_output) is not None:
        out["suspend_output"] = to_jsonable(value)
    if (value := result.resume_payload) is not None:
        out["resume_payload"] = to_jsonable(value)
    if (value := result.metadata) is not None:
        out["metadata"] = to_jsonable(value)
    if (at := result.started_at) is not None:
        out["started_at"] = at
    if (at := result.ended_at) is not None:
        out["ended_at"] = at
    if (at := result.suspended_at) is not None:
        out["suspended_at"] = at
    if (at := result.resumed_at) is not None:
        out["resumed_at"] = at
    if result.error is not None:
        out["error"] = dump_error(result.error)
    if result.retry_count:
        out["retry_count"] = result.retry_count
    return out


def load_step_result(data: dict[str, Any]) -> StepResult:
    return StepResult(
        status=StepStatus(data["status"]),
        output=data.get("output"),
        payload=data.get("payload"),
        started_at=data.get("started_at"),
        ended_at=data.get("ended_at"),
        error=load_error(data.get("error")),
        suspend_payload=data.get("suspend_payload"),
        suspend_output=data.get("suspend_output"),
        suspended_at=data.get("suspended_at"),
        resume_payload=data.get("resume_payload"),
        resumed_at=data.get("resumed_at"),
        metadata=data.get("metadata"),
        retry_count=data.get("retry_count") or 0,
    )


def all_step_results(
    steps: dict[str, StepResult], stored: dict[str, dict[str, Any]]
) -> dict[str, StepResult]:
    """``WorkflowResult.all_steps``: the public ``steps`` (top level, already loaded) and
    every other settled step of the stored run by its qualified key (``nested.inner``,
    ``nested[2].inner``), with foreach items as ``step[i]``. Engine records (``@...``) and
    items still in flight are left out."""
    out = dict(steps)
    for key, data in stored.items():
        if key not in steps:
            if key.rpartition(".")[2].startswith("@"):
                continue
            out[key] = public_step_result(load_step_result(data))
        metadata = data.get("metadata")
        if metadata and "foreach" in metadata:
            outcomes = (metadata.get("foreach") or {}).get("outcomes") or []
            for i, record in enumerate(outcomes):
                if record and record.get("status") not in (None, "running"):
                    out[f"{key}[{i}]"] = item_result(record)
    return out


class AllSteps(Mapping[str, StepResult]):
    """``WorkflowResult.all_steps`` of an execution: a read-only mapping built from the
    stored records when first read (most callers never read it; building it for every
    run would cost the step path a share of its time)."""

    __slots__ = ("_built", "_steps", "_stored")

    def __init__(self, steps: dict[str, StepResult], stored: dict[str, dict[str, Any]]) -> None:
        self._steps = steps
        self._stored = dict(stored)
        self._built: dict[str, StepResult] | None = None

    def _all(self) -> dict[str, StepResult]:
        if self._built is None:
            self._built = all_step_results(self._steps, self._stored)
        return self._built

    def __getitem__(self, key: str) -> StepResult:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


def item_result(record: dict[str, Any]) -> StepResult:
    """A foreach item's stored record as a StepResult (an item that bailed succeeded)."""
    status = record["status"]
    return StepResult(
        status=_S.SUCCESS if status == "bailed" else StepStatus(status),
        output=record.get("output"),
        payload=record.get("payload"),
        error=load_error(record.get("error")),
        suspend_payload=record.get("suspend_payload"),
        metadata=public_metadata(record.get("metadata")),
        retry_count=record.get("retry_count") or 0,
    )




def start_times(
    now: int, resume: NodeResume | None, stored: dict[str, Any] | None = None
) -> tuple[int, int | None]:
    """``(started_at, resumed_at)`` of a node starting now: a resumed node keeps the start
    time of its first execution (Mastra 1.71 reports both), and is resumed now."""
    if resume is None:
        return now, None
    source = stored if stored is not None else resume.stored
    first = (source or {}).get("started_at")
    return (first if isinstance(first, int) else now), now


def canceled_result(
    value: Any,
    announced: Announced,
    resume: NodeResume | None,
    prior: dict[str, Any] | None,
    iteration: int,
    now: int,
) -> StepResult:
    """The result of a node interrupted by cancellation: its start (and resume) as its
    ``workflow-step-result`` chunk reports them. A nested workflow's progress record stays
    (its metadata): a restart continues it."""
    if nested_header(prior):
        metadata = (prior or {}).get("metadata")
    else:
        metadata = {ITERATION_COUNT: iteration} if iteration else None
        if resume is not None and resume_count(prior):
            # A restart replaying this resume counts from the resumes before it, so the
            # step gets the same idempotency key again.
            metadata = {**(metadata or {}), RESUME_COUNT: resume_count(prior)}
    return StepResult(
        status=_S.CANCELED,
        payload=value,
        started_at=announced.started_at,
        ended_at=now,
        resume_payload=resume.data if resume is not None else None,
        resumed_at=announced.resumed_at,
        metadata=metadata,
    )


def resume_count(stored: dict[str, Any] | None) -> int:
    """How many resumes a stored step result (or foreach item record) has had."""
    count = ((stored or {}).get("metadata") or {}).get(RESUME_COUNT)
    return count if type(count) is int else 0


def tripwire_metadata(metadata: Any) -> dict[str, Any] | None:
    """A TripwireError's metadata as stored and sent: strict JSON values as they are, any
    other value as its repr (as an error's attributes are), never a failure of its own."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return {"value": _describe(metadata)}
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[_safe_text(str(key))] = to_strict_jsonable(value)
        except Exception:
            out[_safe_text(str(key))] = _describe(value)
    return out




def not_json(what: str, value: Any) -> NotJsonError | None:
    """The error for a value that cannot be stored (not strict JSON), or None."""
    if plainly_json(value):
        return None
    try:
        to_strict_jsonable(value)
    except JsonValueError as exc:
        return NotJsonError(what, exc.path, exc.reason)
    return None




def type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "dict", list: "list", str: "str", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


