"""The foreach planner: which items run (and which as resumes), what each settled item
records and reports, and how the foreach ends (pure: time passed in, no trio).

Rules:

- The items are the stored input when the foreach is resumed or restarted (the node's
  stored record has ``payload``), else the value given. A value that is not a list fails
  the foreach at once (``not_a_list``).
- Stored item records (``metadata.foreach.outcomes``) are read only on a resume or a
  restart. An item ``running`` when the execution stopped runs again (at least once); it
  runs as a resume again if it was a suspended item being resumed (``prior``).
- A ``success`` item never runs again. A stored ``bailed`` item: no item runs, and the
  foreach ends as that bail.
- ``resumed`` names the resume (its token) an item record was written during. A replay
  of that same resume (after a crash) leaves an item that suspended or failed during it as
  it is; a restart (no resume) leaves every settled item as it is.
- An item that suspended or failed had stopped the foreach from taking new items: on a
  restart (or a replay of the resume it happened in) the items never taken stay so.
- A suspended item (from before this resume) is resumed when the resume targets it
  (``foreach_index`` None or its index); otherwise it stays suspended with its payload.
  On a restart, a suspended item that still has a nested progress record was being
  resumed when the execution stopped, after that resume was spent: it continues from
  its progress (and does not count as having stopped the foreach).
- Items are taken in index order by ``concurrency`` lanes; a taken item is recorded as
  ``running`` (with its ``prior`` record) until it settles. After an item suspends, fails
  or bails no new item is taken; the items in flight still settle, and so do the items
  that were in flight when the execution stopped (they run again whatever settles first).
- Outcome, in this order: the failed item with the lowest index (recorded, on a restart or
  replayed resume, or new), whatever order items finished in; else the bail with the
  lowest index (new, else stored); else suspended with the payload of the lowest suspended
  index and the resume labels of every suspended item; else success with every output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import attrs

from .._chunks import StepProgressPayload
from .._model import StepResult
from .._resume import nested_header
from .._serde import dump_error, load_error, to_jsonable
from .._status import StepStatus
from ._records import VALUE, start_times, type_name
from ._values import Label, NodeResume, Outcome, StepRun

_S = StepStatus

Record = dict[str, Any]
#: Builds a NamedTuple without its Python-level ``__new__`` (the per-item path).
_new = tuple.__new__


# Item values are NamedTuples, not frozen attrs classes: one of each per item, and a
# frozen attrs __init__ costs the 10,000-item benchmark about 3%.
class ItemRun(NamedTuple):
    """Run item ``foreach_index`` now (as a resume when ``resume`` is set)."""

    foreach_index: int
    resume: NodeResume | None


class ItemSettledActions(NamedTuple):
    """What to do after an item settled: the progress chunk to publish (None: step events
    are off), and whether the lanes stop taking items."""

    record: Record
    chunk: StepProgressPayload | None
    stop: bool


@attrs.frozen(kw_only=True)
class Settle:
    """End the foreach: its result (to emit and record), the run to settle at the level
    (tripwire, labels) and the entry's outcome."""

    result: StepResult
    run: StepRun
    outcome: Outcome


def foreach_input(value: Any, stored: Record | None) -> Any:
    """The items: the stored input of a resumed or restarted foreach, else ``value``."""
    if stored is not None and "payload" in stored:
        return stored["payload"]
    return value


def not_a_list(value: Any, started_at: int, now: int) -> Settle | None:
    """The failure of a foreach given something else than a list, or None."""
    if isinstance(value, list):
        return None
    error = TypeError(f"foreach expects a list, got {type_name(value)}")
    result = StepResult(
        status=_S.FAILED, payload=value, error=error, started_at=started_at, ended_at=now
    )
    return Settle(
        result=result, run=StepRun(result=result), outcome=Outcome(_S.FAILED, error=error)
    )


def _status(record: Record | None) -> str | None:
    return record.get("status") if record else None


