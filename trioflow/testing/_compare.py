"""Comparing a run recovered after a crash with the uninterrupted run: the views of a
result and of a log that must survive a crash (:func:`outcome_view`,
:func:`settled_view`), and :func:`compare_recovered`, which the crash-point harness and the
model checks apply to every crash point."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import attrs

import trioflow as tf

from ._faults import Acknowledged, durability_problems
from ._invariants import check_stream_invariants
from ._reference import jsonish


@attrs.frozen(kw_only=True)
class RunRecord:
    """A run driven to its end: the final result, the stored event log, the results of
    every start/resume/restart call made on the way (``executions``), and how many times
    each step executed (``steps_executed``, by chunk id)."""

    result: tf.WorkflowResult
    events: list[Any]
    executions: list[tf.WorkflowResult]
    steps_executed: Counter[str]


# --- comparing two runs -----------------------------------------------------------------


def _json(value: Any) -> Any:
    from .._core._serde import to_jsonable

    return to_jsonable(value)


def _error_view(error: Any) -> tuple[str, str] | None:
    if error is None:
        return None
    if isinstance(error, tf.SerializedError):
        return (error.name, error.message)
    return (type(error).__name__, str(error))


def outcome_view(
    result: tf.WorkflowResult, *, allowed_errors: Collection[str] | None = None
) -> dict[str, Any]:
    """What must not depend on crashes: status, result, error (class name and message),
    state, and every top-level step's status, output and error. Errors whose message is
    one of ``allowed_errors`` all count as the same error."""
    return {
        "status": str(result.status),
        "result": _json(result.result),
        "error": _error_key(result.error, allowed_errors),
        "state": _json(result.state),
        "steps": {
            k: (str(v.status), _json(v.output), _error_key(v.error, allowed_errors))
            for k, v in sorted(result.steps.items())
        },
    }


#: Stands for any of the ``allowed_errors`` in comparisons.
ANY_ALLOWED_ERROR = ("<allowed error>", "<allowed error>")


def _error_key(error: Any, allowed: Collection[str] | None = None) -> tuple[str, str] | None:
    view = _error_view(error)
    if view is not None and allowed is not None and view[1] in allowed:
        return ANY_ALLOWED_ERROR
    return view


def settled_view(
    events: Sequence[Any], *, allowed_errors: Collection[str] | None = None
) -> Counter[tuple[Any, ...]]:
    """The settled facts of an event log, as a multiset: every step result (id, status,
    output, error), suspension (id, payload), foreach iteration (id, index, status,
    output) and workflow-finish status. Start chunks, timestamps and call ids are left
    out: a restart legitimately repeats starts. Errors whose message is one of
    ``allowed_errors`` all count as the same error."""
    out: Counter[tuple[Any, ...]] = Counter()
    for chunk in events:
        p: Any = getattr(chunk, "payload", None)
        if chunk.type == "workflow-step-result":
            err = _error_key(p.error, allowed_errors)
            out[("result", p.id, p.status, jsonish(p.output), err)] += 1
        elif chunk.type == "workflow-step-suspended":
            out[("suspended", p.id, jsonish(p.suspend_payload))] += 1
        elif chunk.type == "workflow-step-progress":
            out[
                ("progress", p.id, p.current_index, p.iteration_status, jsonish(p.iteration_output))
            ] += 1
        elif chunk.type == "workflow-finish":
            out[("finish", p.workflow_status)] += 1
    return out


def _step_starts(events: Sequence[Any]) -> Counter[str]:
    return Counter(c.payload.id for c in events if c.type == "workflow-step-start")


def _waits(events: Sequence[Any]) -> Counter[str]:
    return Counter(c.payload.id for c in events if c.type == "workflow-step-waiting")


def _open_at_end(events: Sequence[Any], kind: str) -> Counter[str]:
    """Steps (``kind="workflow-step-start"``) or sleeps (``"workflow-step-waiting"``)
    still open when the log ends, in its last execution."""
    open_: Counter[str] = Counter()
    for chunk in events:
        if chunk.type == "workflow-start":
            open_.clear()
        elif chunk.type == kind:
            open_[chunk.payload.id] += 1
        elif (
            chunk.type in ("workflow-step-result", "workflow-step-suspended")
            and open_[chunk.payload.id]
        ):
            open_[chunk.payload.id] -= 1
    return +open_


def _outputs(events: Sequence[Any]) -> Counter[tuple[str, str]]:
    return Counter(
        (c.payload.step_name, jsonish(c.payload.output))
        for c in events
        if c.type == "workflow-step-output"
    )


def _finish_statuses(events: Sequence[Any]) -> list[str]:
    return [c.payload.workflow_status for c in events if c.type == "workflow-finish"]


def _multiset_diff(name: str, expected: Counter[Any], got: Counter[Any]) -> list[str]:
    problems = []
    missing = expected - got
    extra = got - expected
    if missing:
        problems.append(f"{name} missing: {sorted(missing.items(), key=repr)}")
    if extra:
        problems.append(f"{name} unexpected: {sorted(extra.items(), key=repr)}")
    return problems


@attrs.frozen(kw_only=True)
class CrashState:
    """What storage held when the process died: the event log and the snapshot, and what
    it had acknowledged before (None: not known)."""

    events: list[Any] = attrs.field(factory=list)
    snapshot: Any = None
    acknowledged: Acknowledged | None = None


def _loop_bodies(workflow: tf.Workflow, prefix: str = "") -> set[str]:
    """Chunk ids of every loop body (their stored result is only the last iteration's)."""
    from .._core._graph import LoopEntry

    out: set[str] = set()
    for entry in workflow.entries:
        nodes = getattr(entry, "nodes", None) or ((entry.node,) if hasattr(entry, "node") else ())
        for node in nodes:
            if isinstance(entry, LoopEntry):
                out.add(prefix + node.id)
            if isinstance(node, tf.Workflow):
                out |= _loop_bodies(node, prefix + node.id + ".")
    return out


def _recorded_finished(snapshot: Any, workflow: tf.Workflow | None) -> set[str]:
    """Chunk ids of the steps the stored snapshot records as succeeded (foreach items and
    loop bodies left out: one id stands for several executions there)."""
    if snapshot is None:
        return set()
    loops = _loop_bodies(workflow) if workflow is not None else set()
    return {
        key
        for key, stored in snapshot.steps.items()
        if "[" not in key
        and stored.get("status") == "success"
        and key not in loops
        and not (stored.get("metadata") or {}).get("foreach")
    }


def compare_recovered(
    reference: RunRecord,
    recovered: RunRecord,
    *,
    at_crash: CrashState | None = None,
    workflow: tf.Workflow | None = None,
    strict_log: bool = False,
    allowed_errors: Collection[str] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Differences between a run recovered after a crash and the uninterrupted
    ``reference``, and the steps that executed more often than in the reference (chunk id
    -> extra executions).

    The rules: the recovered log satisfies :func:`check_stream_invariants` (an execution
    interrupted by the crash allowed); status, result, error, state and every top-level
    step result are the reference's; the workflow-finish statuses are the same; every
    settled chunk of the reference (step result, suspension, foreach iteration) is in the
    recovered log, and a settled chunk appears more often only for a step that ran again
    (``strict_log=True``: never); start/waiting chunks repeat only for what ran again or was
    open when the process died; writer output repeats only for steps that ran again; a
    step the stored (or the acknowledged) snapshot recorded as finished (``at_crash``) does
    not run again; and what storage returned after the crash is what it had acknowledged
    before it (the last acknowledged snapshot, every acknowledged chunk).

    ``allowed_errors``: when concurrent branches fail, which error the run (or a foreach)
    reports is up to trio's scheduling; give the set of acceptable messages and any of them
    counts as the same error.
    """
    problems: list[str] = []
    at_crash = at_crash if at_crash is not None else CrashState()
    violation = check_stream_invariants(recovered.events, allow_interrupted=True)
    if violation:
        problems.append(f"event log: {violation}")
    expected = outcome_view(reference.result, allowed_errors=allowed_errors)
    got = outcome_view(recovered.result, allowed_errors=allowed_errors)
    for key in expected:
        if expected[key] != got[key]:
            problems.append(f"{key}: expected {expected[key]!r}, got {got[key]!r}")
    if _finish_statuses(recovered.events) != _finish_statuses(reference.events):
        problems.append(
            f"workflow-finish statuses: expected {_finish_statuses(reference.events)}, "
            f"got {_finish_statuses(recovered.events)}"
        )
    # What ran again: steps counted by the tracer (foreach items included, even when the
    # crash lost their chunks), and entries whose start (or, for a sleep, waiting) chunk
    # the recovered log repeats beyond what was open when the process died (a restart
    # re-opens a nested workflow, a foreach container or a sleep without re-running it).
    reran = {
        k: n - reference.steps_executed[k]
        for k, n in recovered.steps_executed.items()
        if n > reference.steps_executed[k]
    }
    open_starts = _open_at_end(at_crash.events, "workflow-step-start")
    extra_starts = _step_starts(recovered.events) - _step_starts(reference.events)
    open_waits = _open_at_end(at_crash.events, "workflow-step-waiting")
    extra_waits = _waits(recovered.events) - _waits(reference.events)
    for k, n in ((extra_starts - open_starts) + (extra_waits - open_waits)).items():
        reran[k] = max(reran.get(k, 0), n)
    settled_ref = settled_view(reference.events, allowed_errors=allowed_errors)
    settled_got = settled_view(recovered.events, allowed_errors=allowed_errors)
    missing = settled_ref - settled_got
    if missing:
        problems.append(f"settled chunks missing: {sorted(missing.items(), key=repr)}")
    repeated = settled_got - settled_ref
    per_step: Counter[str] = Counter()
    for fact, n in repeated.items():
        per_step[fact[1]] += n
    unexplained = {
        k: n for k, n in per_step.items() if strict_log or n > reran.get(k, 0) or k == ""
    }
    if unexplained:
        problems.append(
            "settled chunks repeated"
            + (" (strict_log)" if strict_log else f" by steps that did not run again ({reran})")
            + f": {sorted(repeated.items(), key=repr)}"
        )
    missing_starts = _step_starts(reference.events) - _step_starts(recovered.events)
    if missing_starts:
        problems.append(f"workflow-step-start chunks missing: {dict(missing_starts)}")
    missing_waits = _waits(reference.events) - _waits(recovered.events)
    if missing_waits:
        problems.append(f"workflow-step-waiting missing: {dict(missing_waits)}")
    extra_outputs = _outputs(recovered.events) - _outputs(reference.events)
    missing_outputs = _outputs(reference.events) - _outputs(recovered.events)
    if missing_outputs:
        problems.append(f"writer output missing: {sorted(missing_outputs)}")
    strays = {name for name, _ in extra_outputs if name not in reran}
    if strays:
        problems.append(f"writer output repeated by steps that did not re-run: {sorted(strays)}")
    finished = _recorded_finished(at_crash.snapshot, workflow)
    if at_crash.acknowledged is not None:
        promised = at_crash.acknowledged
        problems += durability_problems(promised, at_crash.snapshot, at_crash.events)
        finished |= _recorded_finished(promised.snapshot, workflow)
    again = sorted(k for k in finished if reran.get(k))
    if again:
        problems.append(f"steps the snapshot recorded as finished ran again: {again}")
    return problems, reran
