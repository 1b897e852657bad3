"""The run planner alone (trioflow/_core/_plan/_run.py): synchronous, no trio.

Exhaustive over the start decisions, the between-entry decisions of every small level
shape, every status sequence an execution makes (each one allowed by the transition
table, and impossible ones refused), the ending chunks and the step chunks.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from trioflow._core._chunks import (
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowPaused,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
)
from trioflow._core._journal import StepJournal
from trioflow._core._model import StepResult, TripwireInfo, Usage
from trioflow._core._plan._level import LevelBook
from trioflow._core._plan._run import (
    after_entry,
    after_success,
    ending_chunks,
    final_fields,
    final_status,
    interrupted_record,
    settled_chunk,
    start_at,
    start_chunk,
    workflow_result,
)
from trioflow._core._plan._values import Outcome, StepRun
from trioflow._core._resume import ResumeTarget
from trioflow._core._status import (
    TERMINAL,
    InvalidTransitionError,
    RunStatus,
    StepStatus,
    check_transition,
)

_S = StepStatus
#: The statuses an entry (or a whole level) can end with.
ENTRY_ENDS = [_S.SUCCESS, _S.BAILED, _S.FAILED, _S.SUSPENDED, _S.CANCELED, _S.TRIPWIRE]
FLAGS = list(itertools.product([False, True], repeat=3))  # is_root, durable, per_step


# --- where an execution starts ------------------------------------------------------------


def test_a_start_runs_entry_zero_with_the_input() -> None:
    at = start_at(
        "start",
        entries=3,
        input={"x": 1},
        target=None,
        suspended_paths={},
        active_entry=None,
        active_input="ignored",
    )
    assert (at.index, at.value, at.target, at.restart) == (0, {"x": 1}, None, False)


@pytest.mark.parametrize("entry", [0, 1, 2])
def test_a_resume_runs_the_entry_of_the_suspended_path_with_the_stored_input(entry: int) -> None:
    target = ResumeTarget(path=["s", "inner"], foreach_index=None)
    at = start_at(
        "resume",
        entries=3,
        input="the run's input",
        target=target,
        suspended_paths={"s": [entry, 1]},
        active_entry=entry,
        active_input="stored",
    )
    assert (at.index, at.value, at.target, at.restart) == (entry, "stored", target, False)


@pytest.mark.parametrize("active", [None, 0, 1, 2, 3])
def test_a_restart_runs_the_active_entry_again_or_nothing_past_the_last(
    active: int | None,
) -> None:
    at = start_at(
        "restart",
        entries=3,
        input="input",
        target=None,
        suspended_paths={},
        active_entry=active,
        active_input="stored",
    )
    assert at.index == (3 if active is None else active)
    assert (at.value, at.target, at.restart) == ("stored", None, True)


def test_start_at_refuses_what_it_cannot_place() -> None:
    common: dict[str, Any] = {
        "entries": 1,
        "input": None,
        "suspended_paths": {},
        "active_entry": 0,
        "active_input": None,
    }
    with pytest.raises(ValueError, match="needs a target"):
        start_at("resume", target=None, **common)
    with pytest.raises(ValueError, match="not a suspended path"):
        start_at("resume", target=ResumeTarget(path=["nope"]), **common)
    with pytest.raises(ValueError, match="start, resume or restart"):
        start_at("rerun", target=None, **common)


# --- between entries -------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(StepStatus))
def test_after_entry_goes_on_only_after_success_and_a_bail_ends_in_success(
    status: StepStatus,
) -> None:
    expected = {_S.SUCCESS: "continue", _S.BAILED: "bail"}.get(status, "end")
    assert after_entry(status) == expected


@pytest.mark.parametrize(
    ("last", "is_root", "durable", "per_step"), list(itertools.product([False, True], repeat=4))
)
def test_after_success_for_every_flag(
    last: bool, is_root: bool, durable: bool, per_step: bool
) -> None:
    then = after_success(last=last, is_root=is_root, durable=durable, per_step=per_step)
    # Progress is reported to a parent between entries, never after the last.
    assert then.report_progress == (not last)
    # Only the top level writes (durable, between entries) or passes a cancel point.
    assert then.persist == (is_root and durable and not last)
    assert then.checkpoint == (is_root and (last or not durable))
    assert not (then.persist and then.checkpoint)
    # per_step pauses the top level between entries only.
    assert then.pause == (is_root and per_step and not last)


def _simulate(
    shape: tuple[StepStatus, ...], *, is_root: bool, durable: bool, per_step: bool
) -> tuple[Outcome, list[str]]:
    """A level run over entries ending with ``shape`` (as _driver/_level.Level.run asks the
    planner), returning its outcome and what it did between entries."""
    actions: list[str] = []
    value: Any = 0
    last = len(shape) - 1
    for idx, status in enumerate(shape):
        actions.append(f"run {idx}")
        outcome = Outcome(status, output=idx + 1)
        step = after_entry(status)
        if step == "continue":
            value = outcome.output
            then = after_success(
                last=idx == last, is_root=is_root, durable=durable, per_step=per_step
            )
            actions += [
                name for name in ("report_progress", "persist", "checkpoint") if getattr(then, name)
            ]
            if then.pause:
                return Outcome(_S.PAUSED, output=value), actions
            continue
        if step == "bail":
            return Outcome(_S.SUCCESS, output=outcome.output), actions
        return outcome, actions
    return Outcome(_S.SUCCESS, output=value), actions


@pytest.mark.parametrize(("is_root", "durable", "per_step"), FLAGS)
def test_every_level_shape_of_up_to_three_entries(
    is_root: bool, durable: bool, per_step: bool
) -> None:
    for size in range(1, 4):
        for shape in itertools.product(ENTRY_ENDS, repeat=size):
            outcome, actions = _simulate(shape, is_root=is_root, durable=durable, per_step=per_step)
            ran = [a for a in actions if a.startswith("run")]
            first_stop = next((i for i, s in enumerate(shape) if s is not _S.SUCCESS), None)
            if is_root and per_step and size > 1 and (first_stop is None or first_stop > 0):
                # Paused after the first successful entry.
                assert ran == ["run 0"]
                assert outcome == Outcome(_S.PAUSED, output=1)
                continue
            if first_stop is None:
                assert outcome == Outcome(_S.SUCCESS, output=size)
                assert len(ran) == size
            else:
                assert len(ran) == first_stop + 1
                expected = _S.SUCCESS if shape[first_stop] is _S.BAILED else shape[first_stop]
                assert outcome.status is expected
                assert outcome.output == first_stop + 1
            # A durable top level writes exactly between the successful entries it ran.
            writes = actions.count("persist")
            between = len(ran) - 1 if first_stop is None else first_stop
            assert writes == (between if is_root and durable else 0)
            # Every run of the top level ends its successful entries at a write or a cancel point.
            if is_root:
                successes = len(ran) if first_stop is None else first_stop
                assert writes + actions.count("checkpoint") == successes


# --- statuses -----------------------------------------------------------------------------------


def _run_status_of(status: StepStatus, tripwire: bool = False) -> RunStatus:
    outcome = Outcome(status, tripwire=TripwireInfo(reason="r") if tripwire else None)
    return final_status(outcome, canceled=False)[1]


@pytest.mark.parametrize("status", [*ENTRY_ENDS, _S.PAUSED])
@pytest.mark.parametrize("canceled", [False, True])
def test_final_status_of_every_outcome(status: StepStatus, canceled: bool) -> None:
    outcome, run = final_status(Outcome(status, output="x"), canceled=canceled)
    if canceled:
        assert outcome == Outcome(_S.CANCELED)
        assert run is RunStatus.CANCELED
    else:
        expected = RunStatus.SUCCESS if status is _S.BAILED else RunStatus(status.value)
        assert run is expected
        assert outcome.status is status


def test_final_status_without_an_outcome_is_canceled_and_a_failure_with_a_tripwire_is_one() -> None:
    assert final_status(None, canceled=False) == (Outcome(_S.CANCELED), RunStatus.CANCELED)
    assert _run_status_of(_S.FAILED, tripwire=True) is RunStatus.TRIPWIRE


@pytest.mark.parametrize("status", [_S.RUNNING, _S.WAITING])
def test_an_execution_cannot_end_active(status: StepStatus) -> None:
    with pytest.raises(InvalidTransitionError, match=f"cannot end with its run {status.value}"):
        final_status(Outcome(status), canceled=False)


def _sequences() -> list[list[RunStatus]]:
    """Every status sequence a run goes through with the planner: claimed (pending ->
    running for a start, suspended/paused -> running for a resume, running -> running for
    a restart), a running write between entries and a waiting one at a sleep, then the
    final status; a suspended or paused run continues with another execution."""
    ends = sorted(
        {
            final_status(Outcome(s), canceled=c)[1]
            for s in [*ENTRY_ENDS, _S.PAUSED]
            for c in (False, True)
        }
    )
    middles: list[list[RunStatus]] = [
        [],
        [RunStatus.RUNNING],
        [RunStatus.WAITING, RunStatus.RUNNING],
        [RunStatus.RUNNING, RunStatus.WAITING, RunStatus.RUNNING],
    ]
    sequences = []
    for claim in ([RunStatus.PENDING, RunStatus.RUNNING], [RunStatus.RUNNING]):
        for middle in middles:
            for end in ends:
                first = [*claim, *middle, end]
                sequences.append(first)
                if end in (RunStatus.SUSPENDED, RunStatus.PAUSED):
                    for again in ends:
                        sequences.append([*first, RunStatus.RUNNING, again])
    return sequences


def test_every_status_sequence_of_the_planner_is_allowed_by_the_table() -> None:
    sequences = _sequences()
    assert len(sequences) > 50
    for sequence in sequences:
        for old, new in itertools.pairwise(sequence):
            assert check_transition(old, new) is new, sequence


@pytest.mark.parametrize(
    ("old", "new"),
    [
        *[(end, RunStatus.RUNNING) for end in sorted(TERMINAL)],
        (RunStatus.PENDING, RunStatus.SUCCESS),
        (RunStatus.SUSPENDED, RunStatus.SUCCESS),
        (RunStatus.PAUSED, RunStatus.SUSPENDED),
        (RunStatus.WAITING, RunStatus.SUSPENDED),
        (RunStatus.SUCCESS, RunStatus.FAILED),
    ],
)
def test_an_impossible_transition_raises(old: RunStatus, new: RunStatus) -> None:
    with pytest.raises(InvalidTransitionError, match=f"from {old.value} to {new.value}"):
        check_transition(old, new)


# --- the end -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [*ENTRY_ENDS, _S.PAUSED])
def test_ending_chunks_and_final_fields_of_every_end(status: StepStatus) -> None:
    error = ValueError("boom") if status in (_S.FAILED, _S.TRIPWIRE) else None
    tripwire = TripwireInfo(reason="stop") if status is _S.TRIPWIRE else None
    outcome, run = final_status(
        Outcome(status, output={"o": 1}, error=error, tripwire=tripwire), canceled=False
    )
    usage = Usage(input_tokens=2)
    chunks = ending_chunks("r1", 7, run, outcome, usage)
    types = [type(c) for c in chunks]
    leads: dict[RunStatus, list[type]] = {
        RunStatus.CANCELED: [WorkflowCanceled],
        RunStatus.PAUSED: [WorkflowPaused],
    }
    lead = leads.get(run, [])
    assert types == [*lead, WorkflowFinish]
    assert [c.seq for c in chunks] == list(range(7, 7 + len(chunks)))
    assert all(c.run_id == "r1" for c in chunks)
    finish = chunks[-1]
    assert isinstance(finish, WorkflowFinish)
    assert finish.payload.workflow_status == run.value
    assert finish.payload.usage == usage
    assert finish.payload.tripwire == tripwire
    fields = final_fields(run, outcome)
    if run is RunStatus.SUCCESS:
        assert finish.payload.final_workflow_result == {"o": 1}
        assert fields.final == {"result": {"o": 1}}
    else:
        assert finish.payload.final_workflow_result is None
    if error is not None:
        assert finish.payload.metadata == {"error": {"message": "boom", "name": "ValueError"}}
        assert fields.final["error"].message == "boom"
    else:
        assert finish.payload.metadata == {}
        assert "error" not in fields.final
    assert ("tripwire" in fields.final) == (tripwire is not None)
    assert fields.clear_active_entry == (run is RunStatus.SUCCESS)
    assert fields.clear_suspended == (run is RunStatus.CANCELED)


def _book() -> LevelBook:
    book = LevelBook(
        stored=StepJournal(),
        run_id="r1",
        resume_data=None,
        state_schema=None,
        key_prefix="",
        chunk_prefix="",
        input={"in": 1},
        state={"s": 1},
        is_root=True,
    )
    done = StepResult(status=_S.SUCCESS, output=2, payload=1, started_at=1, ended_at=2)
    book.settle("a", StepRun(result=done), [0])
    waiting = StepResult(status=_S.SUSPENDED, payload=2, started_at=3, suspend_payload={"ask": 1})
    book.settle("b", StepRun(result=waiting), [1])
    return book


@pytest.mark.parametrize("status", [*ENTRY_ENDS, _S.PAUSED])
def test_workflow_result_of_every_end(status: StepStatus) -> None:
    book = _book()
    error = ValueError("boom")
    outcome, run = final_status(Outcome(status, output="out", error=error), canceled=False)
    result = workflow_result(book, run, outcome, run_id="r1", trace_id="t")
    assert result.status is run
    assert result.result == ("out" if run is RunStatus.SUCCESS else None)
    assert (result.error is error) == (run in (RunStatus.FAILED, RunStatus.TRIPWIRE))
    assert list(result.steps) == ["a", "b"]
    assert result.step_execution_path == ["a", "b"]
    assert (result.input, result.state, result.run_id, result.trace_id) == (
        {"in": 1},
        {"s": 1},
        "r1",
        "t",
    )
    if run is RunStatus.SUSPENDED:
        assert result.suspended == [["b"]]
        assert result.suspend_payload == {"b": {"ask": 1}}
    else:
        assert (result.suspended, result.suspend_payload) == ([], {})


# --- step chunks and interrupted steps ---------------------------------------------------------


def test_start_chunk_of_a_step_and_of_a_resumed_one() -> None:
    fresh = start_chunk(
        "r1", 3, "s", call_id="c-1", payload={"v": 1}, started_at=10, resuming=False
    )
    assert isinstance(fresh, WorkflowStepStart)
    assert (fresh.seq, fresh.payload.id, fresh.payload.step_call_id) == (3, "s", "c-1")
    assert (fresh.payload.payload, fresh.payload.started_at) == ({"v": 1}, 10)
    assert (fresh.payload.resume_payload, fresh.payload.resumed_at) == (None, None)
    resumed = start_chunk(
        "r1",
        4,
        "s",
        call_id=None,
        payload=1,
        started_at=10,
        resuming=True,
        resume_data={"ok": True},
        resumed_at=20,
        metadata={"m": 1},
    )
    assert (resumed.payload.resume_payload, resumed.payload.resumed_at) == ({"ok": True}, 20)
    assert resumed.payload.metadata == {"m": 1}
    # A resumed step without a resume time is resumed when it started.
    again = start_chunk("r1", 5, "s", call_id=None, payload=1, started_at=10, resuming=True)
    assert again.payload.resumed_at == 10


@pytest.mark.parametrize("status", [s for s in StepStatus if s is not _S.SUSPENDED])
@pytest.mark.parametrize("interrupted", [False, True])
def test_settled_chunk_of_every_status(status: StepStatus, interrupted: bool) -> None:
    error = ValueError("e") if status is _S.FAILED else None
    result = StepResult(status=status, output=5, payload=4, error=error, started_at=1, ended_at=2)
    chunk = settled_chunk("r1", 9, "p.s", result, "c-2", interrupted=interrupted)
    if interrupted and status is _S.CANCELED:
        # Not settled: a restart runs the step again.
        assert chunk is None
        return
    assert isinstance(chunk, WorkflowStepResult)
    assert (chunk.seq, chunk.payload.id, chunk.payload.step_name) == (9, "p.s", "p.s")
    assert chunk.payload.status == status.value
    assert (chunk.payload.output, chunk.payload.payload, chunk.payload.step_call_id) == (
        5,
        4,
        "c-2",
    )
    assert (chunk.payload.error is not None) == (error is not None)


@pytest.mark.parametrize("interrupted", [False, True])
def test_settled_chunk_of_a_suspension(interrupted: bool) -> None:
    result = StepResult(
        status=_S.SUSPENDED, payload=1, started_at=1, suspend_payload={"a": 1}, suspended_at=3
    )
    chunk = settled_chunk("r1", 2, "s", result, None, interrupted=interrupted)
    assert isinstance(chunk, WorkflowStepSuspended)
    assert (chunk.payload.suspend_payload, chunk.payload.suspended_at) == ({"a": 1}, 3)


def test_an_interrupted_record_is_running_and_keeps_what_a_restart_continues_from() -> None:
    canceled = StepResult(
        status=_S.CANCELED,
        payload=[1, 2],
        started_at=5,
        ended_at=9,
        resume_payload={"r": 1},
        resumed_at=7,
        metadata={"foreach": {"outcomes": [{"status": "success", "output": 1}, None]}},
    )
    record = interrupted_record(canceled)
    assert record.status is _S.RUNNING
    assert record.ended_at is None
    assert (record.payload, record.started_at, record.resumed_at) == ([1, 2], 5, 7)
    assert record.resume_payload == {"r": 1}
    assert record.metadata == canceled.metadata
