"""Workflow specs: plain data describing a workflow graph of scripted steps.

A :class:`WorkflowSpec` is what the hypothesis strategies generate and what the reference
model (:mod:`trioflow.testing._reference`) interprets; :func:`build_workflow` turns it into
a real :class:`trioflow.Workflow`. Every behaviour of a scripted step is a pure function of
its input (through :func:`digest`) and of the resume data it gets, so the model can
predict it without running the engine.

A scripted step, each time it executes:

1. checkpoints, then sleeps ``sleep`` seconds (when > 0);
2. writes ``writes`` outputs ``{"s": id, "w": i, "n": digest}`` with ``ctx.writer``;
3. with ``set_state``, calls ``ctx.set_state({state_key: state_value})``;
4. acts: when resumed, it suspends again until it has suspended ``rounds`` times, then
   returns ``{"s", "n", "resumed", "round"}`` (or fails, ``after_resume="fail"``); when
   not resumed, ``action`` applies if ``when`` matches the parity of the input's digest
   (else it returns): ``return`` gives ``{"s": id, "n": ...}``, ``fail`` raises
   :class:`ScriptedStepError`, ``bail`` bails with ``{"bailed": id, "n": ...}``,
   ``suspend`` suspends with ``{"s", "round": 1, "n"}`` (and a resume label
   ``"<id>-<digest>"`` when ``label``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import trio

import trioflow as tf

Action = Literal["return", "fail", "suspend", "bail"]
When = Literal["always", "even", "odd"]
Condition = Literal["true", "false", "even", "odd", "raise"]


@attrs.frozen
class ResumeData:
    """The resume schema of every suspending scripted step."""

    value: int


class ScriptedStepError(Exception):
    """What a scripted step raises when its script says ``fail``."""


class ScriptedConditionError(Exception):
    """What a scripted branch condition ``"raise"`` raises (it counts as false)."""


# --- values -----------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """The JSON shape of ``value`` (attrs instances as dicts, tuples as lists)."""
    if attrs.has(type(value)):
        return {k: canonical(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def digest(value: Any) -> int:
    """A small, stable number standing for ``value`` (0 <= digest < 10007)."""
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"))
    return zlib.crc32(text.encode()) % 10007


def matches(when: When, number: int) -> bool:
    if when == "always":
        return True
    return (number % 2 == 0) == (when == "even")


# --- specs -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StepSpec:
    """A scripted step (see the module docstring for what it does)."""

    id: str
    action: Action = "return"
    when: When = "always"
    rounds: int = 1
    after_resume: Literal["return", "fail"] = "return"
    label: bool = False
    writes: int = 0
    sleep: float = 0
    set_state: bool = False
    salt: int = 0

    def can_suspend(self) -> bool:
        return self.action == "suspend"

    def can_fail(self) -> bool:
        return self.action == "fail" or (self.action == "suspend" and self.after_resume == "fail")


@attrs.frozen(kw_only=True)
class ThenSpec:
    node: NodeSpec


@attrs.frozen(kw_only=True)
class ParallelSpec:
    nodes: tuple[NodeSpec, ...]
    fail_fast: bool = False


@attrs.frozen(kw_only=True)
class BranchSpec:
    conditions: tuple[Condition, ...]
    nodes: tuple[NodeSpec, ...]


@attrs.frozen(kw_only=True)
class LoopSpec:
    """``dowhile``/``dountil`` whose condition makes the body run ``iterations`` times."""

    node: NodeSpec
    kind: Literal["dowhile", "dountil"]
    iterations: int


@attrs.frozen(kw_only=True)
class ForeachSpec:
    node: NodeSpec
    concurrency: int = 1


@attrs.frozen(kw_only=True)
class MapSpec:
    """``.map(fn)``: ``list`` makes ``[(digest + i) % 1000 for i in range(length)]``
    (distinct items for a foreach), ``digest`` makes ``{"m": digest}``."""

    mode: Literal["list", "digest"]
    length: int = 0


@attrs.frozen(kw_only=True)
class SleepSpec:
    seconds: float


EntrySpec = ThenSpec | ParallelSpec | BranchSpec | LoopSpec | ForeachSpec | MapSpec | SleepSpec


@attrs.frozen(kw_only=True)
class WorkflowSpec:
    """A workflow (top level, or nested when it is a node of another one)."""

    id: str
    entries: tuple[EntrySpec, ...]


NodeSpec = StepSpec | WorkflowSpec


def entry_nodes(entry: EntrySpec) -> tuple[NodeSpec, ...]:
    if isinstance(entry, ThenSpec | LoopSpec | ForeachSpec):
        return (entry.node,)
    if isinstance(entry, ParallelSpec | BranchSpec):
        return entry.nodes
    return ()


def walk_steps(spec: NodeSpec) -> Iterator[StepSpec]:
    """Every scripted step below ``spec`` (depth first, graph order)."""
    if isinstance(spec, StepSpec):
        yield spec
        return
    for entry in spec.entries:
        for node in entry_nodes(entry):
            yield from walk_steps(node)


def walk_entries(spec: NodeSpec) -> Iterator[EntrySpec]:
    """Every entry of ``spec`` and of the workflows nested in it (depth first)."""
    if isinstance(spec, StepSpec):
        return
    for entry in spec.entries:
        yield entry
        for node in entry_nodes(entry):
            yield from walk_entries(node)


def entry_id(entry: EntrySpec, position: int) -> str | None:
    """The engine's id for a map/sleep entry (``map_<k>``/``sleep_<k>``)."""
    if isinstance(entry, MapSpec):
        return f"map_{position}"
    if isinstance(entry, SleepSpec):
        return f"sleep_{position}"
    return None


