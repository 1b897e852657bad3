"""The planner of a nested workflow used as a step (pure, trio-free).

Rules:

- Keys. The nested level stores its steps under ``<parent prefix><node id>[<foreach
  index>].``; its idempotency-key scope adds the loop iteration (``body#2.``). Its own
  record (the node's result, and while it runs its progress record) is
  ``<parent prefix><node id>``; a foreach item's progress record is
  ``<parent prefix><node id>[<index>].@progress`` (the item's result is the foreach's).
- Where it starts. A node whose stored record carries a nested header (resumed, or a
  restart continuing it) *continues*: its payload is the stored one, its level is rebuilt
  from the header, the parent's current state is merged over its own, and it starts at
  the entry it was running; resumed on a path below it, at the entry holding that path;
  resumed without a path (a foreach item), on its first suspended inner path. A restart
  without a path re-enters the running entry in restart mode. Anything else is a *fresh*
  run: its input is validated against the workflow's input schema (a failure is the
  node's failed result, nothing runs), every record an earlier run left under its keys is
  replaced (e.g. the previous iteration of a loop), and it starts at entry 0.
- Progress. On durable storage, a nested node keeps a ``running`` progress record
  (payload, start time, its header, the loop iteration) that every write stores, so a
  crash re-runs only its unfinished entry. A foreach item's progress record is removed
  when the item settles (its record in the foreach holds its result and header); an
  interrupted item keeps it, and a restart continues the item from it.
- Outcome. Success: the node succeeds with the level's output. Suspended: the node is
  suspended with the payload of its first suspended inner path, and carries the level's
  resume labels up. Tripwire: the node fails and carries the tripwire. Anything else:
  the node has that status and error. On success or suspension the nested level's state
  is merged into the parent's. Every result's metadata holds the level's header and the
  loop iteration.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .._errors import ValidationError
from .._model import ITERATION_COUNT, StepResult
from .._resume import ResumeTarget, nested_header
from .._serde import validate
from .._status import StepStatus
from ._level import LevelBook
from ._values import Announced, Label, NodeResume, Outcome, StepRun, merge_state

_S = StepStatus


@attrs.frozen(kw_only=True)
class NestedKeys:
    """Where a nested level keeps its records and how its steps' keys are scoped."""

    key_prefix: str
    key_scope: str
    record_key: str
    chunk_prefix: str


@attrs.frozen(kw_only=True)
class NestedOpening:
    """How a nested node opens: the header it continues from (``None``: a fresh run) and
    the fields every result of the node carries."""

    header: dict[str, Any] | None
    payload: Any
    started_at: int
    resume_payload: Any
    resumed_at: int | None

    @property
    def fresh(self) -> bool:
        return self.header is None

    def result(self, status: StepStatus, **fields: Any) -> StepResult:
        return StepResult(
            status=status,
            payload=self.payload,
            started_at=self.started_at,
            resume_payload=self.resume_payload,
            resumed_at=self.resumed_at,
            **fields,
        )


@attrs.frozen(kw_only=True)
class NestedStart:
    """Where the nested level's entry loop begins."""

    entry: int
    target: ResumeTarget | None
    restart: bool


@attrs.frozen(kw_only=True)
class FreshInput:
    """A fresh run's validated input, or the node's failed result (nothing runs)."""

    input: Any = None
    failed: StepRun | None = None


def nested_keys(
    *,
    parent_key_prefix: str,
    parent_key_scope: str,
    node_id: str,
    chunk_id: str,
    foreach_index: int | None,
    iteration: int,
) -> NestedKeys:
    index = f"[{foreach_index}]" if foreach_index is not None else ""
    loop = f"#{iteration}" if iteration else ""
    return NestedKeys(
        key_prefix=f"{parent_key_prefix}{node_id}{index}.",
        key_scope=f"{parent_key_scope}{node_id}{index}{loop}.",
        record_key=(
            parent_key_prefix + node_id
            if foreach_index is None
            else item_progress_key(parent_key_prefix, node_id, foreach_index)
        ),
        chunk_prefix=chunk_id + ".",
    )


def open_nested(value: Any, resume: NodeResume | None, announced: Announced) -> NestedOpening:
    stored = resume.stored if resume is not None else None
    header = nested_header(stored)
    continuing = header is not None and stored is not None
    if continuing and stored is not None and "payload" in stored:
        value = stored["payload"]
    return NestedOpening(
        header=header,
        payload=value,
        started_at=announced.started_at,
        resume_payload=resume.data if resume is not None and continuing else None,
        resumed_at=announced.resumed_at if continuing else None,
    )


