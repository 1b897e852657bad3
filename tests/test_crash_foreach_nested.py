"""Crash recovery of foreach items and nested workflows together (found by the crash
properties once their exclusions of these shapes were lifted)."""

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


def _foreach_over_nested(*, concurrency: int, items: int, inner: StepSpec) -> WorkflowSpec:
    return WorkflowSpec(
        id="wf",
        entries=(
            MapSpec(mode="list", length=items),
            ForeachSpec(
                node=WorkflowSpec(
                    id="w1",
                    entries=(
                        MapSpec(mode="list", length=1),
                        ForeachSpec(node=inner, concurrency=1),
                        ThenSpec(node=StepSpec(id="s2")),
                    ),
                ),
                concurrency=concurrency,
            ),
            ThenSpec(node=StepSpec(id="s3")),
        ),
    )


def test_a_nested_workflow_in_a_foreach_item_continues_after_a_crash() -> None:
    """An item's nested workflow stores its progress (``w1[0].@progress``): a crash after
    its inner foreach settled re-runs only what was running, not the whole item (before:
    the item re-ran whole, and w1.map_0 and w1.s1 ran again)."""
    spec = _foreach_over_nested(concurrency=1, items=1, inner=StepSpec(id="s1"))

    async def check() -> None:
        report = await check_crash_points(build_workflow(spec), input_data={"x": 0})
        assert report.failures() == [], report.summary()
        for (write, mode), steps in report.reran.items():
            assert "w1.map_0" not in steps or write <= 4, (write, mode, steps)

    run_on_mock_clock(check)


def test_items_in_flight_at_a_crash_all_run_again_when_one_fails_at_once() -> None:
    """Two nested items in flight; one's inner failure was stored before the crash, so
    on restart it fails again at once: the other in-flight item still runs, at every
    crash point. (The planner's side, which failed before: test_plan_foreach's
    test_items_in_flight_at_a_crash_run_again_even_after_one_of_them_stops_the_foreach;
    the crash property found it as chunks missing from the log.)"""
    spec = _foreach_over_nested(
        concurrency=2, items=2, inner=StepSpec(id="s1", action="fail", sleep=1)
    )

    async def check() -> None:
        report = await check_crash_points(build_workflow(spec), input_data={"x": 0})
        assert str(report.reference.result.status) == "failed"
        assert report.failures() == [], report.summary()

    run_on_mock_clock(check)
