"""The foreach planner alone (synchronous, no trio): the replay plan over every small
shape of stored item records, resume target and restart, and the records, progress chunks
and outcome whatever order concurrent items settle in (issue 15 part 6)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trioflow._core._model import StepResult
from trioflow._core._plan._foreach import ForeachPlan, not_a_list
from trioflow._core._plan._values import Label, NodeResume, StepRun
from trioflow._core._status import StepStatus

_S = StepStatus
TOKEN = "tok-this"
OLD = "tok-old"

#: Stored item records by name: every state an item record can hold.
STATES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "success": {"status": "success", "output": "ok"},
    "failed": {"status": "failed", "error": {"message": "boom", "name": "ValueError"}},
    "failed-here": {"status": "failed", "resumed": TOKEN, "error": {"message": "x"}},
    "suspended": {"status": "suspended", "suspend_payload": "s", "labels": ["go"]},
    "suspended-old": {"status": "suspended", "resumed": OLD, "suspend_payload": "o"},
    "suspended-here": {"status": "suspended", "resumed": TOKEN, "suspend_payload": "h"},
    "running-fresh": {"status": "running", "prior": None},
    "running-resume": {
        "status": "running",
        "prior": {"status": "suspended", "suspend_payload": "p"},
    },
    "bailed": {"status": "bailed", "output": "b"},
}

#: The suspend payload of each suspended state (a running resume: of its prior record).
PAYLOADS = {"suspended": "s", "suspended-old": "o", "running-resume": "p"}

#: Resume targets: None (no resume of this foreach), or the index resumed (None: all).
NO_RESUME = "no-resume"


def _plan(names: tuple[str, ...], target: Any, restart: bool, token: str | None) -> ForeachPlan:
    records = [STATES[name] for name in names]
    stored = {
        "status": "suspended",
        "payload": list(range(len(names))),
        "started_at": 5,
        "metadata": {"foreach": {"outcomes": records}},
    }
    resume = None
    if target != NO_RESUME:
        resume = NodeResume(data={"ok": 1}, tail=[], stored=stored, foreach_index=target)
    read = resume is not None or restart
    return ForeachPlan(
        items=list(range(len(names))),
        stored=stored if read else None,
        resume=resume,
        resume_token=token if resume is not None else None,
        chunk_id="each",
        emit=True,
        now=100,
    )


def _expected(
    names: tuple[str, ...], target: Any, restart: bool
) -> tuple[dict[int, str], dict[int, Any]]:
    """The replay plan as a decision table, written independently of the planner:
    ``({index: "run" | "resume"}, {index: suspend payload of an item staying suspended})``."""
    resuming = target != NO_RESUME
    if not resuming and not restart:
        names = tuple("none" for _ in names)  # a first run reads no stored record

    def here(name: str) -> bool:
        # Settled in what this execution continues.
        return name != "none" and (not resuming or name.endswith("-here"))

    stopped = any(n.startswith(("failed", "suspended")) and here(n) for n in names)
    bailed = "bailed" in names
    runs: dict[int, str] = {}
    staying: dict[int, Any] = {}
    for i, name in enumerate(names):
        if name == "running-fresh" or (name == "running-resume" and not resuming):
            runs[i] = "run"
            continue
        if name == "running-resume":
            name = "suspended"  # its prior record: resumed again
        if name == "success" or bailed:
            continue
        if name == "suspended-here":
            staying[i] = "h"
        elif name == "none":
            if not stopped:
                runs[i] = "run"
        elif name.startswith("failed"):
            if not here(name):
                runs[i] = "run"
        elif resuming and target in (None, i):
            runs[i] = "resume"
        else:
            staying[i] = PAYLOADS[names[i]]
    return runs, staying


SHAPES = [
    names
    for n in range(5)
    for names in itertools.product(STATES, repeat=n)
    # Four items over every state is 10^4 shapes per target: four items run over the
    # states that matter most, fewer items over all of them.
    if n < 4
    or all(
        name in ("none", "success", "suspended", "failed-here", "running-fresh") for name in names
    )
]


def _targets(n: int) -> list[Any]:
    return [NO_RESUME, None, *range(n)]


def test_the_replay_plan_over_every_small_shape() -> None:
    checked = 0
    for names in SHAPES:
        for target in _targets(len(names)):
            for restart in (False, True):
                plan = _plan(names, target, restart, TOKEN)
                runs, staying = _expected(names, target, restart)
                got = {
                    item.foreach_index: ("resume" if item.resume is not None else "run")
                    for item in plan.plan
                }
                assert got == runs, (names, target, restart)
                assert [item.foreach_index for item in plan.plan] == sorted(runs), "index order"
                assert plan.suspended_payloads == staying, (names, target, restart)
                for item in plan.plan:
                    if item.resume is not None:
                        # Resumed with the resume data, on its own stored record.
                        assert item.resume.data == {"ok": 1}
                        assert item.resume.foreach_index is None
                        assert item.resume.stored is not None
                        assert item.resume.stored["status"] == "suspended"
                checked += 1
    assert checked > 10_000


def _succeed(plan: ForeachPlan) -> list[Any]:
    """Run every planned item one after the other, each returning ``index * 10``."""
    chunks = []
    while (item := plan.take()) is not None:
        run = StepRun(result=StepResult(status=_S.SUCCESS, output=item.foreach_index * 10))
        chunks.append(plan.item_settled(item.foreach_index, run).chunk)
    return chunks


def test_the_outcome_over_every_small_shape_when_the_items_run_succeed() -> None:
    for names in SHAPES:
        for target in _targets(len(names)):
            for restart in (False, True):
                plan = _plan(names, target, restart, TOKEN)
                runs, staying = _expected(names, target, restart)
                _succeed(plan)
                settle = plan.outcome(now=300)
                read = target != NO_RESUME or restart
                seen = names if read else tuple("none" for _ in names)
                # A recorded failure counts when it is part of what this execution
                # continues (any on a restart, this resume's on a replayed resume).
                resuming = target != NO_RESUME
                failed = [
                    i
                    for i, n in enumerate(seen)
                    if n.startswith("failed") and (not resuming or n.endswith("-here"))
                ]
                status = settle.outcome.status
                if failed:
                    assert status is _S.FAILED, (names, target, restart)
                    assert settle.result.status is _S.FAILED
                elif "bailed" in seen:
                    assert status is _S.BAILED
                    assert settle.outcome.output == "b"
                elif staying:
                    assert status is _S.SUSPENDED, (names, target, restart)
                    assert settle.result.suspend_payload == staying[min(staying)]
                    assert settle.result.suspended_at == 300
                else:
                    assert status is _S.SUCCESS, (names, target, restart)
                    assert settle.outcome.output == [
                        i * 10 if i in runs else "ok" for i in range(len(names))
                    ]
                assert settle.result.started_at == (5 if target != NO_RESUME else 100)


def test_a_replayed_resume_reports_the_recorded_failure_with_its_error() -> None:
    plan = _plan(("success", "failed-here", "none"), None, False, TOKEN)
    assert plan.plan == []  # the failure had stopped the foreach
    settle = plan.outcome(now=300)
    assert settle.outcome.status is _S.FAILED
    assert str(settle.outcome.error) == "x"


def test_the_lowest_failure_wins_over_a_recorded_higher_one() -> None:
    plan = _plan(("running-fresh", "failed"), NO_RESUME, True, None)
    assert [item.foreach_index for item in plan.plan] == [0]
    item = plan.take()
    assert item is not None
    failed = StepRun(result=StepResult(status=_S.FAILED, error=ValueError("new")))
    assert plan.item_settled(0, failed).stop
    settle = plan.outcome(now=2)
    assert str(settle.outcome.error) == "new"


def test_labels_of_every_suspended_item_with_its_index() -> None:
    plan = _plan(("suspended", "running-fresh", "suspended"), NO_RESUME, True, None)
    item = plan.take()
    assert item is not None
    assert item.foreach_index == 1
    run = StepRun(
        result=StepResult(status=_S.SUSPENDED, suspend_payload="n"),
        labels=[Label("again", [])],
    )
    actions = plan.item_settled(1, run)
    assert actions.stop
    assert actions.record["labels"] == ["again"]
    settle = plan.outcome(now=2)
    assert settle.outcome.status is _S.SUSPENDED
    assert settle.result.suspend_payload == "s"
    assert [(lab.name, lab.foreach_index) for lab in settle.run.labels] == [
        ("go", 0),
        ("again", 1),
        ("go", 2),
    ]


def test_not_a_list_fails_at_once() -> None:
    settle = not_a_list({"a": 1}, 1, 2)
    assert settle is not None
    assert settle.outcome.status is _S.FAILED
    assert str(settle.outcome.error) == "foreach expects a list, got dict"
    assert not_a_list([], 1, 2) is None


def test_a_cancel_keeps_the_records_with_items_in_flight_running() -> None:
    plan = _plan(("none", "none", "none"), NO_RESUME, False, None)
    first = plan.take()
    second = plan.take()
    assert first is not None
    assert second is not None
    plan.item_settled(0, StepRun(result=StepResult(status=_S.SUCCESS, output=1)))
    result = plan.cancelled(now=9)
    assert result.status is _S.CANCELED
    assert result.ended_at == 9
    outcomes = result.metadata["foreach"]["outcomes"]  # type: ignore[index]
    assert outcomes[0]["status"] == "success"
    assert outcomes[1] == {"status": "running", "prior": None}
    assert outcomes[2] is None  # never taken: a restart does not start it if stopped


# --- concurrent completion orders -----------------------------------------------------------

ITEM_RESULTS = st.sampled_from(["success", "suspended", "failed", "bailed"])


def _run_of(index: int, kind: str) -> StepRun:
    if kind == "success":
        return StepRun(result=StepResult(status=_S.SUCCESS, output={"i": index}))
    if kind == "suspended":
        return StepRun(
            result=StepResult(status=_S.SUSPENDED, suspend_payload=index),
            labels=[Label(f"l{index}", [])],
        )
    if kind == "bailed":
        return StepRun(result=StepResult(status=_S.SUCCESS, output=index), bailed=True)
    return StepRun(result=StepResult(status=_S.FAILED, error=ValueError(f"e{index}")))


def _drive(kinds: list[str], concurrency: int, choices: list[int]) -> tuple[ForeachPlan, list[Any]]:
    """``concurrency`` lanes; ``choices`` picks which item in flight settles next."""
    plan = ForeachPlan(
        items=list(range(len(kinds))),
        stored=None,
        resume=None,
        resume_token=None,
        chunk_id="each",
        emit=True,
        now=0,
    )
    lanes = min(concurrency, plan.lanes_wanted)
    in_flight = []
    for _ in range(lanes):
        item = plan.take()
        if item is not None:
            in_flight.append(item.foreach_index)
    chunks = []
    picks = iter(choices)
    while in_flight:
        index = in_flight.pop(next(picks, 0) % len(in_flight))
        actions = plan.item_settled(index, _run_of(index, kinds[index]))
        assert actions.record is plan.outcomes[index]
        chunks.append(actions.chunk)
        item = plan.take()  # the lane that settled takes the next item
        if actions.stop:
            # Once an item stops the foreach, only the items in flight still settle.
            assert item is None
            assert plan.take() is None
        if item is not None:
            in_flight.append(item.foreach_index)
    return plan, chunks


def _facts(chunks: list[Any]) -> Counter[tuple[Any, ...]]:
    return Counter(
        (c.current_index, c.iteration_status, repr(c.iteration_output), c.total_count)
        for c in chunks
    )


@given(
    kinds=st.lists(ITEM_RESULTS, min_size=1, max_size=6),
    choices=st.lists(st.integers(0, 5), max_size=12),
)
def test_items_all_in_flight_settle_to_the_same_records_whatever_the_order(
    kinds: list[str], choices: list[int]
) -> None:
    # Every item taken at once: the order they settle in changes nothing recorded.
    plan, chunks = _drive(kinds, len(kinds), choices)
    reference, reference_chunks = _drive(kinds, len(kinds), [0] * len(kinds))
    assert plan.outcomes == reference.outcomes
    assert _facts(chunks) == _facts(reference_chunks)
    # The completed count goes up by one for each item that did not suspend.
    counts = [c.completed_count for c in chunks]
    assert counts == sorted(counts)
    assert counts[-1] == sum(kind != "suspended" for kind in kinds)
    got, want = plan.outcome(now=2), reference.outcome(now=2)
    assert got.outcome.status is want.outcome.status
    assert repr(got.outcome.output) == repr(want.outcome.output)
    assert str(got.outcome.error) == str(want.outcome.error)
    assert got.result.suspend_payload == want.result.suspend_payload
    assert [lab.name for lab in got.run.labels] == [lab.name for lab in want.run.labels]
    # Deterministic reporting: the lowest failed index, else the lowest bail.
    if "failed" in kinds:
        assert str(got.outcome.error) == f"e{kinds.index('failed')}"
    elif "bailed" in kinds:
        assert got.outcome.output == kinds.index("bailed")


@given(
    n=st.integers(0, 8),
    concurrency=st.integers(2, 4),
    choices=st.lists(st.integers(0, 3), max_size=10),
)
def test_successful_items_settle_to_the_same_records_whatever_the_order(
    n: int, concurrency: int, choices: list[int]
) -> None:
    kinds = ["success"] * n
    plan, chunks = _drive(kinds, concurrency, choices)
    reference, reference_chunks = _drive(kinds, 1, [])
    assert plan.outcomes == reference.outcomes
    assert _facts(chunks) == _facts(reference_chunks)
    assert [c.completed_count for c in chunks] == list(range(1, n + 1))
    assert plan.outcome(now=2).outcome.output == [{"i": i} for i in range(n)]


@given(
    kinds=st.lists(ITEM_RESULTS, min_size=1, max_size=7),
    concurrency=st.integers(2, 3),
    choices=st.lists(st.integers(0, 2), max_size=10),
)
def test_no_item_is_taken_after_one_stops_the_foreach(
    kinds: list[str], concurrency: int, choices: list[int]
) -> None:
    plan, chunks = _drive(kinds, concurrency, choices)
    taken = [i for i, record in enumerate(plan.outcomes) if record is not None]
    # The items taken are the first ones, in order; the rest were never started.
    assert taken == list(range(len(taken)))
    assert len(chunks) == len(taken)
    stoppers = [i for i in taken if kinds[i] != "success"]
    if not stoppers:
        assert len(taken) == len(kinds)
    assert plan.take() is None


# --- nested workflow items and items in flight at a crash ----------------------------------

NESTED_PROGRESS = {
    "status": "running",
    "payload": 1,
    "started_at": 3,
    "metadata": {"nested": {"input": 1, "state": {}, "active_entry": 1, "active_input": 7}},
}


def _restart(records: list[dict[str, Any] | None], progress: dict[int, Any]) -> ForeachPlan:
    stored = None
    if any(r is not None for r in records):
        stored = {
            "status": "running",
            "payload": list(range(len(records))),
            "metadata": {"foreach": {"outcomes": records}},
        }
    return ForeachPlan(
        items=list(range(len(records))),
        stored=stored,
        resume=None,
        resume_token=None,
        chunk_id="each",
        emit=True,
        now=100,
        item_progress=progress.get,
    )


def test_a_nested_item_in_flight_at_a_crash_continues_from_its_progress_record() -> None:
    # Item 0 was running with its nested workflow's progress stored; item 1 was running
    # before any inner write; item 2 was never taken.
    plan = _restart([STATES["running-fresh"], STATES["running-fresh"], None], {0: NESTED_PROGRESS})
    runs = {item.foreach_index: item.resume for item in plan.plan}
    assert sorted(runs) == [0, 1, 2]
    assert runs[0] == NodeResume(data=None, tail=[], stored=NESTED_PROGRESS, restarting=True)
    assert runs[1] is None
    assert runs[2] is None


def test_a_nested_item_taken_before_the_foreachs_first_write_continues_too() -> None:
    # No foreach record was stored yet (the crash came before any item settled), but the
    # item's nested workflow had stored its progress: it continues, it does not start over.
    plan = _restart([None, None], {1: NESTED_PROGRESS})
    runs = {item.foreach_index: item.resume for item in plan.plan}
    assert runs[0] is None
    assert runs[1] == NodeResume(data=None, tail=[], stored=NESTED_PROGRESS, restarting=True)
    assert plan.replayed == {1}


def test_items_in_flight_at_a_crash_run_again_even_after_one_of_them_stops_the_foreach() -> None:
    # Items 0 and 1 were both in flight; the replayed item 0 fails at once (a nested item
    # whose inner failure was stored): item 1 still runs, as it did before the crash, and
    # item 2 (never taken) does not.
    plan = _restart([STATES["running-fresh"], STATES["running-fresh"], None], {})
    first = plan.take()
    assert first is not None
    assert first.foreach_index == 0
    _, _, stop = plan.item_settled(0, _run_of(0, "failed"))
    assert stop
    second = plan.take()
    assert second is not None
    assert second.foreach_index == 1
    assert plan.take() is None
    plan.item_settled(1, _run_of(1, "failed"))
    assert plan.outcome(200).outcome.status is _S.FAILED
