"""The planner of parallel entries and branches (pure, trio-free).

Rules:

- Which branches run. Fresh: every branch considered. On a resume target: the branches the
  target's path names (each with its :class:`NodeResume`). On a restart: every considered
  branch whose stored result is not ``success`` (a nested workflow continues from its own
  stored header); the ones that succeeded keep their results.
- Which arms of a branch entry are considered. Fresh: the arms whose condition is true,
  stored as the ``@branch<idx>`` record. On a resume target, or on a restart with that
  record: the arms chosen then (or, with no record, the arms that have a result); the
  conditions are not evaluated again.
- A branch that settles is recorded at once, at ``[entry index, branch position]``. When
  more than one branch runs, its progress is persisted. A branch that fails under
  ``fail_fast`` cancels every other branch; a branch cancelled that way settles
  ``canceled`` (payload: the block's input; started when it was announced). A branch
  that settled before its cancellation arrived keeps its result.
- The block's outcome, from the results of every considered branch (this run's, or the
  stored one for a branch that did not run): the status by
  :func:`~trioflow._core._status.combine_branch_statuses`; when failed, the error of the
  lowest failing branch, and ``tripwire`` if any branch raised a tripwire (the lowest);
  when successful, a bail (the lowest bailing branch) ends the block ``bailed`` with its
  output, else the output is ``{node id: output}`` of the successful branches. None of
  this depends on the order the branches complete in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._model import StepResult, TripwireInfo
from .._resume import ResumeTarget
from .._status import StepStatus, combine_branch_statuses
from ._level import LevelBook
from ._values import NodeResume, Outcome, StepRun

_S = StepStatus


# --- which branches and arms ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BranchToRun:
    """One branch to run: its position in the block and how it resumes (or None)."""

    position: int
    resume: NodeResume | None


def select_branches(
    book: LevelBook,
    node_ids: Sequence[str],
    positions: Sequence[int],
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> list[BranchToRun]:
    """The branches among ``positions`` that run now, in position order."""
    if target is not None:
        resumes = ((b, book.node_resume(node_ids[b], target)) for b in positions)
        return [BranchToRun(position=b, resume=r) for b, r in resumes if r is not None]
    if restart:
        return [
            BranchToRun(position=b, resume=book.restart_resume(node_ids[b]))
            for b in positions
            if not _succeeded(book.results.get(node_ids[b]))
        ]
    return [BranchToRun(position=b, resume=None) for b in positions]


def _succeeded(result: StepResult | None) -> bool:
    return result is not None and result.status is _S.SUCCESS


def branch_record_key(key_prefix: str, idx: int) -> str:
    """The engine record of a branch entry's chosen arms (``@``: never a step id)."""
    return f"{key_prefix}@branch{idx}"


def arms_chosen_before(
    record: Mapping[str, Any] | None,
    node_ids: Sequence[str],
    results: Mapping[str, StepResult],
    *,
    resuming: bool,
    restart: bool,
) -> list[int] | None:
    """The arms a resumed or restarted branch entry runs again, or None: evaluate the
    conditions (a fresh run, or a restart before the choice was stored)."""
    chosen = (record or {}).get("metadata", {})
    if not resuming and not (restart and chosen):
        return None
    stored: list[int] | None = chosen.get("chosen")
    return stored or [b for b, node_id in enumerate(node_ids) if node_id in results]


@attrs.frozen(kw_only=True)
class ArmsChosen:
    """The arms whose condition held, and the record that keeps the choice."""

    chosen: list[int]
    record: dict[str, Any]


def choose_arms(truth: Sequence[bool]) -> ArmsChosen:
    chosen = [b for b, held in enumerate(truth) if held]
    return ArmsChosen(chosen=chosen, record={"status": "success", "metadata": {"chosen": chosen}})


# --- events -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BranchSettled:
    """A branch's node ran to a result."""

    position: int
    run: StepRun


@attrs.frozen(kw_only=True)
class BranchCancelled:
    """A branch's node was interrupted by the block's fail_fast cancellation."""

    position: int
    started_at: int
    now: int


# --- actions ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SettleBranch:
    """Record ``run`` as the result of ``node_id`` at ``entry_path``."""

    node_id: str
    run: StepRun
    entry_path: tuple[int, int]


@attrs.frozen(kw_only=True)
class PersistProgress:
    """Store what has settled inside the running block (durable runs)."""


@attrs.frozen(kw_only=True)
class CancelOthers:
    """Cancel every branch but ``position`` (those already settled are unaffected)."""

    position: int
    reason: str