def describe(spec: NodeSpec, indent: str = "") -> str:
    """A readable multi-line rendering of a spec (what a failing example prints)."""
    if isinstance(spec, StepSpec):
        return indent + _describe_step(spec)
    lines = [f"{indent}workflow {spec.id!r}:"]
    inner = indent + "  "
    for position, entry in enumerate(spec.entries):
        if isinstance(entry, ThenSpec):
            lines.append(f"{inner}.then")
            lines.append(describe(entry.node, inner + "  "))
        elif isinstance(entry, ParallelSpec):
            lines.append(f"{inner}.parallel(fail_fast={entry.fail_fast})")
            lines.extend(describe(n, inner + "  ") for n in entry.nodes)
        elif isinstance(entry, BranchSpec):
            lines.append(f"{inner}.branch")
            for cond, node in zip(entry.conditions, entry.nodes, strict=True):
                lines.append(f"{inner}  if {cond}:")
                lines.append(describe(node, inner + "    "))
        elif isinstance(entry, LoopSpec):
            lines.append(f"{inner}.{entry.kind}(x{entry.iterations})")
            lines.append(describe(entry.node, inner + "  "))
        elif isinstance(entry, ForeachSpec):
            lines.append(f"{inner}.foreach(concurrency={entry.concurrency})")
            lines.append(describe(entry.node, inner + "  "))
        elif isinstance(entry, MapSpec):
            lines.append(f"{inner}.map {entry_id(entry, position)} ({entry.mode} {entry.length})")
        else:
            lines.append(f"{inner}.sleep {entry_id(entry, position)} ({entry.seconds}s)")
    return "\n".join(lines)


def _describe_step(spec: StepSpec) -> str:
    parts = [f"step {spec.id!r}: {spec.action}"]
    if spec.when != "always":
        parts.append(f"when {spec.when}")
    if spec.action == "suspend":
        parts.append(f"rounds={spec.rounds} then {spec.after_resume}")
        if spec.label:
            parts.append("labelled")
    if spec.writes:
        parts.append(f"writes={spec.writes}")
    if spec.sleep:
        parts.append(f"sleep={spec.sleep}")
    if spec.set_state:
        parts.append("set_state")
    return ", ".join(parts)


# --- the scripted behaviours -----------------------------------------------------------


def output_number(spec: StepSpec, number: int) -> int:
    return (number * 7 + spec.salt) % 1000


def state_key(spec: StepSpec, number: int) -> str:
    return f"{spec.id}:{number}"


def state_value(spec: StepSpec, number: int) -> int:
    return (number * 3 + spec.salt) % 1000


def label_for(spec: StepSpec, number: int) -> str:
    return f"{spec.id}-{number}"


def failure_message(spec: StepSpec, number: int, *, resumed: bool = False) -> str:
    return f"{spec.id} failed{' after resume' if resumed else ''} (input {number})"


