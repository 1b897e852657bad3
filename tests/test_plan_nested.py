"""The planners of nested workflows used as steps and of dowhile/dountil loops, alone
(synchronous, no trio), and the crash recovery of a loop over a nested workflow."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow._core._errors import ValidationError
from trioflow._core._journal import StepJournal
from trioflow._core._model import ITERATION_COUNT, OLD_ITERATION_COUNT, StepResult, TripwireInfo
from trioflow._core._plan import _loop as loop
from trioflow._core._plan import _nested as nested
from trioflow._core._plan._level import LevelBook
from trioflow._core._plan._values import Announced, NodeResume, Outcome, StepRun
from trioflow._core._resume import ResumeTarget
from trioflow._core._status import StepStatus
from trioflow.testing import (
    LoopSpec,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    build_workflow,
    check_crash_points,
    run_on_mock_clock,
)

_S = StepStatus
ANNOUNCED = Announced(call_id="c-1", started_at=100, resumed_at=150)


def book(header: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> LevelBook:
    return LevelBook(
        stored=StepJournal(stored or {}),
        run_id="r",
        resume_data=None,
        state_schema=None,
        key_prefix="w1.",
        chunk_prefix="w1.",
        input={"in": 1},
        state={},
        is_root=False,
        header=header,
    )


def header(
    *, active_entry: int | None, suspended_paths: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    return {
        "input": {"in": 1},
        "state": {"s": 1},
        "suspended_paths": suspended_paths or {},
        "resume_labels": {},
        "execution_path": [],
        "active_entry": active_entry,
        "active_input": {"at": active_entry},
    }


def stored_record(hdr: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"status": "suspended", "payload": {"stored": True}, "metadata": {"nested": hdr}, **extra}


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach_index", [None, 0, 3])
@pytest.mark.parametrize("iteration", [0, 1, 4])
def test_keys_add_the_foreach_index_to_records_and_the_iteration_to_the_key_scope(
    foreach_index: int | None, iteration: int
) -> None:
    keys = nested.nested_keys(
        parent_key_prefix="outer.",
        parent_key_scope="outer#2.",
        node_id="w1",
        chunk_id="outer.w1",
        foreach_index=foreach_index,
        iteration=iteration,
    )
    index = f"[{foreach_index}]" if foreach_index is not None else ""
    assert keys.key_prefix == f"outer.w1{index}."
    assert keys.key_scope == f"outer#2.w1{index}" + (f"#{iteration}" if iteration else "") + "."
    # A node's progress becomes its own record; a foreach item's is an engine record
    # under the item's prefix (the item's result is the foreach's).
    expected = "outer.w1" if foreach_index is None else f"outer.w1[{foreach_index}].@progress"
    assert keys.record_key == expected
    assert keys.chunk_prefix == "outer.w1."


def test_a_fresh_run_replaces_exactly_the_records_under_its_prefix() -> None:
    keys = nested.nested_keys(
        parent_key_prefix="",
        parent_key_scope="",
        node_id="w1",
        chunk_id="w1",
        foreach_index=None,
        iteration=2,
    )
    stored = ["w1", "w1.a", "w1.b", "w10.a", "other", "w1.inner.x"]
    assert nested.replaced_keys(stored, keys) == ["w1.a", "w1.b", "w1.inner.x"]


# --- where it starts ---------------------------------------------------------------------


def test_without_a_resume_it_opens_fresh_with_the_given_value() -> None:
    opening = nested.open_nested({"v": 1}, None, ANNOUNCED)
    assert opening.fresh
    assert (opening.payload, opening.resume_payload, opening.resumed_at) == ({"v": 1}, None, None)
    assert opening.started_at == 100


def test_a_resume_of_a_record_without_header_opens_fresh() -> None:
    resume = NodeResume(data={"ok": 1}, tail=[], stored={"status": "success", "payload": 9})
    opening = nested.open_nested({"v": 1}, resume, ANNOUNCED)
    assert opening.fresh
    assert opening.payload == {"v": 1}
    assert opening.resume_payload is None
    assert opening.resumed_at is None


def test_a_stored_header_continues_with_the_stored_payload_and_the_resume_data() -> None:
    hdr = header(active_entry=1)
    resume = NodeResume(data={"ok": 1}, tail=["a"], stored=stored_record(hdr))
    opening = nested.open_nested({"v": 1}, resume, ANNOUNCED)
    assert not opening.fresh
    assert opening.header == hdr
    assert opening.payload == {"stored": True}
    assert (opening.resume_payload, opening.resumed_at) == ({"ok": 1}, 150)


def test_a_stored_header_without_payload_keeps_the_value() -> None:
    hdr = header(active_entry=1)
    resume = NodeResume(data=None, tail=[], stored={"metadata": {"nested": hdr}}, restarting=True)
    assert nested.open_nested(7, resume, ANNOUNCED).payload == 7


def test_a_fresh_start_is_entry_0_without_target() -> None:
    assert nested.NestedStart(entry=0, target=None, restart=False) == nested.FRESH_START


@pytest.mark.parametrize("active_entry", [0, 2, None])
def test_a_restart_reenters_the_running_entry_in_restart_mode(active_entry: int | None) -> None:
    hdr = header(active_entry=active_entry)
    resume = NodeResume(data=None, tail=[], stored=stored_record(hdr), restarting=True)
    start = nested.continue_start(book(hdr), resume, entries=3)
    expected = 3 if active_entry is None else active_entry
    assert start == nested.NestedStart(entry=expected, target=None, restart=True)


def test_no_resume_continues_the_running_entry_in_restart_mode() -> None:
    hdr = header(active_entry=1)
    assert nested.continue_start(book(hdr), None, entries=3) == nested.NestedStart(
        entry=1, target=None, restart=True
    )


def test_a_resume_on_a_path_below_starts_at_the_entry_holding_it() -> None:
    hdr = header(active_entry=2, suspended_paths={"b": [1], "c": [2]})
    resume = NodeResume(data=1, tail=["b"], stored=stored_record(hdr), foreach_index=4)
    start = nested.continue_start(book(hdr), resume, entries=3)
    assert start == nested.NestedStart(
        entry=1, target=ResumeTarget(path=["b"], foreach_index=4), restart=False
    )


def test_a_resume_without_a_path_targets_the_first_suspended_inner_path() -> None:
    # A foreach item resumed: its nested workflow's first suspended path in graph order.
    hdr = header(active_entry=2, suspended_paths={"c": [2], "b": [1]})
    stored = {"w1.b": {"status": "suspended"}, "w1.c": {"status": "suspended"}}
    resume = NodeResume(data=1, tail=[], stored=stored_record(hdr), foreach_index=0)
    start = nested.continue_start(book(hdr, stored), resume, entries=3)
    assert start == nested.NestedStart(
        entry=1, target=ResumeTarget(path=["b"], foreach_index=0), restart=False
    )


def test_a_resume_without_a_path_and_nothing_suspended_reenters_the_running_entry() -> None:
    hdr = header(active_entry=1)
    resume = NodeResume(data=1, tail=[], stored=stored_record(hdr))
    assert nested.continue_start(book(hdr), resume, entries=3) == nested.NestedStart(
        entry=1, target=None, restart=True
    )


def test_a_replayed_resume_whose_inner_target_already_settled_continues_in_restart_mode() -> None:
    # A restart replaying a resume of ["w1", "s3"] after the crash-time header shows s3
    # resumed and settled (no longer suspended): the workflow goes on from its running
    # entry (this indexed the suspended paths and raised KeyError).
    hdr = header(active_entry=2)
    resume = NodeResume(data=1, tail=["s3"], stored=stored_record(hdr))
    assert nested.continue_start(book(hdr), resume, entries=3) == nested.NestedStart(
        entry=2, target=None, restart=True
    )


def test_a_continued_level_runs_with_the_parent_state_merged_over_its_own() -> None:
    assert nested.continued_state({"a": 1, "b": 1}, {"b": 2}) == {"a": 1, "b": 2}
    assert nested.continued_state({"a": 1}, None) == {"a": 1}


# --- fresh input -------------------------------------------------------------------------


@attrs.frozen
class Needs:
    n: int


def test_a_fresh_input_is_validated_against_the_schema() -> None:
    opening = nested.open_nested({"n": 3}, None, ANNOUNCED)
    assert nested.fresh_input(opening, Needs, True, 200) == nested.FreshInput(input=Needs(3))
    assert nested.fresh_input(opening, Needs, False, 200) == nested.FreshInput(input={"n": 3})
    assert nested.fresh_input(opening, None, True, 200) == nested.FreshInput(input={"n": 3})


def test_an_invalid_fresh_input_is_the_nodes_failed_result() -> None:
    opening = nested.open_nested({"n": "x"}, None, ANNOUNCED)
    fresh = nested.fresh_input(opening, Needs, True, 200)
    assert fresh.failed is not None
    result = fresh.failed.result
    assert result.status is _S.FAILED
    assert isinstance(result.error, ValidationError)
    assert (result.payload, result.started_at, result.ended_at) == ({"n": "x"}, 100, 200)


# --- progress and outcome ----------------------------------------------------------------


@pytest.mark.parametrize("iteration", [0, 3])
def test_the_progress_record_holds_payload_start_header_and_iteration(iteration: int) -> None:
    hdr = header(active_entry=1)
    record = nested.progress_record(
        payload_json={"p": 1}, started_at=5, header=hdr, iteration=iteration
    )
    metadata: dict[str, Any] = {"nested": hdr}
    if iteration:
        metadata[ITERATION_COUNT] = iteration
    assert record == {"status": "running", "payload": {"p": 1}, "started_at": 5, "metadata": metadata}


def test_only_nodes_outside_foreach_items_on_durable_storage_keep_progress() -> None:
    assert nested.keeps_progress(True)
    assert not nested.keeps_progress(False)
    assert not nested.drops_progress_when_settled(None)
    assert nested.drops_progress_when_settled(0)


def test_success_is_the_levels_output_with_its_header() -> None:
    sub = book(header(active_entry=None))
    opening = nested.open_nested(1, None, ANNOUNCED)
    run = nested.nested_result(Outcome(_S.SUCCESS, output=5), sub, opening, iteration=2, now=300)
    assert run.result.status is _S.SUCCESS
    assert (run.result.output, run.result.ended_at, run.result.payload) == (5, 300, 1)
    assert run.result.metadata == {"nested": sub.header(), ITERATION_COUNT: 2}
    assert run.labels == []
    assert run.tripwire is None
    assert nested.merges_state(Outcome(_S.SUCCESS))


def test_suspension_carries_the_first_inner_payload_and_the_labels_up() -> None:
    stored = {
        "w1.b": {"status": "suspended", "suspend_payload": {"why": "b"}},
        "w1.c": {"status": "suspended", "suspend_payload": {"why": "c"}},
    }
    hdr = header(active_entry=2, suspended_paths={"c": [2], "b": [1]})
    hdr["resume_labels"] = {"lab": {"path": ["c"], "foreach_index": None}}
    sub = book(hdr, stored)
    opening = nested.open_nested(1, None, ANNOUNCED)
    run = nested.nested_result(Outcome(_S.SUSPENDED), sub, opening, iteration=0, now=300)
    assert run.result.status is _S.SUSPENDED
    assert run.result.suspend_payload == {"why": "b"}
    assert run.result.suspended_at == 300
    assert run.result.ended_at is None
    assert [(label.name, label.path) for label in run.labels] == [("lab", ["c"])]
    assert nested.merges_state(Outcome(_S.SUSPENDED))


def test_a_tripwire_fails_the_node_and_carries_the_tripwire() -> None:
    trip = TripwireInfo(reason="stop")
    err = RuntimeError("x")
    sub = book(header(active_entry=0))
    opening = nested.open_nested(1, None, ANNOUNCED)
    run = nested.nested_result(
        Outcome(_S.TRIPWIRE, error=err, tripwire=trip), sub, opening, iteration=0, now=300
    )
    assert run.result.status is _S.FAILED
    assert run.result.error is err
    assert run.tripwire is trip
    assert not nested.merges_state(Outcome(_S.TRIPWIRE))


@pytest.mark.parametrize("status", [_S.FAILED, _S.CANCELED])
def test_other_outcomes_keep_their_status_and_error(status: StepStatus) -> None:
    err = RuntimeError("x")
    sub = book(header(active_entry=0))
    opening = nested.open_nested(1, None, ANNOUNCED)
    run = nested.nested_result(Outcome(status, error=err), sub, opening, iteration=0, now=300)
    assert (run.result.status, run.result.error, run.result.ended_at) == (status, err, 300)
    assert not nested.merges_state(Outcome(status))
    assert nested.canceled(opening, 400).status is _S.CANCELED


# --- loops -------------------------------------------------------------------------------


def body_result(status: StepStatus, iteration: int, *, old: bool = False) -> StepResult:
    key = OLD_ITERATION_COUNT if old else ITERATION_COUNT
    return StepResult(status=status, payload={"in": iteration}, output={"out": iteration}, metadata={key: iteration})


def test_a_fresh_loop_starts_at_iteration_1_with_its_input() -> None:
    previous = body_result(_S.SUSPENDED, 4)
    assert loop.loop_start(9, None, resuming=False, restart=False) == loop.LoopStart(iteration=1, value=9)
    # Without resume or restart a stored result of an earlier run does not count.
    assert loop.loop_start(9, previous, resuming=False, restart=False) == loop.LoopStart(iteration=1, value=9)
    assert loop.loop_start(9, None, resuming=True, restart=True) == loop.LoopStart(iteration=1, value=9)


@pytest.mark.parametrize("old", [False, True])
def test_a_resumed_loop_continues_the_suspended_iteration(old: bool) -> None:
    previous = body_result(_S.SUSPENDED, 3, old=old)
    start = loop.loop_start(9, previous, resuming=True, restart=False)
    assert start == loop.LoopStart(iteration=3, value={"in": 3})


@pytest.mark.parametrize("status", [_S.RUNNING, _S.SUSPENDED, _S.CANCELED])
def test_a_restart_continues_an_unfinished_iteration_from_its_record(status: StepStatus) -> None:
    start = loop.loop_start(9, body_result(status, 2), resuming=False, restart=True)
    assert start == loop.LoopStart(iteration=2, value={"in": 2}, continued=True)


def test_a_restart_after_a_finished_iteration_goes_on_with_its_condition() -> None:
    start = loop.loop_start(9, body_result(_S.SUCCESS, 2), resuming=False, restart=True)
    assert start == loop.LoopStart(iteration=2, value={"out": 2}, settled=True)
    # A resume replays the iteration it names, never skips it.
    resumed = loop.loop_start(9, body_result(_S.SUCCESS, 2), resuming=True, restart=True)
    assert resumed == loop.LoopStart(iteration=2, value={"in": 2})


def test_a_missing_count_is_iteration_1_and_a_missing_payload_keeps_the_value() -> None:
    previous = StepResult(status=_S.SUSPENDED)
    assert loop.loop_start(9, previous, resuming=True, restart=False) == loop.LoopStart(iteration=1, value=9)


def test_the_iteration_is_stamped_unless_the_result_has_one() -> None:
    run = StepRun(result=StepResult(status=_S.SUCCESS, metadata={"nested": {}}))
    assert loop.stamp_iteration(run, 3).result.metadata == {"nested": {}, ITERATION_COUNT: 3}
    stamped = StepRun(result=StepResult(status=_S.SUCCESS, metadata={ITERATION_COUNT: 2}))
    assert loop.stamp_iteration(stamped, 3) is stamped


@pytest.mark.parametrize("status", [_S.FAILED, _S.SUSPENDED, _S.CANCELED])
def test_a_body_that_does_not_succeed_ends_the_loop(status: StepStatus) -> None:
    decided = loop.body_settled(StepRun(result=StepResult(status=status)))
    assert decided == loop.Stop(outcome=Outcome(status))


def test_a_bailed_body_ends_the_loop_bailed() -> None:
    decided = loop.body_settled(StepRun(result=StepResult(status=_S.SUCCESS, output=1), bailed=True))
    assert isinstance(decided, loop.Stop)
    assert decided.outcome.status is _S.BAILED


def test_a_condition_that_raises_fails_the_loop() -> None:
    exc = RuntimeError("cond")
    assert loop.condition_raised(exc) == loop.Stop(outcome=Outcome(_S.FAILED, error=exc))


def test_a_finished_iteration_drops_only_its_bodys_inner_records() -> None:
    keys = ["p.w1", "p.w1.a", "p.w1.b", "p.w10.a", "p.other"]
    assert loop.finished_iteration_keys(keys, "p.", "w1") == ["p.w1.a", "p.w1.b"]


def drive(
    kind: str, verdicts: list[bool], start: loop.LoopStart, *, limit: int
) -> tuple[list[int], Outcome]:
    """The planner driven as the driver drives it, with a body that returns its input + 1
    and the given condition verdicts (by iteration)."""
    ran: list[int] = []
    again = loop.Again(iteration=start.iteration, value=start.value)
    if start.settled:
        decided = loop.condition_returned(kind, verdicts[start.iteration - 1], start.iteration, start.value)
        if isinstance(decided, loop.Stop):
            return ran, decided.outcome
        again = decided
    while len(ran) < limit:
        ran.append(again.iteration)
        run = loop.stamp_iteration(
            StepRun(result=StepResult(status=_S.SUCCESS, payload=again.value, output=again.value + 1)),
            again.iteration,
        )
        settled = loop.body_settled(run)
        assert isinstance(settled, loop.Evaluate)
        decided = loop.condition_returned(kind, verdicts[again.iteration - 1], again.iteration, settled.value)
        if isinstance(decided, loop.Stop):
            return ran, decided.outcome
        again = decided
    raise AssertionError("the loop did not stop")


def verdict_runs(kind: str) -> st.SearchStrategy[list[bool]]:
    # A loop that goes on n-1 times then stops: dowhile true..true,false; dountil the inverse.
    return st.integers(1, 8).map(
        lambda n: [kind == "dowhile"] * (n - 1) + [kind != "dowhile"]
    )


@given(data=st.data(), kind=st.sampled_from(["dowhile", "dountil"]))
def test_the_loop_runs_until_its_verdict_says_stop(data: st.DataObject, kind: str) -> None:
    verdicts = data.draw(verdict_runs(kind))
    ran, outcome = drive(kind, verdicts, loop.loop_start(0, None, resuming=False, restart=False), limit=20)
    assert ran == list(range(1, len(verdicts) + 1))
    assert outcome == Outcome(_S.SUCCESS, output=len(verdicts))


@given(
    data=st.data(),
    kind=st.sampled_from(["dowhile", "dountil"]),
    status=st.sampled_from([_S.SUCCESS, _S.RUNNING, _S.SUSPENDED]),
    resuming=st.booleans(),
)
def test_resume_or_restart_continues_with_the_same_iterations_and_output(
    data: st.DataObject, kind: str, status: StepStatus, resuming: bool
) -> None:
    verdicts = data.draw(verdict_runs(kind))
    k = data.draw(st.integers(1, len(verdicts)), label="interrupted iteration")
    # The body's record of iteration k as the interrupted run stored it: its input is k-1.
    previous = StepResult(
        status=status,
        payload=k - 1,
        output=k if status is _S.SUCCESS else None,
        metadata={ITERATION_COUNT: k},
    )
    start = loop.loop_start(0, previous, resuming=resuming, restart=not resuming)
    ran, outcome = drive(kind, verdicts, start, limit=20)
    finished = status is _S.SUCCESS and not resuming
    # Exactly the iterations not finished before the interruption run, and the loop ends
    # as the uninterrupted one does.
    assert ran == list(range(k + 1 if finished else k, len(verdicts) + 1))
    assert outcome == Outcome(_S.SUCCESS, output=len(verdicts))
    assert start.continued == (not resuming and not finished)


# --- crash recovery of a loop over a nested workflow ------------------------------------


def test_a_crash_in_a_loop_over_a_nested_workflow_reruns_only_what_was_running() -> None:
    # Before the fix a finished iteration was not stored before the next one began: a
    # crash re-ran the last inner step of the previous iteration and inner steps the
    # snapshot recorded as finished (concepts.md "Known limits").
    body = WorkflowSpec(
        id="w1",
        entries=(ThenSpec(node=StepSpec(id="a")), ThenSpec(node=StepSpec(id="b", sleep=1))),
    )
    spec = WorkflowSpec(id="wf", entries=(LoopSpec(node=body, kind="dowhile", iterations=3),))

    async def check() -> None:
        report = await check_crash_points(build_workflow(spec), input_data={"x": 0})
        assert report.writes >= 6
        assert all(point.crashed for point in report.points if point.write <= report.writes)

    run_on_mock_clock(check)