BlockAction = SettleBranch | PersistProgress | CancelOthers

#: One value for every progress write (the step path is hot: no allocation per branch).
PERSIST_PROGRESS = PersistProgress()


# --- the block --------------------------------------------------------------------------


class BlockPlan:
    """One run of a parallel entry (or of a branch entry's arms): turns its branches'
    events into actions and, once all have settled, gives the block's outcome."""

    __slots__ = (
        "_cancel_requested",
        "_fail_fast",
        "_idx",
        "_node_ids",
        "_payload",
        "_positions",
        "_previous",
        "_runs",
        "concurrent",
        "to_run",
    )

    def __init__(
        self,
        *,
        idx: int,
        node_ids: Sequence[str],
        positions: Sequence[int],
        to_run: Sequence[BranchToRun],
        fail_fast: bool,
        payload: Any,
        previous: Mapping[str, StepResult],
    ) -> None:
        self._idx = idx
        self._node_ids = list(node_ids)
        self._positions = list(positions)
        self.to_run = list(to_run)
        self._fail_fast = fail_fast
        self._payload = payload
        # The results of the branches that do not run now: they take part in the outcome.
        self._previous = {n: previous[n] for n in self._node_ids if n in previous}
        self._runs: dict[int, StepRun] = {}
        self._cancel_requested = False
        #: More than one branch runs: they are announced first, then run in a nursery.
        self.concurrent = len(self.to_run) > 1

    def branch_settled(self, event: BranchSettled) -> list[BlockAction]:
        b = event.position
        run = event.run
        self._runs[b] = run
        actions: list[BlockAction] = [self._settle(b, run)]
        if self.concurrent:
            actions.append(PERSIST_PROGRESS)
            if self._fail_fast and run.result.status is _S.FAILED:
                self._cancel_requested = True
                reason = f"fail_fast: {self._node_ids[b]} failed"
                actions.append(CancelOthers(position=b, reason=reason))
        return actions

    def branch_cancelled(self, event: BranchCancelled) -> list[BlockAction]:
        b = event.position
        if not self._cancel_requested:
            raise RuntimeError(f"branch {b} reported cancelled, but no branch cancelled it")
        if b in self._runs:
            return []
        canceled = StepResult(
            status=_S.CANCELED,
            payload=self._payload,
            started_at=event.started_at,
            ended_at=event.now,
        )
        self._runs[b] = StepRun(result=canceled)
        return [self._settle(b, self._runs[b])]

    def _settle(self, b: int, run: StepRun) -> SettleBranch:
        return SettleBranch(node_id=self._node_ids[b], run=run, entry_path=(self._idx, b))

    def _result(self, b: int) -> StepResult | None:
        run = self._runs.get(b)
        return run.result if run is not None else self._previous.get(self._node_ids[b])

    def outcome(self) -> Outcome:
        """The block's outcome (call once every branch that runs has settled)."""
        statuses: list[StepStatus] = []
        output: dict[str, Any] = {}
        for b in self._positions:
            result = self._result(b)
            if result is None:
                continue
            statuses.append(result.status)
            if result.status is _S.SUCCESS:
                output[self._node_ids[b]] = result.output
        status = combine_branch_statuses(statuses, canceled=False)
        if status is _S.FAILED:
            return self._failed()
        if status is _S.SUCCESS:
            bail = next((self._runs[b] for b in sorted(self._runs) if self._runs[b].bailed), None)
            if bail is not None:
                return Outcome(_S.BAILED, output=bail.result.output)
            return Outcome(status, output=output)
        return Outcome(status)

    def _failed(self) -> Outcome:
        # The lowest failing branch is reported: the outcome does not depend on which
        # branch completed first. A failure stored earlier counts only when none ran now.
        failed_now = [b for b in sorted(self._runs) if self._runs[b].result.status is _S.FAILED]
        if failed_now:
            error = self._runs[failed_now[0]].result.error
        else:
            error = next(
                r.error
                for b in range(len(self._node_ids))
                if (r := self._result(b)) is not None and r.status is _S.FAILED
            )
        tripwire: TripwireInfo | None = next(
            (
                run.tripwire
                for b in self._positions
                if (run := self._runs.get(b)) is not None and run.tripwire is not None
            ),
            None,
        )
        if tripwire is not None:
            return Outcome(_S.TRIPWIRE, error=error, tripwire=tripwire)
        return Outcome(_S.FAILED, error=error)
