"""The planner's values: how a node or entry ended, what running a node produced, a node's
announcement and resume, and how a run's status follows from its last outcome.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._model import (
    SerializedError,
    StepResult,
    TripwireInfo,
)
from .._serde import (
    to_jsonable,
    validate,
)
from .._status import RunStatus, StepStatus

_S = StepStatus


# --- outcomes ------------------------------------------------------------------------------


@attrs.define
class Outcome:
    """How an entry (or a whole level) ended."""

    status: StepStatus
    output: Any = None
    error: BaseException | SerializedError | None = None
    tripwire: TripwireInfo | None = None


@attrs.define
class StepRun:
    """What running one node produced, beyond its StepResult."""

    result: StepResult
    bailed: bool = False
    labels: list[Label] = attrs.field(factory=list)
    tripwire: TripwireInfo | None = None


@attrs.frozen
class Announced:
    """A node's call id and start time, fixed when its start chunk was published. A
    resumed node keeps the start time of its first execution (as Mastra 1.71 reports it)
    and is resumed at ``resumed_at``."""

    call_id: str
    started_at: int
    resumed_at: int | None = None


@attrs.frozen
class NodeResume:
    """Resuming one node: the resume data, the path below it (nested workflows), the
    stored result of the node, and (foreach) which iteration(s)."""

    data: Any
    tail: list[str]
    stored: dict[str, Any] | None
    foreach_index: int | None = None
    #: A restart continuing a nested workflow from its stored header (no resume data).
    restarting: bool = False


def outcome_of(run: StepRun) -> Outcome:
    result = run.result
    if run.bailed:
        return Outcome(_S.BAILED, output=result.output)
    if result.status is _S.FAILED and run.tripwire is not None:
        return Outcome(_S.TRIPWIRE, error=result.error, tripwire=run.tripwire)
    return Outcome(result.status, output=result.output, error=result.error)


def merge_state(state: Any, update: Any, schema: Any) -> Any:
    """Shallow-merge ``update`` into ``state`` (dicts, or instances of ``schema``)."""
    if update is None:
        return state
    if schema is not None and attrs.has(schema):
        if isinstance(update, schema):
            return update
        if isinstance(update, dict):
            current = to_jsonable(state) if state is not None else {}
            return validate({**current, **update}, schema, "Invalid state:")
        raise TypeError(f"set_state() expects a dict or a {schema.__name__}, got {update!r}")
    if isinstance(update, dict):
        base = state if isinstance(state, dict) else {}
        return {**base, **update}
    if attrs.has(type(update)):
        base = state if isinstance(state, dict) else {}
        return {**base, **to_jsonable(update)}
    raise TypeError(f"set_state() expects a dict, got {update!r}")




class Label:
    """A resume label found below a level: its name, the path below, the iteration."""

    __slots__ = ("foreach_index", "name", "path")

    def __init__(self, name: str, path: list[str], foreach_index: int | None = None) -> None:
        self.name = name
        self.path = path
        self.foreach_index = foreach_index




def run_status(outcome: Outcome) -> RunStatus:
    status = outcome.status
    if status is _S.BAILED:
        return RunStatus.SUCCESS
    if status is _S.TRIPWIRE:
        return RunStatus.TRIPWIRE
    if status is _S.FAILED and outcome.tripwire is not None:
        return RunStatus.TRIPWIRE
    return RunStatus(status.value)
