"""The pure, trio-free core, tested synchronously and exhaustively (h11's rule).

Covers ``trioflow/_core/_status.py`` (the run-status transition table, branch-status
precedence, the run status implied by a step status), ``trioflow/_core/_resume.py`` (which
suspended path a resume targets: SPEC §2 "Resume semantics", mastra-behaviour.md §3.4 step 3-4)
and ``trioflow/_core/_graph.py`` (id rules, dotted paths, map sources, node lookup), plus the
guarantee that the core modules never import trio.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow._core._graph import (
    BranchEntry,
    Const,
    Entry,
    ForeachEntry,
    FromContext,
    FromInit,
    FromStep,
    LoopEntry,
    MapEntry,
    ParallelEntry,
    SleepEntry,
    StepEntry,
    check_id,
    const,
    find_node,
    from_context,
    from_init,
    from_step,
    get_path,
)
from trioflow._core._model import ResumeLabel
from trioflow._core._resume import ResumeTarget, full_suspended_paths, resolve_target
from trioflow._core._status import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransitionError,
    RunStatus,
    StepStatus,
    can_transition,
    check_transition,
    combine_branch_statuses,
    is_terminal,
    run_status_for_step_status,
)

R = RunStatus
S = StepStatus

# =========================================================================== statuses

ALL_PAIRS = list(itertools.product(RunStatus, RunStatus))

#: The transitions the contract calls for (SPEC §2 and mastra-behaviour.md §3-§4), written
#: out independently of the engine's table so that a change to the table is caught.
EXPECTED_ALLOWED: set[tuple[RunStatus, RunStatus]] = {
    (R.PENDING, R.RUNNING),  # start
    (R.PENDING, R.CANCELED),  # cancel() before start
    *((R.RUNNING, new) for new in RunStatus if new is not R.PENDING),
    (R.WAITING, R.RUNNING),  # the sleep ended
    (R.WAITING, R.CANCELED),  # cancel interrupts a sleep at once
    (R.WAITING, R.FAILED),
    (R.SUSPENDED, R.RUNNING),  # a resume claims the suspension
    (R.SUSPENDED, R.CANCELED),  # cancelling a suspended run stores canceled
    (R.PAUSED, R.RUNNING),  # per_step: continue
    (R.PAUSED, R.CANCELED),
}


def test_run_status_values_are_the_spec_strings() -> None:
    assert [s.value for s in RunStatus] == [
        "pending",
        "running",
        "waiting",
        "suspended",
        "success",
        "failed",
        "canceled",
        "tripwire",
        "paused",
    ]
    as_str: str = RunStatus.SUCCESS  # a str enum: compares equal to plain strings
    assert as_str == "success"
    assert tf.RunStatus is RunStatus


def test_step_status_adds_bailed_and_skipped_to_the_run_statuses() -> None:
    step_values = {s.value for s in StepStatus}
    run_values = {s.value for s in RunStatus}
    assert step_values - run_values == {"bailed", "skipped"}
    # A step result is never "pending": only runs are.
    assert run_values - step_values == {"pending"}
    assert tf.StepStatus is StepStatus


def test_transition_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    for targets in TRANSITIONS.values():
        assert targets <= set(RunStatus)


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{o}->{n}" for o, n in ALL_PAIRS])
def test_can_transition_agrees_with_the_table_for_every_pair(
    old: RunStatus, new: RunStatus
) -> None:
    allowed = new in TRANSITIONS[old]
    assert can_transition(old, new) is allowed
    if allowed:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(InvalidTransitionError):
            check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{o}->{n}" for o, n in ALL_PAIRS])
def test_transition_table_matches_the_contract_for_every_pair(
    old: RunStatus, new: RunStatus
) -> None:
    assert can_transition(old, new) is ((old, new) in EXPECTED_ALLOWED)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_status_has_no_way_out(terminal: RunStatus) -> None:
    assert is_terminal(terminal)
    assert TRANSITIONS[terminal] == frozenset()
    for new in RunStatus:
        assert not can_transition(terminal, new)


def test_terminal_set_is_exactly_the_statuses_without_successors() -> None:
    assert {R.SUCCESS, R.FAILED, R.CANCELED, R.TRIPWIRE} == TERMINAL
    assert {s for s, targets in TRANSITIONS.items() if not targets} == TERMINAL
    assert {R.RUNNING, R.WAITING} == ACTIVE
    assert not ACTIVE & TERMINAL


def test_every_non_terminal_status_can_be_canceled() -> None:
    for status in RunStatus:
        if not is_terminal(status):
            assert can_transition(status, R.CANCELED), status


def test_nothing_goes_back_to_pending() -> None:
    for status in RunStatus:
        assert not can_transition(status, R.PENDING)


def test_suspended_run_cannot_finish_without_running_again() -> None:
    for end in (R.SUCCESS, R.FAILED, R.TRIPWIRE, R.SUSPENDED, R.WAITING, R.PAUSED):
        assert not can_transition(R.SUSPENDED, end)


def test_every_status_is_reachable_from_pending_and_every_path_can_end() -> None:
    reachable = {R.PENDING}
    frontier = [R.PENDING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(RunStatus)
    for status in RunStatus:
        # From every status some terminal status is still reachable (no dead ends).
        seen, todo = {status}, [status]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL, status


def test_invalid_transition_error_names_both_statuses() -> None:
    with pytest.raises(InvalidTransitionError) as info:
        check_transition(R.SUCCESS, R.RUNNING)
    assert str(info.value) == "run status cannot go from success to running"
    assert isinstance(info.value, RuntimeError)


def test_combine_all_success_is_success() -> None:
    assert combine_branch_statuses([S.SUCCESS, S.SUCCESS], canceled=False) is S.SUCCESS


def test_combine_no_branches_is_success() -> None:
    assert combine_branch_statuses([], canceled=False) is S.SUCCESS


def test_combine_bailed_and_skipped_branches_count_as_success() -> None:
    assert combine_branch_statuses([S.BAILED, S.SKIPPED, S.SUCCESS], canceled=False) is S.SUCCESS


def test_combine_failed_beats_suspended_and_canceled() -> None:
    statuses = [S.SUSPENDED, S.CANCELED, S.FAILED, S.SUCCESS]
    assert combine_branch_statuses(statuses, canceled=True) is S.FAILED


def test_combine_suspended_beats_canceled() -> None:
    assert combine_branch_statuses([S.CANCELED, S.SUSPENDED], canceled=True) is S.SUSPENDED


def test_combine_canceled_flag_turns_success_into_canceled() -> None:
    assert combine_branch_statuses([S.SUCCESS], canceled=True) is S.CANCELED


def test_combine_a_canceled_branch_makes_the_block_canceled() -> None:
    assert combine_branch_statuses([S.SUCCESS, S.CANCELED], canceled=False) is S.CANCELED


def test_combine_tripwire_branch_makes_the_block_tripwire() -> None:
    # A tripwire is a failure that carries tripwire data: the run ends "tripwire".
    assert combine_branch_statuses([S.SUCCESS, S.TRIPWIRE], canceled=False) is S.TRIPWIRE
    assert combine_branch_statuses([S.SUSPENDED, S.TRIPWIRE], canceled=True) is S.TRIPWIRE


def _expected_combination(statuses: list[StepStatus], canceled: bool) -> StepStatus:
    """Reference model of the precedence: failure kinds, then suspended, then canceled."""
    if S.TRIPWIRE in statuses:
        return S.TRIPWIRE
    if S.FAILED in statuses:
        return S.FAILED
    if S.SUSPENDED in statuses:
        return S.SUSPENDED
    if canceled or S.CANCELED in statuses:
        return S.CANCELED
    return S.SUCCESS


@given(st.lists(st.sampled_from(list(StepStatus)), max_size=8), st.booleans())
def test_combine_follows_the_precedence_for_any_branch_statuses(
    statuses: list[StepStatus], canceled: bool
) -> None:
    combined = combine_branch_statuses(statuses, canceled)
    assert combined is _expected_combination(statuses, canceled)
    # The result never depends on branch order.
    assert combine_branch_statuses(list(reversed(statuses)), canceled) is combined
    # Failure always wins over everything else.
    if S.FAILED in statuses and S.TRIPWIRE not in statuses:
        assert combined is S.FAILED
    # Only statuses that are present (or the canceled flag) can come out.
    assert combined is S.SUCCESS or combined in statuses or (canceled and combined is S.CANCELED)


@pytest.mark.parametrize("status", list(StepStatus))
def test_run_status_for_every_step_status(status: StepStatus) -> None:
    expected = {
        S.SUCCESS: R.SUCCESS,
        S.BAILED: R.SUCCESS,  # bailed never escapes as a run status
        S.SKIPPED: R.SUCCESS,
        S.RUNNING: R.RUNNING,
        S.WAITING: R.WAITING,
        S.SUSPENDED: R.SUSPENDED,
        S.FAILED: R.FAILED,
        S.CANCELED: R.CANCELED,
        S.TRIPWIRE: R.TRIPWIRE,
        S.PAUSED: R.PAUSED,
    }[status]
    result = run_status_for_step_status(status)
    assert result is expected
    assert type(result) is RunStatus


# =========================================================================== resume targeting


def _suspended(*ids: str) -> dict[str, list[int]]:
    """suspended_paths as stored: step id -> its position in the graph."""
    return {step_id: [k] for k, step_id in enumerate(ids)}


def _nested(*inner_paths: Sequence[str]) -> dict[str, Any]:
    """A stored step result of a nested workflow with these suspended inner paths."""
    return {
        "status": "suspended",
        "metadata": {"nested": {"suspended": [list(p) for p in inner_paths]}},
    }


def _resolve(
    suspended_paths: Mapping[str, Sequence[int]],
    steps: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    step: Sequence[str] | None = None,
    label: str | None = None,
    for_each_index: int | None = None,
    resume_labels: Mapping[str, ResumeLabel] | None = None,
) -> ResumeTarget:
    if steps is None:
        steps = {sid: {"status": "suspended"} for sid in suspended_paths}
    return resolve_target(
        step=step,
        label=label,
        for_each_index=for_each_index,
        suspended_paths=suspended_paths,
        steps=steps,
        resume_labels=resume_labels or {},
    )


def test_resolve_single_suspended_step_is_auto_detected() -> None:
    assert _resolve(_suspended("approve")) == ResumeTarget(path=["approve"])


def test_resolve_auto_detect_expands_a_nested_workflow() -> None:
    steps = {"outer": _nested(["inner"])}
    assert _resolve(_suspended("outer"), steps).path == ["outer", "inner"]


def test_resolve_auto_detect_expands_deeply_nested_paths() -> None:
    steps = {"c": _nested(["b", "a", "other"])}
    assert _resolve(_suspended("c"), steps).path == ["c", "b", "a", "other"]


def test_resolve_nothing_suspended_raises_not_suspended() -> None:
    with pytest.raises(tf.NotSuspendedError) as info:
        _resolve({}, {})
    assert str(info.value) == "No suspended steps found in this workflow run"
    assert isinstance(info.value, tf.TrioflowError)


def test_resolve_several_suspended_without_step_lists_every_path() -> None:
    steps = {"a": {"status": "suspended"}, "b": _nested(["c"])}
    with pytest.raises(tf.MultipleSuspendedStepsError) as info:
        _resolve(_suspended("a", "b"), steps)
    assert str(info.value) == (
        "Multiple suspended steps found: [a], [b, c]. "
        'Please specify which step to resume using the "step" parameter.'
    )
    assert info.value.suspended == [["a"], ["b", "c"]]


def test_resolve_unknown_step_lists_the_available_paths() -> None:
    steps = {"a": {"status": "suspended"}, "outer": _nested(["inner"])}
    with pytest.raises(tf.StepNotSuspendedError) as info:
        _resolve(_suspended("a", "outer"), steps, step=["nope"])
    assert str(info.value) == (
        'This workflow step "nope" was not suspended. Available suspended steps: [a, outer.inner]'
    )
    assert info.value.step == "nope"
    assert info.value.suspended == [["a"], ["outer", "inner"]]


def test_resolve_named_top_level_step_among_several() -> None:
    target = _resolve(_suspended("a", "b", "c"), step=["b"])
    assert target.path == ["b"]


def test_resolve_prefix_names_the_nested_workflow_when_one_inner_step_is_suspended() -> None:
    steps = {"a": {"status": "suspended"}, "outer": _nested(["inner"])}
    assert _resolve(_suspended("a", "outer"), steps, step=["outer"]).path == ["outer", "inner"]


def test_resolve_full_dotted_path_into_nested_workflow() -> None:
    steps = {"outer": _nested(["x"], ["y"])}
    target = _resolve(_suspended("outer"), steps, step=["outer", "y"])
    assert target.path == ["outer", "y"]


def test_resolve_prefix_matching_several_inner_paths_is_ambiguous() -> None:
    steps = {"outer": _nested(["x"], ["y"])}
    with pytest.raises(tf.MultipleSuspendedStepsError) as info:
        _resolve(_suspended("outer"), steps, step=["outer"])
    assert info.value.suspended == [["outer", "x"], ["outer", "y"]]


def test_resolve_inner_step_by_its_own_id_when_unambiguous() -> None:
    steps = {"a": {"status": "suspended"}, "outer": _nested(["inner"])}
    assert _resolve(_suspended("a", "outer"), steps, step=["inner"]).path == ["outer", "inner"]


def test_resolve_inner_step_id_shared_by_two_nested_workflows_is_ambiguous() -> None:
    steps = {"w1": _nested(["inner"]), "w2": _nested(["inner"])}
    with pytest.raises(tf.MultipleSuspendedStepsError) as info:
        _resolve(_suspended("w1", "w2"), steps, step=["inner"])
    assert info.value.suspended == [["w1", "inner"], ["w2", "inner"]]


def test_resolve_top_level_id_wins_over_an_inner_step_with_the_same_id() -> None:
    steps = {"inner": {"status": "suspended"}, "outer": _nested(["inner"])}
    assert _resolve(_suspended("inner", "outer"), steps, step=["inner"]).path == ["inner"]


def test_resolve_empty_step_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one step id"):
        _resolve(_suspended("a"), step=[])


def test_resolve_passes_for_each_index_through() -> None:
    target = _resolve(_suspended("each"), step=["each"], for_each_index=3)
    assert target == ResumeTarget(path=["each"], foreach_index=3)
    assert _resolve(_suspended("each"), for_each_index=0).foreach_index == 0


def test_resolve_label_gives_its_path_and_default_foreach_index() -> None:
    labels = {"approve-2": ResumeLabel(path=["outer", "each"], foreach_index=2)}
    steps = {"outer": _nested(["each"]), "other": {"status": "suspended"}}
    target = _resolve(_suspended("outer", "other"), steps, label="approve-2", resume_labels=labels)
    # A label is never ambiguous, even with several suspended paths.
    assert target == ResumeTarget(path=["outer", "each"], foreach_index=2)


def test_resolve_explicit_for_each_index_overrides_the_label_default() -> None:
    labels = {"lbl": ResumeLabel(path=["each"], foreach_index=2)}
    target = _resolve(_suspended("each"), label="lbl", for_each_index=0, resume_labels=labels)
    assert target.foreach_index == 0


def test_resolve_label_path_is_a_copy() -> None:
    label_path = ["a"]
    labels = {"lbl": ResumeLabel(path=label_path)}
    target = _resolve(_suspended("a"), label="lbl", resume_labels=labels)
    target.path.append("mutated")
    assert label_path == ["a"]


def test_resolve_unknown_label_raises_step_not_suspended() -> None:
    labels = {"known": ResumeLabel(path=["a"])}
    with pytest.raises(tf.StepNotSuspendedError) as info:
        _resolve(_suspended("a"), label="unknown", resume_labels=labels)
    assert "unknown" in str(info.value)
    assert info.value.suspended == [["a"]]


def test_full_suspended_paths_keep_suspension_order_with_nested_expanded_in_place() -> None:
    suspended = {"z": [0], "outer": [1], "a": [2, 1]}
    steps = {"z": {"status": "suspended"}, "outer": _nested(["i2"], ["i1"]), "a": {}}
    assert full_suspended_paths(suspended, steps) == [
        ["z"],
        ["outer", "i2"],
        ["outer", "i1"],
        ["a"],
    ]


@pytest.mark.parametrize(
    "stored",
    [
        None,
        {},
        {"metadata": None},
        {"metadata": {}},
        {"metadata": {"nested": None}},
        {"metadata": {"nested": {"suspended": []}}},
        {"metadata": {"nested": "not a header"}},
    ],
    ids=["absent", "empty", "metadata-none", "no-nested", "nested-none", "none-inner", "junk"],
)
def test_full_suspended_paths_without_nested_header_is_the_step_itself(
    stored: dict[str, Any] | None,
) -> None:
    steps: dict[str, Any] = {} if stored is None else {"s": stored}
    assert full_suspended_paths({"s": [0]}, steps) == [["s"]]


# =========================================================================== graph


@pytest.mark.parametrize("good", ["a", "step-1", "Step_2", "with space", "ünïcode", "x:y/z"])
def test_check_id_accepts_plain_ids(good: str) -> None:
    assert check_id("step", good) == good


@pytest.mark.parametrize(
    ("bad", "chars"),
    [("a.b", "."), ("a[0]", "[]"), ("a]", "]"), ("x.[y", ".[")],
)
def test_check_id_rejects_path_characters(bad: str, chars: str) -> None:
    with pytest.raises(ValueError, match="must not contain") as info:
        check_id("step", bad)
    message = str(info.value)
    assert message.startswith(f"step id {bad!r}")
    assert repr(chars) in message


@pytest.mark.parametrize("bad", ["", None, 1, b"bytes", ["a"]])
def test_check_id_rejects_empty_and_non_str(bad: object) -> None:
    with pytest.raises(ValueError, match="workflow id must be a non-empty str"):
        check_id("workflow", bad)


@given(st.text(min_size=1))
def test_check_id_rejects_exactly_the_ids_with_path_characters(value: str) -> None:
    if any(c in value for c in ".[]"):
        with pytest.raises(ValueError, match="must not contain"):
            check_id("step", value)
    else:
        assert check_id("step", value) == value


@attrs.frozen
class Point:
    x: int
    tags: list[str]


def test_get_path_dot_and_empty_return_the_value_itself() -> None:
    value = {"a": 1}
    assert get_path(value, ".") is value
    assert get_path(value, "") is value


def test_get_path_through_nested_dicts() -> None:
    assert get_path({"a": {"b": {"c": 3}}}, "a.b.c") == 3


def test_get_path_through_list_and_tuple_indices() -> None:
    value = {"items": [{"x": 1}, {"x": 2}], "pair": ("p", "q")}
    assert get_path(value, "items.1.x") == 2
    assert get_path(value, "pair.0") == "p"


def test_get_path_through_attributes() -> None:
    value = {"point": Point(x=4, tags=["t0", "t1"])}
    assert get_path(value, "point.x") == 4
    assert get_path(value, "point.tags.1") == "t1"


def test_get_path_keeps_a_stored_none() -> None:
    assert get_path({"a": {"b": None}}, "a.b") is None


@pytest.mark.parametrize(
    ("value", "path", "part"),
    [
        ({"a": {"b": 1}}, "a.c", "c"),
        ({"a": 1}, "missing", "missing"),
        ({"items": [1, 2]}, "items.2", "2"),
        ({"items": [1, 2]}, "items.-1", "-1"),
        ({"items": [1, 2]}, "items.first", "first"),
        ({"p": Point(x=1, tags=[])}, "p.y", "y"),
        ({"a": 1}, "a.b", "b"),
    ],
)
def test_get_path_missing_part_raises_key_error_naming_the_path(
    value: Any, path: str, part: str
) -> None:
    with pytest.raises(KeyError) as info:
        get_path(value, path)
    message = str(info.value)
    assert repr(path) in message
    assert repr(part) in message


json_keys = st.text(alphabet="abcxyz_", min_size=1, max_size=4)


@given(st.lists(json_keys, min_size=1, max_size=6), st.integers())
def test_get_path_finds_a_leaf_at_any_depth(keys: list[str], leaf: int) -> None:
    value: Any = leaf
    for key in reversed(keys):
        value = {key: value}
    assert get_path(value, ".".join(keys)) == leaf


@attrs.frozen
class Node:
    """A minimal graph node: anything with an id."""

    id: str


def test_from_step_accepts_an_id() -> None:
    assert from_step("fetch") == FromStep("fetch", ".")
    assert from_step("fetch", "a.b") == FromStep("fetch", "a.b")


def test_from_step_accepts_a_step_and_a_workflow() -> None:
    async def run(ctx: Any) -> None:
        return None

    step = tf.create_step(id="fetch", execute=run)
    assert from_step(step, "body") == FromStep("fetch", "body")
    wf = tf.create_workflow(id="sub").then(step)
    assert from_step(wf) == FromStep("sub", ".")
    assert tf.from_step is from_step


def test_from_step_rejects_an_invalid_id() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        from_step("a.b")
    with pytest.raises(ValueError, match="non-empty str"):
        from_step("")


def test_other_map_sources() -> None:
    assert from_init() == FromInit(".")
    assert from_init("order.id") == FromInit("order.id")
    assert from_context("user.name") == FromContext("user.name")
    payload = {"k": [1]}
    assert const(payload) == Const(payload)
    assert const(payload).value is payload


def test_find_node_looks_in_every_kind_of_entry() -> None:
    def cond(ctx: Any) -> bool:
        return True

    a, b, c, d, e, f, g = (Node(i) for i in "abcdefg")
    entries: list[Entry] = [
        StepEntry(a),
        ParallelEntry((b, c)),
        BranchEntry((cond, cond), (d, e)),
        LoopEntry(f, cond, "dowhile"),
        ForeachEntry(g, concurrency=2),
        MapEntry("map_5"),
        SleepEntry("sleep_6", seconds=1.0),
    ]
    for node in (a, b, c, d, e, f, g):
        assert find_node(entries, node.id) is node


def test_find_node_absent_or_synthetic_is_none() -> None:
    entries: list[Entry] = [
        StepEntry(Node("a")),
        MapEntry("map_1"),
        SleepEntry("sleep_2", seconds=1),
    ]
    assert find_node(entries, "zzz") is None
    assert find_node(entries, "map_1") is None
    assert find_node(entries, "sleep_2") is None
    assert find_node([], "a") is None


def test_entry_ids() -> None:
    def cond(ctx: Any) -> bool:
        return True

    assert StepEntry(Node("a")).ids == ("a",)
    assert ParallelEntry((Node("b"), Node("c"))).ids == ("b", "c")
    assert BranchEntry((cond,), (Node("d"),)).ids == ("d",)
    assert LoopEntry(Node("e"), cond, "dountil").ids == ("e",)
    assert ForeachEntry(Node("f")).ids == ("f",)
    assert MapEntry("m").ids == ("m",)
    assert SleepEntry("s").ids == ("s",)


# =========================================================================== trio-free


_CORE_MODULES = ["_status", "_graph", "_resume", "_model", "_chunks"]


def test_the_core_does_not_import_trio() -> None:
    """Load the _core modules (and _errors, which _resume needs) without running
    ``trioflow/__init__.py`` (which imports the trio runtime on purpose), and check that
    nothing they import pulls trio in."""
    spec = find_spec("trioflow")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    package_dir = list(spec.submodule_search_locations)
    script = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("trioflow")
        pkg.__path__ = {package_dir!r}
        sys.modules["trioflow"] = pkg
        import trioflow._core
        for name in {_CORE_MODULES!r}:
            __import__("trioflow._core." + name)
        loaded = sorted(m for m in sys.modules if m == "trio" or m.startswith("trio."))
        print(",".join(loaded))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"trio modules imported by the core: {proc.stdout}"


def test_a_path_into_the_items_of_a_suspended_foreach_of_a_nested_workflow_names_it() -> None:
    # Mastra 1.71 lists ["each", "ask"] for an item of a foreach over a nested workflow
    # suspended at "ask", and resumes by it: here it names the foreach (its items are
    # resumed through it). A tail no item is suspended at is refused.
    item = {
        "status": "suspended",
        "metadata": {"nested": {"suspended": [["ask"]], "suspended_paths": {"ask": [0]}}},
    }
    steps = {"each": {"status": "suspended", "metadata": {"foreach": {"outcomes": [item]}}}}
    target = resolve_target(
        step=["each", "ask"],
        label=None,
        for_each_index=0,
        suspended_paths={"each": [1]},
        steps=steps,
        resume_labels={},
    )
    assert target == ResumeTarget(path=["each"], foreach_index=0)
    with pytest.raises(tf.StepNotSuspendedError):
        resolve_target(
            step=["each", "other"],
            label=None,
            for_each_index=None,
            suspended_paths={"each": [1]},
            steps=steps,
            resume_labels={},
        )
