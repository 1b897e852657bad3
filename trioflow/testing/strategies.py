"""Hypothesis strategies for trioflow (needs ``hypothesis``: the ``testing`` extra).

* :func:`workflows` draws random *valid* workflow graphs (then / parallel / branch /
  dowhile / dountil / foreach with concurrency / map / sleep / nested workflows, bounded
  depth and size) of scripted steps, as :class:`GeneratedWorkflow` objects that carry their
  spec, the real workflow and a reference model of the expected outcome.
* :func:`inputs_for` draws a :class:`RunPlan` for a generated workflow: its input and how
  its suspensions are answered (resume data, by path or label, per foreach iteration,
  invalid data first).
* :func:`fault_plans` draws a :class:`FaultPlan`: crash at the k-th durable write, cancel
  at a point in time, concurrent resumes, a subscriber that detaches and re-attaches.
* :func:`profile_settings` gives ``@settings`` for a test from the
  ``TRIOFLOW_HYPOTHESIS_PROFILE`` environment variable (``ci``, the default;
  ``thorough``, twenty times more examples; ``quick``, a tenth).

Generated workflows stay inside what the reference model can predict exactly: a foreach
with ``concurrency > 1`` either has at most ``concurrency`` items (all start at once) or a
body that never fails, suspends or bails; only steps in sequence (``.then``, loops, a
foreach with ``concurrency=1``) bail; a foreach body never has two steps suspended at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ._scenario import FaultPlan, GeneratedWorkflow, ResumePlan, RunPlan
from ._spec import (
    Action,
    BranchSpec,
    Condition,
    EntrySpec,
    ForeachSpec,
    LoopSpec,
    MapSpec,
    NodeSpec,
    ParallelSpec,
    SleepSpec,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    walk_steps,
)

__all__ = [
    "FaultPlan",
    "GeneratedWorkflow",
    "ResumePlan",
    "RunPlan",
    "fault_plans",
    "inputs_for",
    "profile_settings",
    "workflows",
]

ENTRY_KINDS = ("then", "parallel", "branch", "dowhile", "dountil", "foreach", "map", "sleep")
ACTIONS: tuple[Action, ...] = ("return", "fail", "suspend", "bail")
CONDITIONS: tuple[Condition, ...] = ("true", "false", "even", "odd", "raise")

#: Examples per test relative to the ``ci`` count.
PROFILE_FACTORS = {"quick": 0.1, "ci": 1.0, "thorough": 20.0}


def profile_settings(ci_examples: int, **overrides: Any) -> settings:
    """``@settings`` for a trioflow property test: ``ci_examples`` examples under the
    ``ci`` profile, scaled by ``TRIOFLOW_HYPOTHESIS_PROFILE`` (``quick``/``ci``/
    ``thorough``); no deadline (trio runs vary), no too-slow health check."""
    name = os.environ.get("TRIOFLOW_HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILE_FACTORS:
        raise ValueError(
            f"TRIOFLOW_HYPOTHESIS_PROFILE={name!r}: expected one of {sorted(PROFILE_FACTORS)}"
        )
    options: dict[str, Any] = {
        "max_examples": max(1, round(ci_examples * PROFILE_FACTORS[name])),
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    options.update(overrides)
    return settings(**options)


@attrs.define
class _Budget:
    max_steps: int
    steps: int = 0
    workflows: int = 0

    def step_id(self) -> str:
        self.steps += 1
        return f"s{self.steps}"

    def workflow_id(self) -> str:
        self.workflows += 1
        return f"w{self.workflows}"

    @property
    def exhausted(self) -> bool:
        return self.steps >= self.max_steps


@attrs.frozen
class _Rules:
    """What the nodes drawn at one place may do."""

    depth: int
    fail: bool = True
    suspend: bool = True
    bail: bool = False
    #: Below a foreach: never two suspended steps at once.
    single_suspend: bool = False

    def child(self, **changes: Any) -> _Rules:
        return attrs.evolve(self, **changes)


def _can_suspend(node: NodeSpec) -> bool:
    return any(s.action == "suspend" for s in walk_steps(node))


@st.composite
def _step(draw: st.DrawFn, budget: _Budget, rules: _Rules, actions: Sequence[Action]) -> StepSpec:
    allowed = [
        a
        for a in actions
        if a == "return"
        or (a == "fail" and rules.fail)
        or (a == "suspend" and rules.suspend)
        or (a == "bail" and rules.bail)
    ]
    action = draw(st.sampled_from(allowed or ["return"]))
    spec: dict[str, Any] = {"id": budget.step_id(), "action": action}
    if action != "return":
        spec["when"] = draw(st.sampled_from(["always", "even", "odd"]))
    if action == "suspend":
        spec["rounds"] = draw(st.integers(1, 2))
        spec["after_resume"] = draw(
            st.sampled_from(["return", "fail"] if rules.fail else ["return"])
        )
        spec["label"] = draw(st.booleans())
    spec["writes"] = draw(st.integers(0, 2))
    spec["sleep"] = draw(st.sampled_from([0, 1, 2]))
    spec["set_state"] = draw(st.booleans())
    spec["salt"] = draw(st.integers(0, 9))
    return StepSpec(**spec)


@st.composite
def _node(
    draw: st.DrawFn,
    budget: _Budget,
    rules: _Rules,
    actions: Sequence[Action],
    max_entries: int,
    max_arms: int,
    max_items: int,
    kinds: Sequence[str] = ENTRY_KINDS,
) -> NodeSpec:
    if rules.depth > 0 and not budget.exhausted and draw(st.integers(0, 3)) == 3:
        return draw(
            _workflow(
                budget,
                rules.child(depth=rules.depth - 1, bail=True),
                actions,
                max_entries,
                max_arms,
                max_items,
                top=False,
                kinds=kinds,
            )
        )
    return draw(_step(budget, rules, actions))


@st.composite
def _workflow(
    draw: st.DrawFn,
    budget: _Budget,
    rules: _Rules,
    actions: Sequence[Action],
    max_entries: int,
    max_arms: int,
    max_items: int,
    *,
    top: bool,
    kinds: Sequence[str] = ENTRY_KINDS,
) -> WorkflowSpec:
    wf_id = "wf" if top else budget.workflow_id()
    count = draw(st.integers(1, max_entries))
    entries: list[EntrySpec] = []
    node_args = (actions, max_entries, max_arms, max_items, kinds)
    for _ in range(count):
        if entries and budget.exhausted:
            break
        kind = draw(st.sampled_from(kinds))
        if kind == "then":
            entries.append(ThenSpec(node=draw(_node(budget, rules.child(bail=True), *node_args))))
        elif kind in ("parallel", "branch"):
            arms: list[NodeSpec] = []
            suspends = False
            for arm_number in range(draw(st.integers(1, max_arms))):
                if arm_number and budget.exhausted:
                    break
                arm_rules = rules.child(
                    bail=False, suspend=rules.suspend and not (rules.single_suspend and suspends)
                )
                arm = draw(_node(budget, arm_rules, *node_args))
                suspends = suspends or _can_suspend(arm)
                arms.append(arm)
            if kind == "parallel":
                entries.append(ParallelSpec(nodes=tuple(arms)))
            else:
                conditions: tuple[Condition, ...] = tuple(
                    draw(st.sampled_from(CONDITIONS)) for _ in arms
                )
                entries.append(BranchSpec(conditions=conditions, nodes=tuple(arms)))
        elif kind in ("dowhile", "dountil"):
            node = draw(_node(budget, rules.child(bail=True), *node_args))
            iterations = draw(st.integers(1, 3))
            entries.append(
                LoopSpec(
                    node=node,
                    kind="dowhile" if kind == "dowhile" else "dountil",
                    iterations=iterations,
                )
            )
        elif kind == "foreach":
            length = draw(st.integers(0, max_items))
            concurrency = draw(st.integers(1, 3))
            racy = concurrency > 1 and length > concurrency
            body_rules = rules.child(
                fail=rules.fail and not racy,
                suspend=rules.suspend and not racy,
                bail=concurrency == 1,
                single_suspend=True,
            )
            node = draw(_node(budget, body_rules, *node_args))
            entries.append(MapSpec(mode="list", length=length))
            entries.append(ForeachSpec(node=node, concurrency=concurrency))
        elif kind == "map":
            entries.append(MapSpec(mode="digest"))
        else:
            entries.append(SleepSpec(seconds=draw(st.sampled_from([0, 1, 3]))))
    return WorkflowSpec(id=wf_id, entries=tuple(entries))


def workflows(
    *,
    max_depth: int = 2,
    max_entries: int = 4,
    max_arms: int = 3,
    max_items: int = 4,
    max_steps: int = 12,
    actions: Sequence[Action] = ACTIONS,
    entry_kinds: Sequence[str] = ENTRY_KINDS,
) -> st.SearchStrategy[GeneratedWorkflow]:
    """Random valid workflows of scripted steps, each with its reference model.

    ``max_depth`` bounds the nesting of workflows used as steps, ``max_entries`` the
    entries of each workflow, ``max_arms`` the branches of a parallel/branch,
    ``max_items`` the items of a foreach, ``max_steps`` the scripted steps in all (once
    reached, no entry or branch is added; the entry being drawn may add a step or two);
    ``actions`` limits what steps do (``("return",)``: steps that always succeed),
    ``entry_kinds`` which entries workflows are made of (among :data:`ENTRY_KINDS`).
    """
    unknown = set(actions) - set(ACTIONS)
    if unknown or "return" not in actions:
        raise ValueError(f"actions must include 'return' and be among {ACTIONS}, got {actions}")
    if not entry_kinds or set(entry_kinds) - set(ENTRY_KINDS):
        raise ValueError(f"entry_kinds must be among {ENTRY_KINDS}, got {entry_kinds}")

    @st.composite
    def build(draw: st.DrawFn) -> GeneratedWorkflow:
        budget = _Budget(max_steps=max_steps)
        spec = draw(
            _workflow(
                budget,
                _Rules(depth=max_depth),
                tuple(actions),
                max_entries,
                max_arms,
                max_items,
                top=True,
                kinds=tuple(entry_kinds),
            )
        )
        return GeneratedWorkflow(spec)

    return build()


def inputs_for(
    generated: GeneratedWorkflow, *, resume_values: st.SearchStrategy[int] | None = None
) -> st.SearchStrategy[RunPlan]:
    """A :class:`RunPlan` for ``generated``: an input ``{"x": int}`` (its digest decides the
    ``even``/``odd`` behaviours) and a :class:`ResumePlan`."""
    values = resume_values if resume_values is not None else st.integers(0, 99)
    suspends = _can_suspend(generated.spec)
    resumes = (
        st.builds(
            ResumePlan,
            values=st.lists(values, min_size=1, max_size=3).map(tuple),
            by_label=st.booleans(),
            per_iteration=st.booleans(),
            invalid_first=st.booleans(),
        )
        if suspends
        else st.just(ResumePlan())
    )
    return st.builds(
        RunPlan, input_data=st.fixed_dictionaries({"x": st.integers(0, 10_000)}), resumes=resumes
    )


def fault_plans(
    *,
    kinds: Sequence[str] = ("none", "crash", "cancel", "resumes", "detach"),
    max_write: int = 64,
) -> st.SearchStrategy[FaultPlan]:
    """Random :class:`FaultPlan` objects of the given ``kinds``: ``none``, ``crash`` (at
    the k-th durable write, before or after it), ``cancel`` (at x.5 virtual seconds into
    the start or one of the first resumes), ``resumes`` (2-4 concurrent copies of every
    resume) and ``detach`` (a subscriber detaches and re-attaches; also combined with
    concurrent resumes)."""
    choices: list[st.SearchStrategy[FaultPlan]] = []
    if "none" in kinds:
        choices.append(st.just(FaultPlan()))
    if "crash" in kinds:
        choices.append(
            st.builds(
                FaultPlan,
                crash_at=st.integers(1, max_write),
                crash_mode=st.sampled_from(["before", "after"]),
            )
        )
    if "cancel" in kinds:
        choices.append(
            st.builds(
                FaultPlan,
                cancel_after=st.integers(0, 5).map(lambda n: n + 0.5),
                cancel_in=st.integers(0, 2),
            )
        )
    if "resumes" in kinds:
        choices.append(st.builds(FaultPlan, concurrent_resumes=st.integers(2, 4)))
    if "detach" in kinds:
        choices.append(
            st.builds(
                FaultPlan,
                detach_after=st.integers(1, 12),
                concurrent_resumes=st.sampled_from([1, 2]),
            )
        )
    if not choices:
        raise ValueError(f"no known fault kind in {kinds}")
    return st.one_of(choices)
