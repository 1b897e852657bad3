"""The reference model's records (what it keeps between executions) and the pure rules
for one scripted step and for a foreach container's outcome.

Independent of the engine and of the planner: :mod:`trioflow.testing._reference` is the
oracle the engine is compared with.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._spec import (
    StepSpec,
    WorkflowSpec,
    failure_message,
    label_for,
    matches,
    output_number,
)


class ModelError(Exception):
    """The spec (or the resume asked of the model) is outside what the model predicts."""


# --- what the model keeps between executions -------------------------------------------


@attrs.define
class _Rec:
    """One node's stored result (a step, nested workflow, foreach container, map, sleep)."""

    kind: str
    status: str
    output: Any = None
    payload: Any = None
    suspend_payload: Any = None
    rounds: int = 0
    label: str | None = None
    level: _Level | None = None
    items: list[_Rec | None] | None = None
    iteration: int = 0
    bailed: bool = False
    errors: frozenset[str] = frozenset()


@attrs.define
class _Level:
    spec: WorkflowSpec
    prefix: str
    input: Any
    state: dict[str, Any]
    results: dict[str, _Rec] = attrs.field(factory=dict)
    suspended: dict[str, int] = attrs.field(factory=dict)
    entry_input: Any = None


@attrs.frozen
class _Target:
    """Where a resume goes, from the current level down."""

    path: tuple[str, ...]
    value: Any
    index: int | None = None


@attrs.frozen
class _Outcome:
    status: str
    output: Any = None
    errors: frozenset[str] = frozenset()


def _status_of(rec: _Rec) -> _Outcome:
    if rec.bailed:
        return _Outcome("bailed", rec.output)
    return _Outcome(rec.status, rec.output, rec.errors)


def _combine(statuses: list[str]) -> str:
    for status in ("failed", "suspended", "canceled"):
        if status in statuses:
            return status
    return "success"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def step_record(
    spec: StepSpec, number: int, value: Any, resume: tuple[_Target, _Rec] | None
) -> _Rec:
    """What a scripted step does with its input (digest ``number``) or its resume."""
    label = label_for(spec, number) if spec.label else None
    rec: _Rec
    if resume is not None:
        target, stored = resume
        done = stored.rounds
        if done < spec.rounds:
            payload = {"s": spec.id, "round": done + 1, "n": number, "got": target.value}
            rec = _Rec("step", "suspended", None, value, payload, done + 1, label)
        elif spec.after_resume == "fail":
            message = failure_message(spec, number, resumed=True)
            rec = _Rec("step", "failed", payload=value, errors=frozenset({message}))
        else:
            output = {
                "s": spec.id,
                "n": output_number(spec, number),
                "resumed": target.value,
                "round": done,
            }
            rec = _Rec("step", "success", output, value)
    else:
        action = spec.action if matches(spec.when, number) else "return"
        if action == "fail":
            message = failure_message(spec, number)
            rec = _Rec("step", "failed", payload=value, errors=frozenset({message}))
        elif action == "suspend":
            payload = {"s": spec.id, "round": 1, "n": number}
            rec = _Rec("step", "suspended", None, value, payload, 1, label)
        elif action == "bail":
            output = {"bailed": spec.id, "n": output_number(spec, number)}
            rec = _Rec("step", "success", output, value, bailed=True)
        else:
            rec = _Rec(
                "step", "success", {"s": spec.id, "n": output_number(spec, number)}, value
            )
    return rec


def foreach_plan(
    outcomes: list[_Rec | None], resume: tuple[_Target, _Rec] | None
) -> list[tuple[int, tuple[_Target, _Rec] | None]]:
    """The iterations a foreach runs now: those never started, and on a resume the
    suspended ones the resume targets (all of them, or ``for_each_index``)."""
    plan: list[tuple[int, tuple[_Target, _Rec] | None]] = []
    for i, previous in enumerate(outcomes):
        if previous is None:
            plan.append((i, None))
        elif previous.status == "suspended" and resume is not None:
            wanted = resume[0].index
            if wanted is None or wanted == i:
                plan.append((i, (_Target(resume[0].path, resume[0].value), previous)))
    return plan


def foreach_record(
    items: list[Any], outcomes: list[_Rec | None], failed: list[_Rec], bailed: _Rec | None
) -> tuple[_Rec, _Outcome]:
    """The foreach container's record and outcome once its iterations ran."""
    rec = _Rec("foreach", "success", payload=items, items=outcomes)
    if failed:
        rec.status = "failed"
        rec.errors = frozenset().union(*(r.errors for r in failed))
        outcome = _Outcome("failed", errors=rec.errors)
    elif bailed is not None:
        rec.output = bailed.output
        outcome = _Outcome("bailed", bailed.output)
    elif any(o is not None and o.status == "suspended" for o in outcomes):
        first = next(o for o in outcomes if o is not None and o.status == "suspended")
        rec.status = "suspended"
        rec.suspend_payload = first.suspend_payload
        outcome = _Outcome("suspended")
    elif any(o is None for o in outcomes):
        raise ModelError("foreach ended with items never started")
    else:
        rec.output = [o.output for o in outcomes if o is not None]
        outcome = _Outcome("success", rec.output)
    return rec, outcome
