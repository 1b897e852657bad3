"""Run and step statuses and the transitions between them (pure, trio-free).

After h11's ``_state.py``: which status may follow which is written down here, as a table.
The engine does not consult it at run time yet (its writes are compare-and-sets on the stored
status); the table is the contract the tests hold the engine's transitions to.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """Status of a run. A ``str`` enum: ``RunStatus.SUCCESS == "success"``."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    TRIPWIRE = "tripwire"
    PAUSED = "paused"


class StepStatus(enum.StrEnum):
    """Status of one step result: the run statuses that apply to a step, plus
    ``bailed`` and ``skipped``."""

    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    TRIPWIRE = "tripwire"
    PAUSED = "paused"
    BAILED = "bailed"
    SKIPPED = "skipped"


#: Statuses after which nothing more can happen to a run.
TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TRIPWIRE}
)

#: Statuses in which a process is (or was, before it died) executing the run.
ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.RUNNING, RunStatus.WAITING})

_S = RunStatus
#: The transition table. A status missing from the table has no way out.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # cancel() of a run that never started stores it canceled.
    _S.PENDING: frozenset({_S.RUNNING, _S.CANCELED}),
    _S.RUNNING: frozenset(
        {
            _S.RUNNING,
            _S.WAITING,
            _S.SUSPENDED,
            _S.SUCCESS,
            _S.FAILED,
            _S.CANCELED,
            _S.TRIPWIRE,
            _S.PAUSED,
        }
    ),
    _S.WAITING: frozenset({_S.RUNNING, _S.CANCELED, _S.FAILED}),
    # A resume claims the suspension (suspended -> running); cancel() ends it.
    _S.SUSPENDED: frozenset({_S.RUNNING, _S.CANCELED}),
    # A paused run continues with resume()/restart(), or is canceled.
    _S.PAUSED: frozenset({_S.RUNNING, _S.CANCELED}),
    _S.SUCCESS: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.TRIPWIRE: frozenset(),
}


class InvalidTransitionError(RuntimeError):
    """The engine tried a transition the table forbids: always a trioflow bug."""


def can_transition(old: RunStatus, new: RunStatus) -> bool:
    """Whether a run in ``old`` may move to ``new``."""
    return new in TRANSITIONS[old]


def check_transition(old: RunStatus, new: RunStatus) -> RunStatus:
    """Return ``new`` if ``old -> new`` is allowed, else raise InvalidTransitionError."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransitionError(f"run status cannot go from {old.value} to {new.value}")
    return new


def is_terminal(status: RunStatus) -> bool:
    return status in TERMINAL


def combine_branch_statuses(statuses: list[StepStatus], canceled: bool) -> StepStatus:
    """Status of a parallel/branch block from its branches' statuses.

    Precedence (Mastra §4.1): any tripwire ⇒ tripwire, else any failed ⇒ failed, else any
    suspended ⇒ suspended, else canceled ⇒ canceled, else success. Bailing inside a block
    is success.
    """
    if StepStatus.TRIPWIRE in statuses:
        return StepStatus.TRIPWIRE
    if StepStatus.FAILED in statuses:
        return StepStatus.FAILED
    if StepStatus.SUSPENDED in statuses:
        return StepStatus.SUSPENDED
    if canceled or StepStatus.CANCELED in statuses:
        return StepStatus.CANCELED
    return StepStatus.SUCCESS


def run_status_for_step_status(status: StepStatus) -> RunStatus:
    """The run status implied by a top-level entry that ended with ``status``."""
    if status in (StepStatus.SUCCESS, StepStatus.BAILED, StepStatus.SKIPPED):
        return RunStatus.SUCCESS
    return RunStatus(status.value)
