"""trioflow.testing specs and the reference model: what a scripted step does, and what the
model predicts for each control-flow construct (computed by hand here, independently of
the engine), including suspensions, resumes, labels and foreach iterations."""

from __future__ import annotations

from collections import Counter

import pytest

from trioflow.testing import (
    BranchSpec,
    ForeachSpec,
    LoopSpec,
    MapSpec,
    ModelError,
    ParallelSpec,
    ReferenceModel,
    ResumeRequest,
    SleepSpec,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    build_workflow,
    describe,
)
from trioflow.testing._spec import digest, failure_message, output_number, state_key

INPUT = {"x": 1}


def out(step_id: str, value: object, salt: int = 0) -> dict[str, object]:
    return {"s": step_id, "n": output_number(StepSpec(id=step_id, salt=salt), digest(value))}


def wf(*entries: object) -> WorkflowSpec:
    return WorkflowSpec(id="wf", entries=tuple(entries))  # type: ignore[arg-type]


def test_digest_is_stable_and_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert 0 <= digest("anything") < 10007


def test_a_chain_passes_each_output_on() -> None:
    model = ReferenceModel(
        wf(ThenSpec(node=StepSpec(id="a")), ThenSpec(node=StepSpec(id="b"))), INPUT
    )
    expected = model.start()
    a = out("a", INPUT)
    assert expected.status == "success"
    assert expected.result == out("b", a)
    assert expected.steps == {"a": ("success", a), "b": ("success", out("b", a))}
    assert expected.chunks == Counter(
        {
            ("workflow-start", "", ""): 1,
            ("workflow-step-start", "a", ""): 1,
            ("workflow-step-result", "a", "success"): 1,
            ("workflow-step-start", "b", ""): 1,
            ("workflow-step-result", "b", "success"): 1,
            ("workflow-finish", "", "success"): 1,
        }
    )


def test_a_failing_step_fails_the_run_and_discards_its_state() -> None:
    spec = wf(
        ThenSpec(node=StepSpec(id="a", set_state=True)),
        ThenSpec(node=StepSpec(id="b", action="fail", set_state=True)),
        ThenSpec(node=StepSpec(id="c")),
    )
    expected = ReferenceModel(spec, INPUT).start()
    a = out("a", INPUT)
    assert expected.status == "failed"
    assert expected.errors == {failure_message(StepSpec(id="b"), digest(a))}
    assert set(expected.state) == {state_key(StepSpec(id="a"), digest(INPUT))}
    assert "c" not in expected.steps


def test_when_makes_an_action_depend_on_the_parity_of_the_input() -> None:
    even = {"x": next(x for x in range(100) if digest({"x": x}) % 2 == 0)}
    odd = {"x": next(x for x in range(100) if digest({"x": x}) % 2 == 1)}
    spec = wf(ThenSpec(node=StepSpec(id="a", action="fail", when="odd")))
    assert ReferenceModel(spec, even).start().status == "success"
    assert ReferenceModel(spec, odd).start().status == "failed"


def test_parallel_output_maps_ids_and_concurrent_failures_allow_either_error() -> None:
    spec = wf(
        ParallelSpec(
            nodes=(
                StepSpec(id="a", action="fail"),
                StepSpec(id="b"),
                StepSpec(id="c", action="fail"),
            )
        )
    )
    expected = ReferenceModel(spec, INPUT).start()
    number = digest(INPUT)
    assert expected.status == "failed"
    assert expected.errors == {
        failure_message(StepSpec(id="a"), number),
        failure_message(StepSpec(id="c"), number),
    }
    assert expected.steps["b"] == ("success", out("b", INPUT))


def test_branch_runs_every_true_arm_and_a_raising_condition_counts_as_false() -> None:
    spec = wf(
        BranchSpec(
            conditions=("true", "raise", "true", "false"),
            nodes=(StepSpec(id="a"), StepSpec(id="b"), StepSpec(id="c"), StepSpec(id="d")),
        )
    )
    expected = ReferenceModel(spec, INPUT).start()
    assert expected.result == {"a": out("a", INPUT), "c": out("c", INPUT)}
    assert set(expected.steps) == {"a", "c"}


def test_a_branch_with_no_true_arm_outputs_an_empty_dict() -> None:
    spec = wf(BranchSpec(conditions=("false",), nodes=(StepSpec(id="a"),)))
    assert ReferenceModel(spec, INPUT).start().result == {}


def test_loops_run_their_body_the_given_number_of_times() -> None:
    for kind in ("dowhile", "dountil"):
        spec = wf(LoopSpec(node=StepSpec(id="a"), kind=kind, iterations=3))  # type: ignore[arg-type]
        expected = ReferenceModel(spec, INPUT).start()
        assert expected.result == out("a", out("a", out("a", INPUT)))
        assert expected.chunks[("workflow-step-start", "a", "")] == 3


