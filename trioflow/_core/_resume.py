"""Which suspended path a resume targets (pure, trio-free).

A *path* is a list of step ids from the top-level workflow down through nested workflows,
e.g. ``["outer", "inner"]``. Stored step results of nested workflows carry their own
suspended paths in ``metadata["nested"]["suspended"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._errors import MultipleSuspendedStepsError, NotSuspendedError, StepNotSuspendedError
from ._model import ResumeLabel, RunSnapshot
from ._status import RunStatus


@attrs.frozen(kw_only=True)
class ResumeTarget:
    path: list[str]
    foreach_index: int | None = None


def nested_header(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not stored:
        return None
    metadata = stored.get("metadata") or {}
    nested = metadata.get("nested")
    return nested if isinstance(nested, dict) else None


def full_suspended_paths(
    suspended_paths: Mapping[str, Sequence[int]], steps: Mapping[str, Mapping[str, Any]]
) -> list[list[str]]:
    """Every suspended path, expanded through nested workflows, in graph order (by entry,
    then branch): concurrent branches may suspend in any order, the list does not."""
    paths: list[list[str]] = []
    for step_id in sorted(suspended_paths, key=lambda k: list(suspended_paths[k])):
        header = nested_header(steps.get(step_id))
        inner = header.get("suspended") if header else None
        if inner:
            paths.extend([step_id, *p] for p in inner)
        else:
            paths.append([step_id])
    return paths


def resolve_target(
    *,
    step: Sequence[str] | None,
    label: str | None,
    for_each_index: int | None,
    suspended_paths: Mapping[str, Sequence[int]],
    steps: Mapping[str, Mapping[str, Any]],
    resume_labels: Mapping[str, ResumeLabel],
) -> ResumeTarget:
    """Resolve ``step``/``label`` (or neither) to one suspended path.

    Raises NotSuspendedError (nothing suspended), StepNotSuspendedError (``step`` or
    ``label`` names nothing suspended), MultipleSuspendedStepsError (ambiguous).
    """
    available = full_suspended_paths(suspended_paths, steps)
    if label is not None:
        found = resume_labels.get(label)
        if found is None:
            raise StepNotSuspendedError(f"label:{label}", available)
        index = for_each_index if for_each_index is not None else found.foreach_index
        return ResumeTarget(path=list(found.path), foreach_index=index)
    if not available:
        raise NotSuspendedError("No suspended steps found in this workflow run")
    if step is None:
        if len(available) > 1:
            raise MultipleSuspendedStepsError(available)
        return ResumeTarget(path=available[0], foreach_index=for_each_index)
    given = list(step)
    if not given:
        raise ValueError("step must name at least one step id")
    matches = [p for p in available if p[: len(given)] == given]
    if not matches:
        # Allow naming an inner step by its own id (or tail path) when that is unambiguous.
        matches = [p for p in available if p[-len(given) :] == given]
    if not matches:
        # A path into the items of a suspended foreach over a nested workflow
        # (``["each", "inner"]``, as Mastra 1.71 lists them) names that foreach.
        matches = [p for p in available if _names_item_path(p, given, steps)]
    if not matches:
        raise StepNotSuspendedError(".".join(given), available)
    if len(matches) > 1:
        raise MultipleSuspendedStepsError(matches)
    return ResumeTarget(path=matches[0], foreach_index=for_each_index)


def _names_item_path(
    path: list[str], given: list[str], steps: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Whether ``given`` continues the suspended foreach ``path`` into the nested workflow
    of one of its suspended items (the item's own suspended path below it)."""
    if len(given) <= len(path) or given[: len(path)] != path:
        return False
    tail = given[len(path) :]
    for outcome in _foreach_outcomes(steps.get(".".join(path))) or []:
        if isinstance(outcome, Mapping) and outcome.get("status") == "suspended":
            header = nested_header(outcome)
            inner = header.get("suspended") if header else None
            if any(list(p[: len(tail)]) == tail for p in inner or []):
                return True
    return False


def _foreach_outcomes(stored: Mapping[str, Any] | None) -> list[Any] | None:
    foreach = ((stored or {}).get("metadata") or {}).get("foreach")
    outcomes = foreach.get("outcomes") if isinstance(foreach, dict) else None
    return outcomes if isinstance(outcomes, list) else None


def check_foreach_index(target: ResumeTarget, steps: Mapping[str, Mapping[str, Any]]) -> None:
    """A ``for_each_index`` must name a suspended iteration of the foreach it applies to:
    the first foreach on the target's path (``["nest", "leaf"]`` looks at ``nest``, then
    at ``nest.leaf``), as the engine hands the index down.

    Raises ValueError (no foreach on the path) or StepNotSuspendedError (listing the
    suspended iterations).
    """
    index = target.foreach_index
    if index is None:
        return
    for depth in range(1, len(target.path) + 1):
        key = ".".join(target.path[:depth])
        outcomes = _foreach_outcomes(steps.get(key))
        if outcomes is None:
            continue
        suspended = [
            i
            for i, outcome in enumerate(outcomes)
            if isinstance(outcome, Mapping) and outcome.get("status") == "suspended"
        ]
        if index not in suspended:
            raise StepNotSuspendedError(f"{key}[{index}]", [[f"{key}[{i}]"] for i in suspended])
        return
    raise ValueError(
        f"for_each_index given, but {'.'.join(target.path)!r} is not a foreach step "
        "(nor inside one)"
    )


def executing_a_resume(snapshot: RunSnapshot) -> bool:
    """Whether a stored run is executing because a resume claimed its suspension (so a
    resume arriving now lost the claim), rather than because of its start.

    Running with a resume pending, or with steps still suspended, says so; after the
    resumed entry finished, a step that was resumed (or suspended) since the start does.
    """
    if snapshot.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        return False
    if snapshot.resume is not None or snapshot.suspended_paths:
        return True
    return any(
        record.get("resumed_at") is not None or record.get("suspended_at") is not None
        for record in snapshot.steps.values()
        if isinstance(record, Mapping)
    )