class ForeachPlan:
    """One execution of a foreach entry: the replay plan, then the items as they settle."""

    def __init__(
        self,
        *,
        items: list[Any],
        stored: Record | None,
        resume: NodeResume | None,
        resume_token: str | None,
        chunk_id: str,
        emit: bool,
        now: int,
        item_progress: Callable[[int], Record | None] | None = None,
    ) -> None:
        """``stored``: the node's stored record when the foreach is resumed or restarted
        (else None); ``resume_token``: the execution's resume (None outside a resume);
        ``item_progress``: the progress record an item in flight left (a nested workflow's
        header), by index, when the node is a nested workflow on durable storage."""
        self.item_progress = item_progress
        self.items = items
        self.resume = resume
        self.resume_token = resume_token
        self.chunk_id = chunk_id
        self.emit = emit
        self.started_at, self.resumed_at = start_times(now, resume, stored)
        total = len(items)
        self.total = total
        previous: list[Record | None] = [None] * total
        if stored is not None:
            saved = ((stored.get("metadata") or {}).get("foreach") or {}).get("outcomes") or []
            previous[: len(saved)] = saved[:total]
        self.previous = previous
        self.outcomes: list[Record | None] = list(previous)
        self.outputs: list[Any] = [p.get("output") if p else None for p in previous]
        self.suspended_payloads: dict[int, Any] = {}
        self.runs: dict[int, StepRun] = {}
        self.completed = 0
        self.stop = False
        self.first_failure: int | None = None
        self.bailed: int | None = None
        self.stored_bail = next((i for i, p in enumerate(previous) if _status(p) == "bailed"), None)
        #: Items in flight when the execution stopped: they run again even after another
        #: item stops the foreach (they had been taken before it stopped).
        self.replayed: set[int] = set()
        self.plan: list[ItemRun] = self._replay_plan()
        self._next = 0
        self._items_json: Any = None

    # --- the replay plan -------------------------------------------------------------------

    def _settled_here(self, record: Record | None) -> bool:
        """Settled in what this execution continues: any record on a restart, one written
        during this very resume on a replayed resume."""
        return record is not None and (
            self.resume is None or record.get("resumed") == self.resume_token
        )

    def _resumed_before(self, i: int, record: Record | None) -> NodeResume | None:
        """A restart (no resume) of an item recorded ``suspended`` that a resume had taken
        again and whose progress outlived it (the resume was spent once its resumed inner
        step settled; the foreach's record was not written since): it continues from that
        progress, not suspended again with its resumed step forgotten."""
        if self.resume is not None or _status(record) != "suspended":
            return None
        return self._continuing(i)

    def _replay_plan(self) -> list[ItemRun]:
        # An item that suspended or failed had stopped the foreach taking new items.
        stopped = any(
            _status(p) in ("suspended", "failed")
            and self._settled_here(p)
            and self._resumed_before(i, p) is None
            for i, p in enumerate(self.previous)
        )
        plan: list[ItemRun] = []
        for i, prev in enumerate(self.previous):
            if prev is None:
                # Never taken (all items of a first run): the per-item path. (Or taken
                # before the foreach's first write: a nested item may have progress.)
                if not stopped and self.stored_bail is None:
                    resume = None if self.item_progress is None else self._continuing(i)
                    if resume is not None:
                        self.replayed.add(i)
                    plan.append(_new(ItemRun, (i, resume)))
                continue
            if _status(prev) == "running":
                self.replayed.add(i)
                prev = (prev or {}).get("prior")
                if not (_status(prev) == "suspended" and self.resume is not None):
                    plan.append(ItemRun(i, self._continuing(i)))
                    continue
            item = self._plan_item(i, prev, stopped)
            if item is not None:
                plan.append(item)
        return plan

    def _continuing(self, i: int) -> NodeResume | None:
        """An item in flight when the execution stopped whose nested workflow left its
        progress: it continues from there (its finished inner steps do not run again)."""
        if self.item_progress is None:
            return None
        progress = self.item_progress(i)
        if nested_header(progress) is None:
            return None
        return NodeResume(data=None, tail=[], stored=progress, restarting=True)

    def _plan_item(self, i: int, prev: Record | None, stopped: bool) -> ItemRun | None:
        status = _status(prev)
        if status == "success" or self.stored_bail is not None:
            return None
        resume = self.resume
        resumed = (prev or {}).get("resumed")
        if status == "suspended" and resumed is not None and resumed == self.resume_token:
            # Suspended during this very resume (before a crash): it stays suspended.
            self.suspended_payloads[i] = (prev or {}).get("suspend_payload")
            return None
        if (status is None and stopped) or (status == "failed" and self._settled_here(prev)):
            return None
        if status == "suspended":
            continuing = self._resumed_before(i, prev)
            if continuing is not None:
                self.replayed.add(i)
                return ItemRun(i, continuing)
            if resume is not None and resume.foreach_index in (None, i):
                item_resume = NodeResume(
                    data=resume.data, tail=resume.tail, stored=prev, foreach_index=None
                )
                return ItemRun(i, item_resume)
            self.suspended_payloads[i] = (prev or {}).get("suspend_payload")
            return None
        return ItemRun(i, None)

    # --- the lanes -------------------------------------------------------------------------

    def take(self) -> ItemRun | None:
        """The next item for a free lane (recorded as running), or None: no more items."""
        taken = self._next
        if taken >= len(self.plan) or (self.stop and self.plan[taken][0] not in self.replayed):
            return None
        item = self.plan[taken]
        self._next = taken + 1
        # Recorded with the next progress write: a restart re-runs items that were in
        # flight, and does not start the ones that were never taken.
        outcomes = self.outcomes
        index = item[0]
        outcomes[index] = {"status": "running", "prior": outcomes[index]}
        return item

    @property
    def lanes_wanted(self) -> int:
        """How many lanes to open for ``concurrency``: never more than items to run."""
        return len(self.plan)

    def item_settled(self, index: int, run: StepRun) -> ItemSettledActions:
        """Item ``index`` settled with ``run``: its record, its progress chunk, and
        whether to stop taking items. (No time: an item record keeps none, as in Mastra
        1.71, and reading the clock per item would cost the item path.)"""
        self.runs[index] = run
        result = run.result
        record: Record = {"status": VALUE[result.status]}
        if self.resume_token is not None:
            # Settled during this resume (resumed, or started fresh by it): a replay of
            # the same resume after a crash leaves this record as it is.
            record["resumed"] = self.resume_token
        if result.metadata:
            record["metadata"] = to_jsonable(result.metadata)
        if result.payload is not None:
            record["payload"] = to_jsonable(result.payload)
        if result.retry_count:
            record["retry_count"] = result.retry_count
        if result.status is _S.SUCCESS and not run.bailed:
            # The common case inline (the per-item path): its output, once as JSON for
            # both the record and the chunk.
            self.completed += 1
            self.outputs[index] = result.output
            output = record["output"] = to_jsonable(result.output)
            iteration_status = "success"
        else:
            iteration_status = self._record_end(index, run, record)
            output = None
        self.outcomes[index] = record
        chunk = None
        if self.emit:
            chunk = StepProgressPayload(
                id=self.chunk_id,
                step_name=self.chunk_id,
                completed_count=self.completed,
                total_count=self.total,
                current_index=index,
                iteration_status=iteration_status,
                iteration_output=output,
            )
        return _new(ItemSettledActions, (record, chunk, self.stop))

    def _record_end(self, i: int, run: StepRun, record: Record) -> str:
        """An item that did not simply succeed: its record's end, its progress status."""
        result = run.result
        self.stop = True
        if run.bailed:
            self.bailed = i if self.bailed is None else min(self.bailed, i)
            self.completed += 1
            record["status"] = "bailed"
            record["output"] = to_jsonable(result.output)
            return "failed"
        if result.status is _S.SUSPENDED:
            self.suspended_payloads[i] = result.suspend_payload
            record["suspend_payload"] = to_jsonable(result.suspend_payload)
            if run.labels:
                record["labels"] = [lab.name for lab in run.labels]
            return "suspended"
        self.completed += 1
        if result.error is not None:
            record["error"] = dump_error(result.error)
        # Every item in flight settles before the outcome is decided: report the failure
        # with the lowest index, not whichever item happened to finish first.
        if self.first_failure is None or i < self.first_failure:
            self.first_failure = i
        return "failed"

    def progress_record(self) -> Record:
        """The node's durable record while items run (written with each progress write)."""
        if self._items_json is None:
            self._items_json = to_jsonable(self.items)
        return {
            "status": "running",
            "payload": self._items_json,
            "started_at": self.started_at,
            "metadata": {"foreach": {"outcomes": list(self.outcomes)}},
        }

    # --- the end ---------------------------------------------------------------------------

    def cancelled(self, now: int) -> StepResult:
        """The foreach's result when cancelled: the item records stay, so that a restart
        (if the runtime, not the user, interrupted the run) continues with the items that
        finished."""
        return StepResult(
            status=_S.CANCELED,
            payload=self.items,
            started_at=self.started_at,
            ended_at=now,
            metadata={"foreach": {"outcomes": list(self.outcomes)}},
        )

    def _recorded_failure(self) -> None:
        """A restart (or a replayed resume) of a foreach whose item had failed: the lowest
        failed item, recorded or new, is the outcome."""
        if self.resume is not None and self.resume_token is None:
            return
        recorded = next(
            (
                i
                for i, p in enumerate(self.previous)
                if _status(p) == "failed" and self._settled_here(p)
            ),
            None,
        )
        if recorded is None or (self.first_failure is not None and self.first_failure <= recorded):
            return
        self.first_failure = recorded
        self.runs[recorded] = StepRun(
            result=StepResult(
                status=_S.FAILED,
                error=load_error((self.previous[recorded] or {}).get("error"))
                or RuntimeError(f"foreach item {recorded} failed before a restart"),
            )
        )

    def outcome(self, now: int) -> Settle:
        """How the foreach ends once every item taken has settled."""
        self._recorded_failure()
        if self.stored_bail is not None and self.bailed is None:
            self.bailed = self.stored_bail
            bail_record = self.previous[self.stored_bail] or {}
            self.runs[self.stored_bail] = StepRun(
                result=StepResult(status=_S.SUCCESS, output=bail_record.get("output")),
                bailed=True,
            )
        resume = self.resume
        base: dict[str, Any] = {
            "payload": self.items,
            "started_at": self.started_at,
            "metadata": {"foreach": {"outcomes": self.outcomes}},
            "resume_payload": resume.data if resume is not None else None,
            "resumed_at": self.resumed_at,
        }
        if self.first_failure is not None:
            failed = self.runs[self.first_failure]
            error = failed.result.error
            result = StepResult(status=_S.FAILED, error=error, ended_at=now, **base)
            run = StepRun(result=result, tripwire=failed.tripwire)
            if failed.tripwire is not None:
                return Settle(
                    result=result,
                    run=run,
                    outcome=Outcome(_S.TRIPWIRE, error=error, tripwire=failed.tripwire),
                )
            return Settle(result=result, run=run, outcome=Outcome(_S.FAILED, error=error))
        if self.bailed is not None:
            value = self.runs[self.bailed].result.output
            result = StepResult(status=_S.SUCCESS, output=value, ended_at=now, **base)
            return Settle(
                result=result, run=StepRun(result=result), outcome=Outcome(_S.BAILED, output=value)
            )
        if self.suspended_payloads:
            first = min(self.suspended_payloads)
            result = StepResult(
                status=_S.SUSPENDED,
                suspend_payload=self.suspended_payloads[first],
                suspended_at=now,
                **base,
            )
            return Settle(
                result=result,
                run=StepRun(result=result, labels=self.labels()),
                outcome=Outcome(_S.SUSPENDED),
            )
        result = StepResult(status=_S.SUCCESS, output=self.outputs, ended_at=now, **base)
        return Settle(
            result=result,
            run=StepRun(result=result),
            outcome=Outcome(_S.SUCCESS, output=self.outputs),
        )

    def labels(self) -> list[Label]:
        """The resume labels of every suspended item, by index."""
        labels: list[Label] = []
        for i, record in enumerate(self.outcomes):
            if _status(record) == "suspended":
                labels.extend(Label(name, [], i) for name in (record or {}).get("labels") or [])
        return labels