def test_foreach_outputs_in_input_order_with_one_progress_per_item() -> None:
    spec = wf(MapSpec(mode="list", length=3), ForeachSpec(node=StepSpec(id="a"), concurrency=2))
    expected = ReferenceModel(spec, INPUT).start()
    base = digest(INPUT)
    items = [(base + i) % 1000 for i in range(3)]
    assert expected.result == [out("a", item) for item in items]
    assert expected.chunks[("workflow-step-progress", "a", "success")] == 3
    assert expected.chunks[("workflow-step-start", "a", "")] == 1


def test_sleep_passes_its_input_through_and_takes_its_time() -> None:
    spec = wf(
        SleepSpec(seconds=3),
        ParallelSpec(nodes=(StepSpec(id="a", sleep=2), StepSpec(id="b", sleep=1))),
    )
    expected = ReferenceModel(spec, INPUT).start()
    assert expected.steps["sleep_0"] == ("success", INPUT)
    assert expected.chunks[("workflow-step-waiting", "sleep_0", "")] == 1
    assert ("workflow-step-start", "sleep_0", "") not in expected.chunks
    assert expected.duration == 3 + 2


def test_a_nested_workflow_is_one_step_whose_chunks_are_prefixed() -> None:
    inner = WorkflowSpec(id="n", entries=(ThenSpec(node=StepSpec(id="a", set_state=True)),))
    expected = ReferenceModel(wf(ThenSpec(node=inner)), INPUT).start()
    assert expected.result == out("a", INPUT)
    assert set(expected.steps) == {"n"}
    assert expected.chunks[("workflow-step-start", "n.a", "")] == 1
    assert state_key(StepSpec(id="a"), digest(INPUT)) in expected.state


def test_suspend_and_resume_delivers_the_data_to_the_step() -> None:
    spec = wf(
        ThenSpec(node=StepSpec(id="a", action="suspend", rounds=2)), ThenSpec(node=StepSpec(id="b"))
    )
    model = ReferenceModel(spec, INPUT)
    first = model.start()
    number = digest(INPUT)
    assert first.status == "suspended"
    assert first.suspended == ("a",)
    assert first.suspend_payload == {"a": {"s": "a", "round": 1, "n": number}}
    second = model.resume(ResumeRequest(resume_data={"value": 4}, step=("a",)))
    assert second.suspend_payload == {"a": {"s": "a", "round": 2, "n": number, "got": 4}}
    third = model.resume(ResumeRequest(resume_data={"value": 5}))
    a = {"s": "a", "n": output_number(StepSpec(id="a"), number), "resumed": 5, "round": 2}
    assert third.status == "success"
    assert third.result == out("b", a)


def test_suspended_paths_go_through_nested_workflows_and_labels_find_them() -> None:
    inner = WorkflowSpec(
        id="n", entries=(ThenSpec(node=StepSpec(id="a", action="suspend", label=True)),)
    )
    model = ReferenceModel(
        wf(ParallelSpec(nodes=(inner, StepSpec(id="b", action="suspend")))), INPUT
    )
    expected = model.start()
    assert set(expected.suspended) == {"n.a", "b"}
    label = f"a-{digest(INPUT)}"
    assert expected.labels == {label: (("n", "a"), None)}
    after = model.resume(ResumeRequest(resume_data={"value": 1}, label=label))
    assert after.suspended == ("b",)
    assert after.status == "suspended"


def test_foreach_stops_taking_items_at_the_first_suspension_with_concurrency_one() -> None:
    spec = wf(MapSpec(mode="list", length=3), ForeachSpec(node=StepSpec(id="a", action="suspend")))
    model = ReferenceModel(spec, INPUT)
    first = model.start()
    assert first.foreach_suspended == {"a": (0,)}
    assert first.chunks[("workflow-step-progress", "a", "suspended")] == 1
    # Resuming item 0 runs the items never started: item 1 suspends in turn.
    second = model.resume(ResumeRequest(resume_data={"value": 1}, step=("a",)))
    assert second.foreach_suspended == {"a": (1,)}


def test_resuming_a_path_that_is_not_suspended_is_a_model_error() -> None:
    model = ReferenceModel(wf(ThenSpec(node=StepSpec(id="a", action="suspend"))), INPUT)
    model.start()
    with pytest.raises(ModelError, match="is not suspended"):
        model.resume(ResumeRequest(resume_data={"value": 1}, step=("b",)))


def test_build_workflow_gives_a_committed_workflow_with_the_spec_ids() -> None:
    spec = wf(
        ThenSpec(node=StepSpec(id="a")),
        MapSpec(mode="list", length=2),
        ForeachSpec(node=StepSpec(id="b", action="suspend"), concurrency=2),
        SleepSpec(seconds=1),
    )
    workflow = build_workflow(spec)
    assert workflow.committed
    assert [entry.ids for entry in workflow.entries] == [("a",), ("map_1",), ("b",), ("sleep_3",)]
    text = describe(spec)
    assert "foreach(concurrency=2)" in text
    assert "step 'b': suspend" in text