def map_output(spec: MapSpec, value: Any) -> Any:
    number = digest(value)
    if spec.mode == "list":
        return [(number + i) % 1000 for i in range(spec.length)]
    return {"m": number}


def condition_holds(condition: Condition, value: Any) -> bool:
    """What a scripted condition decides (``raise`` raises; it counts as false)."""
    if condition in ("true", "false"):
        return condition == "true"
    if condition == "raise":
        return False
    return matches("even" if condition == "even" else "odd", digest(value))


def _resume_value(data: Any) -> Any:
    if isinstance(data, ResumeData):
        return data.value
    if isinstance(data, dict):
        return data.get("value")
    return data


def _make_step(spec: StepSpec) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        number = digest(ctx.input_data)
        if spec.sleep:
            await trio.sleep(spec.sleep)
        for i in range(spec.writes):
            await ctx.writer.write({"s": spec.id, "w": i, "n": number})
        if spec.set_state:
            ctx.set_state({state_key(spec, number): state_value(spec, number)})
        label = label_for(spec, number) if spec.label else None
        if ctx.resume_data is not None:
            value = _resume_value(ctx.resume_data)
            previous = ctx.suspend_data if isinstance(ctx.suspend_data, dict) else {}
            done = int(previous.get("round", 1))
            if done < spec.rounds:
                payload = {"s": spec.id, "round": done + 1, "n": number, "got": value}
                return await ctx.suspend(payload, resume_label=label)
            if spec.after_resume == "fail":
                raise ScriptedStepError(failure_message(spec, number, resumed=True))
            return {"s": spec.id, "n": output_number(spec, number), "resumed": value, "round": done}
        action = spec.action if matches(spec.when, number) else "return"
        if action == "fail":
            raise ScriptedStepError(failure_message(spec, number))
        if action == "suspend":
            payload = {"s": spec.id, "round": 1, "n": number}
            return await ctx.suspend(payload, resume_label=label)
        if action == "bail":
            ctx.bail({"bailed": spec.id, "n": output_number(spec, number)})
            return None
        return {"s": spec.id, "n": output_number(spec, number)}

    return tf.create_step(
        id=spec.id,
        execute=execute,
        resume_schema=ResumeData if spec.action == "suspend" else None,
        description=_describe_step(spec),
    )


def _make_condition(condition: Condition) -> Any:
    def holds(ctx: tf.StepContext) -> bool:
        if condition == "raise":
            raise ScriptedConditionError("scripted condition raised")
        return condition_holds(condition, ctx.input_data)

    return holds


def _make_loop_condition(spec: LoopSpec) -> Any:
    if spec.kind == "dowhile":
        return lambda ctx: ctx.iteration_count < spec.iterations
    return lambda ctx: ctx.iteration_count >= spec.iterations


def _make_map(spec: MapSpec) -> Any:
    async def fn(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        return map_output(spec, ctx.input_data)

    return fn


def build_node(spec: NodeSpec) -> tf.Step | tf.Workflow:
    if isinstance(spec, StepSpec):
        return _make_step(spec)
    return build_workflow(spec)


def build_workflow(spec: WorkflowSpec) -> tf.Workflow:
    """The real workflow a spec describes (committed)."""
    wf = tf.create_workflow(id=spec.id, description="generated by trioflow.testing")
    for entry in spec.entries:
        if isinstance(entry, ThenSpec):
            wf.then(build_node(entry.node))
        elif isinstance(entry, ParallelSpec):
            wf.parallel([build_node(n) for n in entry.nodes], fail_fast=entry.fail_fast)
        elif isinstance(entry, BranchSpec):
            wf.branch(
                [
                    (_make_condition(c), build_node(n))
                    for c, n in zip(entry.conditions, entry.nodes, strict=True)
                ]
            )
        elif isinstance(entry, LoopSpec):
            node = build_node(entry.node)
            if entry.kind == "dowhile":
                wf.dowhile(node, _make_loop_condition(entry))
            else:
                wf.dountil(node, _make_loop_condition(entry))
        elif isinstance(entry, ForeachSpec):
            wf.foreach(build_node(entry.node), concurrency=entry.concurrency)
        elif isinstance(entry, MapSpec):
            wf.map(_make_map(entry))
        else:
            wf.sleep(entry.seconds)
    return wf.commit()