def fresh_input(opening: NestedOpening, input_schema: Any, validate_inputs: bool, now: int) -> FreshInput:
    if input_schema is None or not validate_inputs:
        return FreshInput(input=opening.payload)
    try:
        return FreshInput(input=validate(opening.payload, input_schema, "Invalid step input:"))
    except ValidationError as exc:
        failed = opening.result(_S.FAILED, error=exc, ended_at=now)
        return FreshInput(failed=StepRun(result=failed))


def replaced_keys(stored_keys: Iterable[str], keys: NestedKeys) -> list[str]:
    """What a fresh run replaces: every record an earlier run left under its keys."""
    return [k for k in stored_keys if k.startswith(keys.key_prefix)]


def continued_state(own: Any, parent: Any) -> Any:
    """A continued nested level runs with the parent's current state merged over its own."""
    return merge_state(own, parent, None) if isinstance(parent, dict) else own


def continue_start(book: LevelBook, resume: NodeResume | None, entries: int) -> NestedStart:
    """Where a nested level rebuilt from its header begins."""
    entry = book.active_entry if book.active_entry is not None else entries
    tail = list(resume.tail) if resume is not None else []
    if resume is not None and not tail and not resume.restarting:
        paths = book.full_suspended_paths()
        tail = paths[0] if paths else []
    if resume is None or not tail or tail[0] not in book.suspended_paths:
        # (The last case: a restart replaying a resume whose target inside this workflow
        # had already been resumed and settled before the crash: the workflow goes on
        # from where it was, the resume is spent.)
        return NestedStart(entry=entry, target=None, restart=True)
    target = ResumeTarget(path=tail, foreach_index=resume.foreach_index)
    return NestedStart(entry=book.suspended_paths[tail[0]][0], target=target, restart=False)


FRESH_START = NestedStart(entry=0, target=None, restart=False)


def keeps_progress(durable: bool) -> bool:
    """Whether the node keeps a progress record (durable storage only)."""
    return durable


def item_progress_key(parent_key_prefix: str, node_id: str, foreach_index: int) -> str:
    """Where a foreach item's nested workflow keeps its progress record (an engine
    record: ``@``-named, never a step's result)."""
    return f"{parent_key_prefix}{node_id}[{foreach_index}].@progress"


def drops_progress_when_settled(foreach_index: int | None) -> bool:
    """A foreach item's progress record goes when the item settles (its record in the
    foreach holds the result); a node's own is replaced by its result."""
    return foreach_index is not None


def nested_metadata(header: dict[str, Any], iteration: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"nested": header}
    if iteration:
        metadata[ITERATION_COUNT] = iteration
    return metadata


def progress_record(
    *, payload_json: Any, started_at: int, header: dict[str, Any], iteration: int
) -> dict[str, Any]:
    return {
        "status": "running",
        "payload": payload_json,
        "started_at": started_at,
        "metadata": nested_metadata(header, iteration),
    }


def merges_state(outcome: Outcome) -> bool:
    return outcome.status in (_S.SUCCESS, _S.SUSPENDED)


def nested_result(
    outcome: Outcome, book: LevelBook, opening: NestedOpening, *, iteration: int, now: int
) -> StepRun:
    """The node's StepRun from how its level ended (``book``: the nested level)."""
    metadata = nested_metadata(book.header(), iteration)
    if outcome.status is _S.SUCCESS:
        result = opening.result(_S.SUCCESS, output=outcome.output, ended_at=now, metadata=metadata)
        return StepRun(result=result)
    if outcome.status is _S.SUSPENDED:
        paths = book.full_suspended_paths()
        first = book.suspend_payloads().get(".".join(paths[0])) if paths else None
        result = opening.result(
            _S.SUSPENDED, suspend_payload=first, suspended_at=now, metadata=metadata
        )
        labels = [
            Label(name, label.path, label.foreach_index)
            for name, label in book.resume_labels.items()
        ]
        return StepRun(result=result, labels=labels)
    status = _S.FAILED if outcome.status is _S.TRIPWIRE else outcome.status
    result = opening.result(status, error=outcome.error, ended_at=now, metadata=metadata)
    return StepRun(result=result, tripwire=outcome.tripwire)


def canceled(opening: NestedOpening, now: int) -> StepResult:
    return opening.result(_S.CANCELED, ended_at=now)
