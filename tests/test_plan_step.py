"""The step planner alone (trioflow/_core/_plan/_step.py): synchronous, no trio.

Every branch of its decision table: inputs and their validation, what each kind of raised
exception leads to (retry or settle, with which result), what a returned attempt settles
with (strict-JSON checks in their order, state update, suspend, bail), the canceled
result and the timeout error; hypothesis over retry counts and attempt sequences.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow import (
    NonRetryableError,
    NotJsonError,
    StepTimeoutError,
    TripwireError,
    ValidationError,
)
from trioflow._core._model import ITERATION_COUNT, RESUME_COUNT, StepResult
from trioflow._core._plan._step import (
    UNCHANGED,
    Retry,
    Settle,
    StepEffects,
    StepPlan,
)
from trioflow._core._plan._values import Announced, NodeResume, outcome_of
from trioflow._core._status import StepStatus

_S = StepStatus
STARTED = 1_000
NOW = 2_000


@attrs.frozen(kw_only=True)
class Node:
    id: str = "work"
    input_schema: Any = None
    resume_schema: Any = None
    state_schema: Any = None
    retries: int | None = None
    timeout: float | None = None


@attrs.frozen(kw_only=True)
class Retries:
    attempts: int = 0
    delay: float = 0.0


@attrs.frozen(kw_only=True)
class Flow:
    retry_config: Retries = Retries()
    validate_inputs: bool = True
    state_schema: Any = None


@attrs.define
class Counter:
    n: int


def plan(
    node: Node | None = None,
    flow: Flow | None = None,
    value: Any = 1,
    *,
    resume: NodeResume | None = None,
    iteration: int = 0,
    foreach_index: int | None = None,
    emit: bool = True,
    resumed_at: int | None = None,
) -> StepPlan:
    return StepPlan(
        node or Node(),
        flow or Flow(),
        value,
        resume,
        Announced("call-1", STARTED, resumed_at),
        iteration,
        foreach_index,
        emit,
    )


def settled(decision: Retry | Settle) -> StepResult:
    assert isinstance(decision, Settle), decision
    return decision.run.result


# --------------------------------------------------------------------------- inputs


def test_fresh_step_success_result() -> None:
    p = plan(value={"a": 1})
    assert (p.step_input, p.resume_data, p.suspend_data, p.attempt) == ({"a": 1}, None, None, 0)
    assert p.key_args == ("work", None, 0, 0)
    decision = p.returned({"b": 2}, None, NOW, state={"s": 1})
    assert isinstance(decision, Settle)
    assert decision.emit is True
    assert decision.state is UNCHANGED
    assert decision.run.bailed is False
    assert decision.run.labels == []
    assert decision.run.result == StepResult(
        status=_S.SUCCESS,
        output={"b": 2},
        payload={"a": 1},
        started_at=STARTED,
        ended_at=NOW,
        retry_count=0,
    )


def test_emit_false_is_passed_on_to_every_settle() -> None:
    p = plan(emit=False)
    assert p.returned(1, None, NOW, None).emit is False
    assert plan(emit=False).raised(ValueError("x"), NOW).emit is False  # type: ignore[union-attr]


def test_loop_iteration_is_in_metadata_and_key() -> None:
    p = plan(iteration=3, foreach_index=2)
    assert p.key_args == ("work", 2, 3, 0)
    assert settled(p.returned(1, None, NOW, None)).metadata == {ITERATION_COUNT: 3}


def test_resumed_step_runs_on_its_stored_input_and_counts_resumes() -> None:
    stored = {
        "payload": "stored input",
        "suspend_payload": {"why": "approval"},
        "metadata": {RESUME_COUNT: 2},
    }
    resume = NodeResume(data={"ok": True}, tail=[], stored=stored)
    p = plan(value="new input", resume=resume, iteration=1, resumed_at=1_500)
    assert p.step_input == "stored input"
    assert p.suspend_data == {"why": "approval"}
    assert p.resume_data == {"ok": True}
    assert p.key_args == ("work", None, 1, 3)
    result = settled(p.returned("done", None, NOW, None))
    assert result.payload == "stored input"
    assert result.resume_payload == {"ok": True}
    assert result.resumed_at == 1_500
    assert result.metadata == {ITERATION_COUNT: 1, RESUME_COUNT: 3}


def test_resume_without_stored_record_keeps_the_given_input() -> None:
    p = plan(value="v", resume=NodeResume(data=None, tail=[], stored=None))
    assert p.step_input == "v"
    assert p.key_args[3] == 1
    assert settled(p.returned(1, None, NOW, None)).metadata == {RESUME_COUNT: 1}


def test_valid_input_is_converted_by_its_schema() -> None:
    p = plan(Node(input_schema=Counter), value={"n": 4})
    assert p.rejection is None
    assert p.step_input == Counter(4)
    # The result records the input as given.
    assert settled(p.returned(1, None, NOW, None)).payload == {"n": 4}


def test_invalid_input_rejects_the_step_before_any_attempt() -> None:
    p = plan(Node(input_schema=int, retries=3), value="not an int")
    assert isinstance(p.rejection, ValidationError)
    assert str(p.rejection).startswith("Invalid step input:")
    result = settled(p.rejected(NOW))
    assert result.status is _S.FAILED
    assert result.error is p.rejection
    assert (result.retry_count, result.ended_at, result.payload) == (0, NOW, "not an int")


def test_invalid_input_is_not_checked_when_the_workflow_does_not_validate() -> None:
    p = plan(Node(input_schema=int), Flow(validate_inputs=False), value="x")
    assert p.rejection is None
    assert p.step_input == "x"


def test_invalid_resume_data_rejects_the_step_but_records_the_data_as_given() -> None:
    resume = NodeResume(data="nope", tail=[], stored={"payload": 1})
    p = plan(Node(resume_schema=int), resume=resume)
    assert isinstance(p.rejection, ValidationError)
    assert str(p.rejection).startswith("Invalid resume data:")
    assert settled(p.rejected(NOW)).resume_payload == "nope"


def test_resume_schema_is_not_checked_on_a_fresh_run() -> None:
    assert plan(Node(resume_schema=int)).rejection is None


def test_valid_resume_data_is_converted() -> None:
    resume = NodeResume(data={"n": 1}, tail=[], stored={"payload": 1})
    p = plan(Node(resume_schema=Counter), resume=resume)
    assert p.resume_data == Counter(1)
    assert settled(p.returned(1, None, NOW, None)).resume_payload == {"n": 1}


# --------------------------------------------------------------------------- raised


def test_retries_then_fails_when_exhausted() -> None:
    p = plan(Node(retries=2), Flow(retry_config=Retries(attempts=9, delay=0.5)))
    assert p.raised(ValueError("1"), NOW) == Retry(delay=0.5)
    assert p.attempt == 1
    assert p.raised(ValueError("2"), NOW) == Retry(delay=0.5)
    last = ValueError("3")
    result = settled(p.raised(last, NOW))
    assert (result.status, result.error, result.retry_count) == (_S.FAILED, last, 2)
    assert result.ended_at == NOW


def test_workflow_retry_config_applies_when_the_node_sets_none() -> None:
    p = plan(Node(), Flow(retry_config=Retries(attempts=1)))
    assert p.raised(RuntimeError(), NOW) == Retry(delay=0.0)
    assert settled(p.raised(RuntimeError(), NOW)).retry_count == 1


def test_node_retries_zero_overrides_the_workflow() -> None:
    p = plan(Node(retries=0), Flow(retry_config=Retries(attempts=5)))
    assert settled(p.raised(RuntimeError(), NOW)).status is _S.FAILED


def test_non_retryable_error_fails_at_once() -> None:
    p = plan(Node(retries=3))
    exc = NonRetryableError("stop")
    result = settled(p.raised(exc, NOW))
    assert (result.status, result.error, result.retry_count) == (_S.FAILED, exc, 0)


def test_non_retryable_after_retries_counts_them() -> None:
    p = plan(Node(retries=3))
    assert isinstance(p.raised(ValueError(), NOW), Retry)
    assert settled(p.raised(NonRetryableError("stop"), NOW)).retry_count == 1


class Custom(BaseException):
    pass


@pytest.mark.parametrize(
    "exc", [SystemExit(3), GeneratorExit(), Custom("mine")], ids=lambda e: type(e).__name__
)
def test_base_exception_subclasses_fail_the_step_unretried(exc: BaseException) -> None:
    p = plan(Node(retries=5))
    result = settled(p.raised(exc, NOW))
    assert (result.status, result.error, result.retry_count) == (_S.FAILED, exc, 0)


def test_tripwire_fails_with_its_info_and_is_never_retried() -> None:
    p = plan(Node(retries=5))
    exc = TripwireError("blocked", retry=True, metadata={"rule": "pii", "n": [1, 2]})
    decision = p.raised(exc, NOW)
    assert isinstance(decision, Settle)
    run = decision.run
    assert run.result.status is _S.FAILED
    assert run.result.error is exc
    assert run.tripwire is not None
    assert (run.tripwire.reason, run.tripwire.retry, run.tripwire.step_id) == (
        "blocked",
        True,
        "work",
    )
    assert run.tripwire.metadata == {"rule": "pii", "n": [1, 2]}
    assert outcome_of(run).status is _S.TRIPWIRE


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_tripwire_with_odd_metadata_is_made_strict_json_not_a_failure() -> None:
    odd: dict[Any, Any] = {"nan": math.nan, "obj": Opaque(), 7: "seven"}
    exc = TripwireError("x\ud800y", metadata=odd)
    exc.retry = "yes"  # type: ignore[assignment]  # truthy, not a bool
    info = plan().raised(exc, NOW).run.tripwire  # type: ignore[union-attr]
    assert info is not None
    assert info.reason == "x\\ud800y"
    assert info.retry is True
    assert info.metadata == {"nan": "nan", "obj": "<opaque>", "7": "seven"}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, None),
        ([1, 2], {"value": "[1, 2]"}),
        (Opaque(), {"value": "<opaque>"}),
        (BrokenRepr(), {"value": "<unprintable BrokenRepr>"}),
    ],
)
def test_tripwire_metadata_that_is_not_a_dict(metadata: Any, expected: Any) -> None:
    exc = TripwireError("r")
    exc.metadata = metadata
    info = plan().raised(exc, NOW).run.tripwire  # type: ignore[union-attr]
    assert info is not None
    assert info.metadata == expected


def test_tripwire_with_a_non_string_reason() -> None:
    exc = TripwireError(42)  # type: ignore[arg-type]
    info = plan().raised(exc, NOW).run.tripwire  # type: ignore[union-attr]
    assert info is not None
    assert info.reason == "42"


# --------------------------------------------------------------------------- timeouts


def test_timed_out_names_the_step_and_its_timeout() -> None:
    p = plan(Node(id="slow", timeout=1.5))
    err = p.timed_out()
    assert isinstance(err, StepTimeoutError)
    assert (err.step_id, err.timeout) == ("slow", 1.5)
    assert str(err) == "Step 'slow' timed out after 1.5 s"


def test_a_timeout_is_retried_like_any_error() -> None:
    p = plan(Node(id="slow", timeout=1.0, retries=1))
    assert isinstance(p.raised(p.timed_out(), NOW), Retry)
    result = settled(p.raised(p.timed_out(), NOW))
    assert isinstance(result.error, StepTimeoutError)
    assert result.retry_count == 1


# --------------------------------------------------------------------------- cancelled


def test_cancelled_result_keeps_start_and_resume() -> None:
    resume = NodeResume(data="go", tail=[], stored={"payload": "in"})
    p = plan(resume=resume, resumed_at=1_200, iteration=2)
    result = p.cancelled(3_000)
    assert result == StepResult(
        status=_S.CANCELED,
        payload="in",
        started_at=STARTED,
        ended_at=3_000,
        resume_payload="go",
        resumed_at=1_200,
        metadata={ITERATION_COUNT: 2, RESUME_COUNT: 1},
    )


# --------------------------------------------------------------------------- returned


def test_suspend_with_labels() -> None:
    p = plan(value="in")
    effects = StepEffects(suspended=True, suspend_payload={"ask": 1}, resume_labels=["a", "b"])
    decision = p.returned("partial", effects, NOW, None)
    assert isinstance(decision, Settle)
    result = decision.run.result
    assert result.status is _S.SUSPENDED
    assert (result.suspend_payload, result.suspend_output) == ({"ask": 1}, "partial")
    assert (result.suspended_at, result.ended_at, result.payload) == (NOW, None, "in")
    assert [(label.name, label.path) for label in decision.run.labels] == [("a", []), ("b", [])]
    assert decision.state is UNCHANGED


def test_suspend_keeps_its_state_update() -> None:
    effects = StepEffects(new_state={"x": 2}, suspended=True)
    decision = plan().returned(None, effects, NOW, {"x": 1, "y": 0})
    assert isinstance(decision, Settle)
    assert decision.run.result.status is _S.SUSPENDED
    assert decision.state == {"x": 2, "y": 0}


def test_bail_succeeds_with_the_bail_value() -> None:
    effects = StepEffects(bailed=True, bail_value={"final": 1})
    decision = plan().returned("ignored", effects, NOW, None)
    assert isinstance(decision, Settle)
    assert decision.run.bailed is True
    assert decision.run.result.status is _S.SUCCESS
    assert decision.run.result.output == {"final": 1}
    assert outcome_of(decision.run).status is _S.BAILED


def test_suspend_wins_over_bail() -> None:
    effects = StepEffects(suspended=True, bailed=True, bail_value=1)
    assert settled(plan().returned(None, effects, NOW, None)).status is _S.SUSPENDED


def test_state_update_merges_into_a_copy() -> None:
    state = {"a": 1, "b": 1}
    decision = plan().returned(5, StepEffects(new_state={"b": 2}), NOW, state)
    assert isinstance(decision, Settle)
    assert decision.state == {"a": 1, "b": 2}
    assert state == {"a": 1, "b": 1}
    assert decision.run.result.output == 5


def test_state_update_uses_the_workflow_schema_when_the_step_has_none() -> None:
    decision = plan(flow=Flow(state_schema=Counter)).returned(
        None, StepEffects(new_state={"n": 3}), NOW, Counter(1)
    )
    assert isinstance(decision, Settle)
    assert decision.state == Counter(3)


def test_state_update_of_the_wrong_type_fails_the_step() -> None:
    result = settled(plan(Node(retries=3)).returned(1, StepEffects(new_state=5), NOW, {}))
    assert result.status is _S.FAILED
    assert isinstance(result.error, TypeError)
    assert "set_state() expects a dict" in str(result.error)
    assert result.retry_count == 0


def test_state_update_failing_its_schema_fails_the_step_and_keeps_the_state() -> None:
    p = plan(Node(state_schema=Counter))
    decision = p.returned(1, StepEffects(new_state={"n": "many"}), NOW, Counter(1))
    assert isinstance(decision, Settle)
    assert decision.state is UNCHANGED
    assert isinstance(decision.run.result.error, ValidationError)
    assert str(decision.run.result.error).startswith("Invalid state:")


def test_failed_state_update_of_a_suspending_step_fails_it() -> None:
    effects = StepEffects(new_state=5, suspended=True)
    assert settled(plan().returned(None, effects, NOW, {})).status is _S.FAILED


CYCLE: list[Any] = []
CYCLE.append(CYCLE)
BAD = [object(), b"bytes", math.nan, math.inf, {"k": CYCLE}, "lone \ud800"]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_plain_output_that_is_not_json_fails_the_step(bad: Any) -> None:
    result = settled(plan(Node(retries=3)).returned(bad, None, NOW, None))
    assert result.status is _S.FAILED
    assert isinstance(result.error, NotJsonError)
    assert result.error.what == "Step output"
    assert result.retry_count == 0


def test_not_json_error_names_the_path() -> None:
    result = settled(plan().returned({"items": [1, b"x"]}, None, NOW, None))
    assert isinstance(result.error, NotJsonError)
    assert result.error.path == "items[1]"


def test_json_values_that_are_not_plain_are_accepted() -> None:
    # A subclass of dict is JSON though not "plainly" so: the slow check accepts it.
    class D(dict[str, Any]):
        pass

    assert settled(plan().returned(D(a=1), None, NOW, None)).status is _S.SUCCESS


def what_failed(output: Any, effects: StepEffects) -> str | None:
    result = settled(plan().returned(output, effects, NOW, {}))
    if result.status is not _S.FAILED:
        return None
    assert isinstance(result.error, NotJsonError)
    return result.error.what


def test_not_json_checks_in_order() -> None:
    bad = object()
    # The state update is checked first, whatever else is wrong.
    assert what_failed(bad, StepEffects(new_state={"x": bad}, suspended=True)) == "State update"
    assert what_failed(bad, StepEffects(new_state={"x": bad})) == "State update"
    # Suspending: the payload, then the output.
    assert what_failed(bad, StepEffects(suspended=True, suspend_payload=bad)) == "Suspend payload"
    assert what_failed(bad, StepEffects(suspended=True)) == "Step output"
    # Bailing: only the bail value is stored; the output is not.
    assert what_failed(bad, StepEffects(bailed=True, bail_value=bad)) == "Bail value"
    assert what_failed(bad, StepEffects(bailed=True, bail_value=1)) is None
    # A plain step with a state update: the output.
    assert what_failed(bad, StepEffects(new_state={"x": 1})) == "Step output"


def test_not_json_failure_after_retries_counts_them() -> None:
    p = plan(Node(retries=2))
    p.raised(ValueError(), NOW)
    assert settled(p.returned(object(), None, NOW, None)).retry_count == 1


# --------------------------------------------------------------------------- hypothesis

KINDS = ["error", "non_retryable", "tripwire", "base", "timeout", "ok"]


def make(kind: str) -> BaseException | None:
    return {
        "error": ValueError("e"),
        "non_retryable": NonRetryableError("n"),
        "tripwire": TripwireError("t"),
        "base": Custom("b"),
        "timeout": StepTimeoutError("work", 1.0),
        "ok": None,
    }[kind]


@given(
    node_retries=st.one_of(st.none(), st.integers(0, 6)),
    workflow_attempts=st.integers(0, 6),
    delay=st.sampled_from([0.0, 0.25, 3.0]),
    attempts=st.lists(st.sampled_from(KINDS), min_size=1, max_size=10),
)
def test_attempt_sequences_follow_the_retry_rules(
    node_retries: int | None, workflow_attempts: int, delay: float, attempts: list[str]
) -> None:
    """Feed attempts until the plan settles; compare with the rules stated plainly."""
    p = plan(
        Node(retries=node_retries),
        Flow(retry_config=Retries(attempts=workflow_attempts, delay=delay)),
    )
    allowed = node_retries if node_retries is not None else workflow_attempts
    for number, kind in enumerate(attempts):
        assert p.attempt == number
        exc = make(kind)
        decision: Retry | Settle = (
            p.returned(number, None, NOW, None) if exc is None else p.raised(exc, NOW)
        )
        retryable = kind in ("error", "timeout")
        if retryable and number < allowed:
            assert decision == Retry(delay=delay)
            continue
        result = settled(decision)
        assert result.retry_count == number
        if exc is None:
            assert (result.status, result.output) == (_S.SUCCESS, number)
        else:
            assert (result.status, result.error) == (_S.FAILED, exc)
            assert (decision.run.tripwire is not None) == (kind == "tripwire")  # type: ignore[union-attr]
        return
    # Every attempt given was retried: there was room for all of them.
    assert all(kind in ("error", "timeout") for kind in attempts)
    assert len(attempts) <= allowed


@given(retries=st.integers(0, 20))
def test_a_failing_step_makes_exactly_its_retries(retries: int) -> None:
    p = plan(Node(retries=retries))
    decisions = [p.raised(ValueError(), NOW) for _ in range(retries + 1)]
    assert all(isinstance(d, Retry) for d in decisions[:-1])
    assert settled(decisions[-1]).retry_count == retries
