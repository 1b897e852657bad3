"""Property tests: random workflows run by the engine must do what the reference model of
``trioflow.testing`` predicts (status, result, error, suspended paths and payloads, step
results, state, the chunks of every execution), satisfy the stream invariants, and survive
the wire format; under fault plans too (subscribers that detach and re-attach, concurrent
resumes, cancel at a random time).

Sync ``@given`` tests, each example in a fresh ``trio.run`` on an autojumping MockClock.
``TRIOFLOW_HYPOTHESIS_PROFILE=thorough`` runs twenty times more examples.

Engine bugs these properties found are excluded below (``known_engine_bug``) until fixed;
each has a failing regression test in tests/test_properties_regressions.py.
"""

from __future__ import annotations

from hypothesis import assume, event, given
from hypothesis import strategies as st

from trioflow.testing import (
    NodeSpec,
    WorkflowSpec,
    check_against_model,
    run_on_mock_clock,
    walk_steps,
)
from trioflow.testing.strategies import fault_plans, inputs_for, profile_settings, workflows


def _suspends(node: NodeSpec) -> bool:
    return any(step.action == "suspend" for step in walk_steps(node))


def known_engine_bug(spec: WorkflowSpec) -> str | None:
    """The known engine bug a generated workflow would run into, if any (none left: the
    bugs these properties found are fixed and pinned by regression tests)."""
    del spec
    return None


@profile_settings(250)
@given(data=st.data())
def test_random_workflows_do_what_the_reference_model_predicts(data: st.DataObject) -> None:
    generated = data.draw(workflows(), label="workflow")
    assume(known_engine_bug(generated.spec) is None)
    plan = data.draw(inputs_for(generated), label="plan")
    record = run_on_mock_clock(check_against_model, generated, plan)
    event(f"ends {record.expected[-1].status}")
    event(f"resumes: {min(len(record.expected) - 1, 3)}{'+' if len(record.expected) > 3 else ''}")


@profile_settings(80)
@given(data=st.data())
def test_subscribers_that_detach_and_reattach_read_the_whole_log(data: st.DataObject) -> None:
    generated = data.draw(workflows(), label="workflow")
    assume(known_engine_bug(generated.spec) is None)
    plan = data.draw(inputs_for(generated), label="plan")
    faults = data.draw(fault_plans(kinds=("detach",)), label="faults")
    run_on_mock_clock(check_against_model, generated, plan, faults)


@profile_settings(80)
@given(data=st.data())
def test_exactly_one_of_concurrent_resumes_wins(data: st.DataObject) -> None:
    generated = data.draw(workflows(actions=("return", "suspend")), label="workflow")
    assume(known_engine_bug(generated.spec) is None)
    plan = data.draw(inputs_for(generated), label="plan")
    faults = data.draw(fault_plans(kinds=("resumes",)), label="faults")
    run_on_mock_clock(check_against_model, generated, plan, faults)


# Every entry kind, nested workflows included: a cancel gives every started entry its
# terminal chunk (regression tests: test_cancel_gives_every_started_entry_a_result).
@profile_settings(150)
@given(data=st.data())
def test_cancel_at_a_random_time_ends_the_run_canceled(data: st.DataObject) -> None:
    generated = data.draw(workflows(), label="workflow")
    plan = data.draw(inputs_for(generated), label="plan")
    faults = data.draw(fault_plans(kinds=("cancel",)), label="faults")
    record = run_on_mock_clock(check_against_model, generated, plan, faults)
    event("canceled" if str(record.results[-1].status) == "canceled" else "ended before the cancel")
