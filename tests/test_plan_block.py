"""The planner of parallel entries and branches alone (synchronous, no trio): issue 15 part 6.

- Whatever order the branches' completions arrive in, the block's outcome, the records it
  settles and the multiset of its actions are the same (hypothesis over the permutations,
  and exhaustively for up to three branches), and they are the ones the rules give.
- Which branches run, fresh, on a resume target and on restart, and which arms of a
  branch entry run again: exhaustively over small shapes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow._core._journal import StepJournal
from trioflow._core._model import StepResult, TripwireInfo
from trioflow._core._plan._block import (
    BlockAction,
    BlockPlan,
    BranchCancelled,
    BranchSettled,
    BranchToRun,
    CancelOthers,
    PersistProgress,
    SettleBranch,
    arms_chosen_before,
    branch_record_key,
    choose_arms,
    select_branches,
)
from trioflow._core._plan._level import LevelBook
from trioflow._core._plan._values import NodeResume, Outcome, StepRun
from trioflow._core._resume import ResumeTarget
from trioflow._core._status import StepStatus

_S = StepStatus
IDS = ["a", "b", "c", "d", "e"]
PAYLOAD = {"in": 1}
IDX = 4

# How a branch ends: its node's run, or the block's fail_fast cancellation ("cut").
FATES = ["success", "failed", "suspended", "tripwire", "bailed", "canceled", "cut"]
_ERRORS = {b: ValueError(f"branch {b}") for b in range(len(IDS))}
_TRIPWIRES = {b: TripwireInfo(reason=f"trip {b}") for b in range(len(IDS))}


def _run(b: int, fate: str) -> StepRun:
    started = 10 + b
    if fate in ("success", "bailed"):
        result = StepResult(status=_S.SUCCESS, output=f"out {b}", started_at=started)
        return StepRun(result=result, bailed=fate == "bailed")
    if fate in ("failed", "tripwire"):
        result = StepResult(status=_S.FAILED, error=_ERRORS[b], started_at=started)
        return StepRun(result=result, tripwire=_TRIPWIRES[b] if fate == "tripwire" else None)
    status = _S.SUSPENDED if fate == "suspended" else _S.CANCELED
    return StepRun(result=StepResult(status=status, started_at=started))


def _event(b: int, fate: str) -> BranchSettled | BranchCancelled:
    if fate == "cut":
        return BranchCancelled(position=b, started_at=10 + b, now=99)
    return BranchSettled(position=b, run=_run(b, fate))


def _plan(n: int, *, fail_fast: bool) -> BlockPlan:
    return BlockPlan(
        idx=IDX,
        node_ids=IDS[:n],
        positions=list(range(n)),
        to_run=[BranchToRun(position=b, resume=None) for b in range(n)],
        fail_fast=fail_fast,
        payload=PAYLOAD,
        previous={},
    )


def _drive(
    fates: Sequence[str], order: Sequence[int], *, fail_fast: bool
) -> tuple[Outcome, dict[str, tuple[StepResult, tuple[int, int]]], Counter[str]]:
    """Feed the branches' events in ``order``: the outcome, the last record settled per
    node, and the multiset of actions."""
    plan = _plan(len(fates), fail_fast=fail_fast)
    records: dict[str, tuple[StepResult, tuple[int, int]]] = {}
    actions: list[BlockAction] = []
    for b in order:
        event = _event(b, fates[b])
        if isinstance(event, BranchSettled):
            step = plan.branch_settled(event)
        else:
            step = plan.branch_cancelled(event)
        for action in step:
            if isinstance(action, SettleBranch):
                records[action.node_id] = (action.run.result, action.entry_path)
        actions.extend(step)
    return plan.outcome(), records, Counter(repr(a) for a in actions)


def _causal_orders(fates: Sequence[str]) -> Iterator[tuple[int, ...]]:
    """The orders in which the events can arrive: a branch is cut only after a failure."""
    for order in itertools.permutations(range(len(fates))):
        first_failure = next(
            (i for i, b in enumerate(order) if fates[b] in ("failed", "tripwire")), None
        )
        cuts = [i for i, b in enumerate(order) if fates[b] == "cut"]
        if not cuts or (first_failure is not None and first_failure < min(cuts)):
            yield order


def _possible(fates: Sequence[str], fail_fast: bool) -> bool:
    if "cut" not in fates:
        return True
    return fail_fast and len(fates) > 1 and any(f in ("failed", "tripwire") for f in fates)


def _expected_outcome(fates: Sequence[str]) -> Outcome:
    """The rules, written out independently of the planner."""
    statuses = {
        "success": _S.SUCCESS,
        "bailed": _S.SUCCESS,
        "failed": _S.FAILED,
        "tripwire": _S.FAILED,
        "suspended": _S.SUSPENDED,
        "canceled": _S.CANCELED,
        "cut": _S.CANCELED,
    }
    seen = {statuses[f] for f in fates}
    failing = [b for b, f in enumerate(fates) if f in ("failed", "tripwire")]
    if failing:
        trips = [b for b, f in enumerate(fates) if f == "tripwire"]
        if trips:
            return Outcome(_S.TRIPWIRE, error=_ERRORS[failing[0]], tripwire=_TRIPWIRES[trips[0]])
        return Outcome(_S.FAILED, error=_ERRORS[failing[0]])
    if _S.SUSPENDED in seen:
        return Outcome(_S.SUSPENDED)
    if _S.CANCELED in seen:
        return Outcome(_S.CANCELED)
    bails = [b for b, f in enumerate(fates) if f == "bailed"]
    if bails:
        return Outcome(_S.BAILED, output=f"out {bails[0]}")
    return Outcome(_S.SUCCESS, output={IDS[b]: f"out {b}" for b in range(len(fates))})


def _check_every_order(fates: Sequence[str], fail_fast: bool) -> None:
    orders = list(_causal_orders(fates))
    assert orders
    first = _drive(fates, orders[0], fail_fast=fail_fast)
    outcome, records, actions = first
    assert outcome == _expected_outcome(fates)
    # Every branch is recorded once, at [entry index, its position].
    assert set(records) == set(IDS[: len(fates)])
    for b, fate in enumerate(fates):
        result, path = records[IDS[b]]
        assert path == (IDX, b)
        if fate == "cut":
            assert result == StepResult(
                status=_S.CANCELED, payload=PAYLOAD, started_at=10 + b, ended_at=99
            )
        else:
            assert result == _run(b, fate).result
    concurrent = len(fates) > 1
    failures = sum(f in ("failed", "tripwire") for f in fates)
    assert actions[repr(PersistProgress())] == (len(fates) - fates.count("cut")) * concurrent
    cancels = sum(n for a, n in actions.items() if a.startswith("CancelOthers("))
    assert cancels == (failures if fail_fast and concurrent else 0)
    for order in orders[1:]:
        assert _drive(fates, order, fail_fast=fail_fast) == first, order


@given(
    fates=st.lists(st.sampled_from(FATES), min_size=1, max_size=5),
    fail_fast=st.booleans(),
    data=st.data(),
)
def test_outcome_records_and_actions_do_not_depend_on_completion_order(
    fates: list[str], fail_fast: bool, data: Any
) -> None:
    if not _possible(fates, fail_fast):
        # Nothing cut these branches: they ended canceled on their own.
        fates = [f if f != "cut" else "canceled" for f in fates]
    orders = list(_causal_orders(fates))
    # Two arrival orders drawn from all the possible ones, compared with each other and
    # with the rules.
    one = data.draw(st.sampled_from(orders))
    other = data.draw(st.sampled_from(orders))
    expected = _drive(fates, one, fail_fast=fail_fast)
    assert expected[0] == _expected_outcome(fates)
    assert _drive(fates, other, fail_fast=fail_fast) == expected


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_order_of_up_to_three_branches(n: int) -> None:
    for fates in itertools.product(FATES, repeat=n):
        for fail_fast in (False, True):
            if _possible(fates, fail_fast):
                _check_every_order(fates, fail_fast)


def test_fail_fast_persists_then_cancels_the_others() -> None:
    plan = _plan(3, fail_fast=True)
    actions = plan.branch_settled(BranchSettled(position=1, run=_run(1, "failed")))
    assert actions == [
        SettleBranch(node_id="b", run=_run(1, "failed"), entry_path=(IDX, 1)),
        PersistProgress(),
        CancelOthers(position=1, reason="fail_fast: b failed"),
    ]


def test_a_single_branch_neither_persists_progress_nor_cancels() -> None:
    plan = _plan(1, fail_fast=True)
    assert not plan.concurrent
    actions = plan.branch_settled(BranchSettled(position=0, run=_run(0, "failed")))
    assert actions == [SettleBranch(node_id="a", run=_run(0, "failed"), entry_path=(IDX, 0))]


def test_a_branch_settled_before_its_cancellation_keeps_its_result() -> None:
    plan = _plan(2, fail_fast=True)
    plan.branch_settled(BranchSettled(position=0, run=_run(0, "success")))
    plan.branch_settled(BranchSettled(position=1, run=_run(1, "failed")))
    assert plan.branch_cancelled(BranchCancelled(position=0, started_at=10, now=99)) == []
    assert plan.outcome() == Outcome(_S.FAILED, error=_ERRORS[1])


def test_a_cancellation_nobody_asked_for_is_an_error() -> None:
    plan = _plan(2, fail_fast=False)
    with pytest.raises(RuntimeError, match="branch 1 reported cancelled"):
        plan.branch_cancelled(BranchCancelled(position=1, started_at=0, now=1))


def test_branches_not_run_now_count_with_their_stored_results() -> None:
    stored_failure = StepResult(status=_S.FAILED, error=ValueError("stored"))
    plan = BlockPlan(
        idx=0,
        node_ids=["a", "b", "c"],
        positions=[0, 1, 2],
        to_run=[BranchToRun(position=2, resume=None)],
        fail_fast=False,
        payload=None,
        previous={"a": StepResult(status=_S.SUCCESS, output=1), "b": stored_failure},
    )
    plan.branch_settled(BranchSettled(position=2, run=_run(2, "success")))
    assert plan.outcome() == Outcome(_S.FAILED, error=stored_failure.error)


def test_a_branch_that_ran_again_replaces_its_stored_result() -> None:
    plan = BlockPlan(
        idx=0,
        node_ids=["a", "b"],
        positions=[0, 1],
        to_run=[BranchToRun(position=1, resume=None)],
        fail_fast=False,
        payload=None,
        previous={
            "a": StepResult(status=_S.SUCCESS, output=1),
            "b": StepResult(status=_S.FAILED, error=ValueError("before")),
        },
    )
    plan.branch_settled(BranchSettled(position=1, run=_run(1, "success")))
    assert plan.outcome() == Outcome(_S.SUCCESS, output={"a": 1, "b": "out 1"})


def test_only_the_considered_arms_make_the_output() -> None:
    plan = BlockPlan(
        idx=0,
        node_ids=["a", "b", "c"],
        positions=[2],
        to_run=[BranchToRun(position=2, resume=None)],
        fail_fast=False,
        payload=None,
        previous={"a": StepResult(status=_S.SUCCESS, output=1)},
    )
    plan.branch_settled(BranchSettled(position=2, run=_run(2, "success")))
    assert plan.outcome() == Outcome(_S.SUCCESS, output={"c": "out 2"})


# --- which branches run ------------------------------------------------------------------

PREVIOUS = [None, "success", "failed", "suspended", "canceled", "nested-running"]


def _book(previous: Sequence[str | None]) -> LevelBook:
    book = LevelBook(
        stored=StepJournal(),
        run_id="run-1",
        resume_data={"ok": True},
        state_schema=None,
        key_prefix="w.",
        chunk_prefix="",
        input=None,
        state=None,
        is_root=False,
    )
    for node_id, kind in zip(IDS, previous, strict=False):
        if kind is None:
            continue
        nested = kind == "nested-running"
        status = _S.RUNNING if nested else _S(kind)
        book.results[node_id] = StepResult(status=status)
        record: dict[str, Any] = {"status": status.value}
        if nested:
            record["metadata"] = {"nested": {"execution_path": []}}
        book.stored["w." + node_id] = record
    return book


def _targets(n: int) -> list[ResumeTarget | None]:
    return [None, ResumeTarget(path=["elsewhere"])] + [
        ResumeTarget(path=[IDS[b], "inner"], foreach_index=b) for b in range(n)
    ]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_branch_selection_table(n: int) -> None:
    node_ids = IDS[:n]
    subsets = [
        list(c) for k in range(n + 1) for c in itertools.combinations(range(n), k)
    ]
    for previous in itertools.product(PREVIOUS, repeat=n):
        book = _book(previous)
        for positions, target, restart in itertools.product(subsets, _targets(n), (False, True)):
            chosen = select_branches(book, node_ids, positions, target, restart=restart)
            if target is not None:
                expected = [
                    BranchToRun(
                        position=b,
                        resume=NodeResume(
                            data={"ok": True},
                            tail=["inner"],
                            stored=book.stored.get("w." + node_ids[b]),
                            foreach_index=b,
                        ),
                    )
                    for b in positions
                    if target.path[0] == node_ids[b]
                ]
            elif restart:
                expected = [
                    BranchToRun(
                        position=b,
                        resume=NodeResume(
                            data=None, tail=[], stored=book.stored["w." + node_ids[b]],
                            restarting=True,
                        )
                        if previous[b] == "nested-running"
                        else None,
                    )
                    for b in positions
                    if previous[b] != "success"
                ]
            else:
                expected = [BranchToRun(position=b, resume=None) for b in positions]
            assert chosen == expected, (previous, positions, target, restart)


RECORDS: list[dict[str, Any] | None] = [
    None,
    {"status": "success", "metadata": {}},
    {"status": "success", "metadata": {"chosen": []}},
    {"status": "success", "metadata": {"chosen": [1]}},
    {"status": "success", "metadata": {"chosen": [0, 2]}},
]


def test_arms_chosen_before_table() -> None:
    node_ids = ["a", "b", "c"]
    for record, resuming, restart, with_results in itertools.product(
        RECORDS, (False, True), (False, True), ([], ["b"], ["a", "c"])
    ):
        results = {n: StepResult(status=_S.SUCCESS) for n in with_results}
        got = arms_chosen_before(
            record, node_ids, results, resuming=resuming, restart=restart
        )
        metadata = (record or {}).get("metadata", {})
        if not resuming and not (restart and metadata):
            assert got is None
            continue
        stored = metadata.get("chosen")
        ran = [node_ids.index(n) for n in with_results]
        assert got == (stored if stored else ran), (record, resuming, restart, with_results)


def test_choose_arms_keeps_the_choice_in_its_record() -> None:
    arms = choose_arms([True, False, True])
    assert arms.chosen == [0, 2]
    assert arms.record == {"status": "success", "metadata": {"chosen": [0, 2]}}
    assert choose_arms([False, False]).chosen == []
    assert branch_record_key("outer.", 3) == "outer.@branch3"
