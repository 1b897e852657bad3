"""The reference model: what a run of a :class:`WorkflowSpec` must do, computed from the
contract (SPEC §1-§3) without the engine.

:class:`ReferenceModel` interprets a spec the way SPEC describes workflows: it executes the
scripted steps symbolically (their behaviour is a pure function of input and resume data),
keeps what a run stores between executions, and predicts, for every execution (the start
and each resume), the run status, result, error, suspended paths and payloads, top-level
step results, state, and the multiset of chunks the execution emits. It does not predict
what is up to trio's scheduling (the order of concurrent branches' chunks, which of two
concurrent failures is reported): there it gives the set of allowed answers.

The model covers what :func:`trioflow.testing.strategies.workflows` generates; it raises
:class:`ModelError` on a spec whose outcome would depend on scheduling.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from ._reference_nodes import ModelError as ModelError  # the public name's home
from ._reference_nodes import (
    _combine,
    _Level,
    _Outcome,
    _Rec,
    _status_of,
    _Target,
    _type_name,
    foreach_plan,
    foreach_record,
    step_record,
)
from ._reference_paths import labels_of, suspended_leaves
from ._spec import (
    BranchSpec,
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
    condition_holds,
    digest,
    entry_id,
    map_output,
    state_key,
    state_value,
)

#: A chunk signature: ``(type, id, detail)``; see :func:`chunk_signature`.
Signature = tuple[str, str, str]


@attrs.frozen(kw_only=True)
class ResumeRequest:
    """One ``run.resume(...)`` call: ``step`` is a path of ids (top level first)."""

    resume_data: Any = None
    step: tuple[str, ...] | None = None
    label: str | None = None
    for_each_index: int | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resume_data": self.resume_data}
        if self.step is not None:
            out["step"] = list(self.step)
        if self.label is not None:
            out["label"] = self.label
        if self.for_each_index is not None:
            out["for_each_index"] = self.for_each_index
        return out


@attrs.frozen(kw_only=True)
class Expected:
    """What one execution (start or resume) must produce.

    ``errors`` is the set of allowed messages of ``result.error`` (several when
    concurrent branches fail and trio decides which fails first). ``chunks`` counts the
    execution's chunks by :func:`chunk_signature`. ``steps`` maps every top-level step id
    that has run so far to ``(status, output)`` (JSON values).
    """

    status: str
    result: Any = None
    errors: frozenset[str] = frozenset()
    suspended: tuple[str, ...] = ()
    suspend_payload: Mapping[str, Any] = attrs.field(factory=dict)
    steps: Mapping[str, tuple[str, Any]] = attrs.field(factory=dict)
    state: Mapping[str, Any] = attrs.field(factory=dict)
    chunks: Counter[Signature] = attrs.field(factory=Counter)
    #: label -> (path, foreach index) for the suspended steps that have a label.
    labels: Mapping[str, tuple[tuple[str, ...], int | None]] = attrs.field(factory=dict)
    #: dotted path of a suspended foreach -> its suspended iterations.
    foreach_suspended: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict)
    #: dotted paths whose resume data the engine validates against ResumeData first.
    validated: frozenset[str] = frozenset()
    #: virtual seconds the execution takes (sleeps only; everything else takes none).
    duration: float = 0.0


def jsonish(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def chunk_signature(chunk: Any) -> Signature:
    """The part of a chunk the model predicts: its type, its step id (or step name) and
    its status/iteration status/written output."""
    kind = chunk.type
    payload: Any = getattr(chunk, "payload", None)
    if kind == "workflow-finish":
        return (kind, "", payload.workflow_status)
    if kind == "workflow-step-result":
        return (kind, payload.id, payload.status)
    if kind == "workflow-step-progress":
        return (kind, payload.id, payload.iteration_status)
    if kind == "workflow-step-output":
        return (kind, payload.step_name, jsonish(payload.output))
    if kind in ("workflow-step-start", "workflow-step-suspended", "workflow-step-waiting"):
        return (kind, payload.id, "")
    if kind.startswith("data-"):
        return (kind, "", jsonish(getattr(chunk, "data", None)))
    return (kind, "", "")


class ReferenceModel:
    """Predicts a run of ``spec`` on ``input_data``: call :meth:`start`, then
    :meth:`resume` for each suspension, and compare each :class:`Expected` with what the
    engine did."""

    def __init__(self, spec: WorkflowSpec, input_data: Any) -> None:
        self.spec = spec
        self.input_data = input_data
        self._root = _Level(spec, "", input_data, {})
        self._chunks: Counter[Signature] = Counter()
        self._now = 0.0
        self._started = False
        self._last: Expected | None = None

    # --- public ---------------------------------------------------------------------

    @property
    def last(self) -> Expected | None:
        return self._last

    def start(self) -> Expected:
        if self._started:
            raise ModelError("the model already started")
        self._started = True
        return self._execute(lambda: self._run_level(self._root, 0, self.input_data, None))

    def resume(self, request: ResumeRequest) -> Expected:
        """The next execution after ``request`` (which must name a suspended path, or a
        label, as the model sees them)."""
        last = self._last
        if last is None or last.status != "suspended":
            raise ModelError("the run is not suspended")
        value = request.resume_data.value if hasattr(request.resume_data, "value") else None
        if isinstance(request.resume_data, dict):
            value = request.resume_data.get("value")
        index = request.for_each_index
        if request.label is not None:
            if request.label not in last.labels:
                raise ModelError(f"no suspended step has label {request.label!r}")
            path, label_index = last.labels[request.label]
            index = index if index is not None else label_index
        elif request.step is not None:
            path = tuple(request.step)
            if ".".join(path) not in last.suspended:
                raise ModelError(f"{'.'.join(path)!r} is not suspended: {last.suspended}")
        elif len(last.suspended) == 1:
            path = tuple(last.suspended[0].split("."))
        else:
            raise ModelError(f"several paths are suspended: {last.suspended}")
        target = _Target(path, value, index)
        start = self._root.suspended[path[0]]
        return self._execute(
            lambda: self._run_level(self._root, start, self._root.entry_input, target)
        )

    # --- executions -------------------------------------------------------------------

    def _execute(self, body: Any) -> Expected:
        self._chunks = Counter()
        self._now = 0.0
        self._emit("workflow-start")
        outcome: _Outcome = body()
        status = outcome.status
        if status == "bailed":
            status = "success"
        self._emit("workflow-finish", "", status)
        root = self._root
        suspended: list[str] = []
        payloads: dict[str, Any] = {}
        foreach: dict[str, tuple[int, ...]] = {}
        validated: set[str] = set()
        labels: dict[str, tuple[tuple[str, ...], int | None]] = {}
        if status == "suspended":
            for path, rec, spec, iterations in suspended_leaves(root, ()):
                dotted = ".".join(path)
                suspended.append(dotted)
                payloads[dotted] = rec.suspend_payload
                if iterations is not None:
                    foreach[dotted] = iterations
                if isinstance(spec, StepSpec):
                    validated.add(dotted)
            labels = labels_of(root)
        expected = Expected(
            status=status,
            result=outcome.output if status == "success" else None,
            errors=outcome.errors if status == "failed" else frozenset(),
            suspended=tuple(suspended),
            suspend_payload=payloads,
            steps={k: (v.status, v.output) for k, v in root.results.items()},
            state=dict(root.state),
            chunks=self._chunks,
            labels=labels,
            foreach_suspended=foreach,
            validated=frozenset(validated),
            duration=self._now,
        )
        self._last = expected
        return expected

    def _emit(self, kind: str, id: str = "", detail: str = "") -> None:
        self._chunks[(kind, id, detail)] += 1

    # --- one level ----------------------------------------------------------------------

    def _run_level(self, level: _Level, start: int, value: Any, target: _Target | None) -> _Outcome:
        entries = level.spec.entries
        for idx in range(start, len(entries)):
            level.entry_input = value
            outcome = self._run_entry(level, idx, entries[idx], value, target)
            target = None
            if outcome.status == "success":
                value = outcome.output
                continue
            if outcome.status == "bailed":
                return _Outcome("success", outcome.output)
            return outcome
        return _Outcome("success", value)

    def _settle(self, level: _Level, node_id: str, rec: _Rec, idx: int) -> None:
        level.results[node_id] = rec
        if rec.status == "suspended":
            level.suspended[node_id] = idx
        else:
            level.suspended.pop(node_id, None)

    def _run_entry(
        self, level: _Level, idx: int, entry: EntrySpec, value: Any, target: _Target | None
    ) -> _Outcome:
        if isinstance(entry, ThenSpec):
            node = entry.node
            resume = self._node_resume(level, node.id, target)
            rec = self._run_node(level, node, value, resume, chunk_id=level.prefix + node.id)
            self._settle(level, node.id, rec, idx)
            return _status_of(rec)
        if isinstance(entry, MapSpec):
            node_id = entry_id(entry, idx)
            assert node_id is not None
            chunk_id = level.prefix + node_id
            self._emit("workflow-step-start", chunk_id)
            output = map_output(entry, value)
            self._emit("workflow-step-result", chunk_id, "success")
            self._settle(level, node_id, _Rec("map", "success", output, value), idx)
            return _Outcome("success", output)
        if isinstance(entry, SleepSpec):
            node_id = entry_id(entry, idx)
            assert node_id is not None
            chunk_id = level.prefix + node_id
            self._emit("workflow-step-waiting", chunk_id)
            self._now += entry.seconds
            self._emit("workflow-step-result", chunk_id, "success")
            self._settle(level, node_id, _Rec("sleep", "success", value, value), idx)
            return _Outcome("success", value)
        if isinstance(entry, ParallelSpec):
            if entry.fail_fast:
                raise ModelError("fail_fast parallel blocks are not modelled")
            considered = list(range(len(entry.nodes)))
            return self._run_block(level, idx, entry.nodes, value, target, considered)
        if isinstance(entry, BranchSpec):
            if target is not None:
                # Conditions are not evaluated again: only the arms that ran count.
                ran = [b for b, n in enumerate(entry.nodes) if n.id in level.results]
                return self._run_block(level, idx, entry.nodes, value, target, ran)
            chosen = [b for b, c in enumerate(entry.conditions) if condition_holds(c, value)]
            if not chosen:
                return _Outcome("success", {})
            return self._run_block(level, idx, entry.nodes, value, None, chosen)
        if isinstance(entry, LoopSpec):
            return self._run_loop(level, idx, entry, value, target)
        return self._run_foreach(level, idx, entry, value, target)

    def _node_resume(
        self, level: _Level, node_id: str, target: _Target | None
    ) -> tuple[_Target, _Rec] | None:
        if target is None or not target.path or target.path[0] != node_id:
            return None
        rec = level.results.get(node_id)
        if rec is None:
            raise ModelError(f"resume of {node_id!r}, which never ran")
        return _Target(target.path[1:], target.value, target.index), rec

    # --- nodes --------------------------------------------------------------------------

    def _run_node(
        self,
        level: _Level,
        node: NodeSpec,
        value: Any,
        resume: tuple[_Target, _Rec] | None,
        *,
        chunk_id: str,
        emit: bool = True,
    ) -> _Rec:
        if isinstance(node, StepSpec):
            return self._run_step(level, node, value, resume, chunk_id=chunk_id, emit=emit)
        return self._run_nested(level, node, value, resume, chunk_id=chunk_id, emit=emit)

    def _run_step(
        self,
        level: _Level,
        spec: StepSpec,
        value: Any,
        resume: tuple[_Target, _Rec] | None,
        *,
        chunk_id: str,
        emit: bool,
    ) -> _Rec:
        if resume is not None:
            value = resume[1].payload
        if emit:
            self._emit("workflow-step-start", chunk_id)
        number = digest(value)
        self._now += spec.sleep
        for i in range(spec.writes):
            self._emit(
                "workflow-step-output", chunk_id, jsonish({"s": spec.id, "w": i, "n": number})
            )
        rec = step_record(spec, number, value, resume)
        if spec.set_state and rec.status != "failed":
            level.state[state_key(spec, number)] = state_value(spec, number)
        if emit:
            self._emit_settled(chunk_id, rec)
        return rec

    def _emit_settled(self, chunk_id: str, rec: _Rec) -> None:
        if rec.status == "suspended":
            self._emit("workflow-step-suspended", chunk_id)
        else:
            self._emit("workflow-step-result", chunk_id, rec.status)

    def _run_nested(
        self,
        level: _Level,
        spec: WorkflowSpec,
        value: Any,
        resume: tuple[_Target, _Rec] | None,
        *,
        chunk_id: str,
        emit: bool,
    ) -> _Rec:
        if emit:
            self._emit("workflow-step-start", chunk_id)
        if resume is not None and resume[1].level is not None:
            target, stored = resume
            sub = stored.level
            assert sub is not None
            value = stored.payload
            # The nested run continues with the parent's current state merged over its own.
            sub.state = {**sub.state, **level.state}
            if target.path:
                inner = target
            else:
                # Resumed as a whole (a foreach iteration): its single suspended path.
                paths = [p for p, *_ in suspended_leaves(sub, ())]
                if len(paths) != 1:
                    raise ModelError(f"nested {spec.id!r} has {len(paths)} suspended paths")
                inner = _Target(paths[0], target.value, target.index)
            start = sub.suspended[inner.path[0]]
            outcome = self._run_level(sub, start, sub.entry_input, inner)
        else:
            sub = _Level(spec, chunk_id + ".", value, dict(level.state))
            outcome = self._run_level(sub, 0, value, None)
        if outcome.status in ("success", "suspended"):
            level.state.update(sub.state)
        if outcome.status == "success":
            rec = _Rec("nested", "success", outcome.output, value, level=sub)
        elif outcome.status == "suspended":
            leaves = list(suspended_leaves(sub, ()))
            first = leaves[0][1].suspend_payload if leaves else None
            rec = _Rec("nested", "suspended", None, value, first, level=sub)
        else:
            rec = _Rec("nested", outcome.status, None, value, level=sub, errors=outcome.errors)
        if emit:
            self._emit_settled(chunk_id, rec)
        return rec

    # --- parallel / branch ---------------------------------------------------------------

    def _run_block(
        self,
        level: _Level,
        idx: int,
        nodes: tuple[NodeSpec, ...],
        value: Any,
        target: _Target | None,
        considered: list[int],
    ) -> _Outcome:
        to_run: list[tuple[int, tuple[_Target, _Rec] | None]] = []
        if target is not None:
            for b in considered:
                resume = self._node_resume(level, nodes[b].id, target)
                if resume is not None:
                    to_run.append((b, resume))
        else:
            to_run = [(b, None) for b in considered]
        start = self._now
        ends: list[float] = []
        ran: dict[int, _Rec] = {}
        for b, resume in to_run:
            self._now = start
            node = nodes[b]
            rec = self._run_node(level, node, value, resume, chunk_id=level.prefix + node.id)
            self._settle(level, node.id, rec, idx)
            ran[b] = rec
            ends.append(self._now)
        self._now = max(ends, default=start)
        statuses: list[str] = []
        output: dict[str, Any] = {}
        for b in considered:
            rec_b = level.results.get(nodes[b].id)
            if rec_b is None:
                continue
            statuses.append(rec_b.status)
            if rec_b.status == "success":
                output[nodes[b].id] = rec_b.output
        status = _combine(statuses)
        if status == "failed":
            errors = frozenset().union(*(r.errors for r in ran.values() if r.status == "failed"))
            return _Outcome("failed", errors=errors)
        if status == "success":
            bails = [r for r in ran.values() if r.bailed]
            if len(bails) > 1:
                raise ModelError("two branches of one block bail")
            if bails:
                return _Outcome("bailed", bails[0].output)
            return _Outcome("success", output)
        return _Outcome(status)

    # --- loops --------------------------------------------------------------------------

    def _run_loop(
        self, level: _Level, idx: int, entry: LoopSpec, value: Any, target: _Target | None
    ) -> _Outcome:
        node = entry.node
        iteration = 1
        resume = self._node_resume(level, node.id, target)
        if resume is not None:
            iteration = resume[1].iteration
            value = resume[1].payload
        while True:
            rec = self._run_node(level, node, value, resume, chunk_id=level.prefix + node.id)
            rec.iteration = iteration
            resume = None
            self._settle(level, node.id, rec, idx)
            outcome = _status_of(rec)
            if outcome.status != "success":
                return outcome
            value = outcome.output
            again = iteration < entry.iterations
            if not again:
                return _Outcome("success", value)
            iteration += 1

    # --- foreach ------------------------------------------------------------------------

    def _run_foreach(
        self, level: _Level, idx: int, entry: ForeachSpec, value: Any, target: _Target | None
    ) -> _Outcome:
        node = entry.node
        chunk_id = level.prefix + node.id
        resume = self._node_resume(level, node.id, target)
        stored = resume[1] if resume is not None else None
        if stored is not None:
            value = stored.payload
        self._emit("workflow-step-start", chunk_id)
        if not isinstance(value, list):
            message = f"foreach expects a list, got {_type_name(value)}"
            rec = _Rec("foreach", "failed", payload=value, errors=frozenset({message}))
            self._emit("workflow-step-result", chunk_id, "failed")
            self._settle(level, node.id, rec, idx)
            return _Outcome("failed", errors=rec.errors)
        items = list(value)
        outcomes: list[_Rec | None] = (
            list(stored.items)
            if stored is not None and stored.items is not None
            else [None] * len(items)
        )
        plan = foreach_plan(outcomes, resume)
        concurrency = entry.concurrency
        start = self._now
        workers = [start] * max(1, min(concurrency, len(plan)))
        stop = False
        failed: list[_Rec] = []
        bailed: _Rec | None = None
        for i, item_resume in plan:
            if stop and concurrency == 1:
                break
            worker = min(range(len(workers)), key=workers.__getitem__)
            self._now = workers[worker]
            rec = self._run_node(level, node, items[i], item_resume, chunk_id=chunk_id, emit=False)
            workers[worker] = self._now
            outcomes[i] = rec
            if rec.bailed:
                # Mastra (behaviour §5): a bailed iteration counts, with progress 'failed'.
                stop = True
                bailed = bailed or rec
                self._emit("workflow-step-progress", chunk_id, "failed")
            elif rec.status == "success":
                self._emit("workflow-step-progress", chunk_id, "success")
            elif rec.status == "suspended":
                stop = True
                self._emit("workflow-step-progress", chunk_id, "suspended")
            else:
                stop = True
                failed.append(rec)
                self._emit("workflow-step-progress", chunk_id, "failed")
            if stop and concurrency > 1 and len(plan) > concurrency:
                raise ModelError("a foreach whose items stop early depends on scheduling")
        self._now = max(workers)
        rec, outcome = foreach_record(items, outcomes, failed, bailed)
        self._emit_settled(chunk_id, rec)
        self._settle(level, node.id, rec, idx)
        return outcome
