"""Crash recovery of a resumed foreach inside a nested workflow (found by the crash
properties once their exclusion of suspending foreach items was lifted)."""

from __future__ import annotations

from trioflow.testing import (
    ForeachSpec,
    MapSpec,
    ParallelSpec,
    ResumeRequest,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    build_workflow,
    check_crash_points,
    resume_with,
    run_on_mock_clock,
)


def test_a_crash_after_a_resumed_foreach_settled_inside_a_nested_workflow_recovers() -> None:
    """The resume reaches w1.s3 (a foreach whose item suspended); the item resumes, the
    foreach settles and w1 goes on; a crash then leaves the run's pending resume stored
    while w1's header no longer has s3 suspended. restart() used to raise KeyError('s3')
    replaying that resume; now w1 continues where it was, and every crash point of the
    resumed execution ends as the uninterrupted run does."""
    spec = WorkflowSpec(
        id="wf",
        entries=(
            ThenSpec(node=StepSpec(id="s1")),
            ParallelSpec(nodes=(StepSpec(id="s2"),)),
            ThenSpec(
                node=WorkflowSpec(
                    id="w1",
                    entries=(
                        MapSpec(mode="list", length=1),
                        ForeachSpec(node=StepSpec(id="s3", action="suspend"), concurrency=1),
                        ThenSpec(node=StepSpec(id="s4")),
                    ),
                )
            ),
        ),
    )

    async def check() -> None:
        report = await check_crash_points(
            build_workflow(spec),
            input_data={"x": 0},
            resumer=resume_with(ResumeRequest(resume_data={"value": 0})),
        )
        assert str(report.reference.result.status) == "success"
        assert report.writes > 10
        assert report.failures() == [], report.summary()

    run_on_mock_clock(check)
