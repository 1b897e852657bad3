"""Crash properties: a random workflow whose process dies at a random durable write, then
recovered from storage in a new runtime (start again / restart / resume), must end as the
uninterrupted run and as the reference model say, with an event log that holds the same
settled facts; and every crash point of small random workflows, and of a fixed workflow on
SQLite, passes the crash-point harness.

Every generated shape is checked: no exclusions (nested workflows inside foreach items,
suspending foreach items resumed, loops over nested workflows included).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow.testing import (
    ForeachSpec,
    LoopSpec,
    MapSpec,
    ParallelSpec,
    ResumeRequest,
    SleepSpec,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    build_workflow,
    check_against_model,
    check_crash_points,
    resume_with,
    run_on_mock_clock,
)
from trioflow.testing.strategies import (
    ENTRY_KINDS,
    fault_plans,
    inputs_for,
    profile_settings,
    workflows,
)

#: Every kind of entry (no exclusions).
CRASH_KINDS = ENTRY_KINDS


@profile_settings(120)
@given(data=st.data())
def test_a_crash_at_a_random_durable_write_recovers_to_the_same_outcome(
    data: st.DataObject,
) -> None:
    generated = data.draw(workflows(max_depth=1, entry_kinds=CRASH_KINDS), label="workflow")
    plan = data.draw(inputs_for(generated), label="plan")
    faults = data.draw(fault_plans(kinds=("crash",)), label="faults")
    run_on_mock_clock(check_against_model, generated, plan, faults)


@profile_settings(10)
@given(data=st.data())
def test_every_crash_point_of_small_random_workflows(data: st.DataObject) -> None:
    generated = data.draw(
        workflows(max_depth=1, max_entries=3, max_steps=4, entry_kinds=CRASH_KINDS),
        label="workflow",
    )
    plan = data.draw(inputs_for(generated), label="plan")
    expected = generated.expectations(plan)
    requests = [request for request, _ in expected[1:] if request is not None]
    final = expected[-1][1]

    async def check() -> None:
        report = await check_crash_points(
            generated.workflow,
            input_data=plan.input_data,
            resumer=resume_with(*requests) if requests else None,
        )
        assert str(report.reference.result.status) == final.status
        assert report.writes >= 2
        assert all(p.crashed for p in report.points if p.write <= 2)

    run_on_mock_clock(check)


def test_every_crash_point_on_sqlite(tmp_path: Path) -> None:
    spec = WorkflowSpec(
        id="wf",
        entries=(
            ThenSpec(node=StepSpec(id="a", writes=1, set_state=True)),
            ParallelSpec(nodes=(StepSpec(id="b", sleep=1), StepSpec(id="c", sleep=2))),
            MapSpec(mode="list", length=3),
            ForeachSpec(node=StepSpec(id="d", sleep=1), concurrency=2),
            SleepSpec(seconds=5),
            LoopSpec(node=StepSpec(id="e"), kind="dountil", iterations=2),
            ThenSpec(node=StepSpec(id="f", action="suspend", label=True)),
        ),
    )
    files = (tmp_path / f"run-{n}.db" for n in itertools.count())

    async def check() -> None:
        report = await check_crash_points(
            build_workflow(spec),
            input_data={"x": 3},
            resumer=resume_with(ResumeRequest(resume_data={"value": 5}, step=("f",))),
            storage_factory=lambda: tf.SqliteStorage(next(files)),
            modes=("before", "after"),
        )
        assert str(report.reference.result.status) == "success"
        assert report.reference.result.result["resumed"] == 5
        assert all(p.crashed for p in report.points)

    run_on_mock_clock(check)
