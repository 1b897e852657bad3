"""Running a generated workflow against its reference model, under a fault plan.

:func:`check_against_model` is what the property tests call with what the strategies
draw: a :class:`GeneratedWorkflow`, a :class:`RunPlan` (input and how to answer
suspensions) and a :class:`FaultPlan`. It raises :class:`ModelMismatch` (an
AssertionError) with a readable account of every difference.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import trio

import trioflow as tf

from .._broadcast import ends_at_terminal_finish
from ._harness import (
    ClockGuardStorage,
    CrashPoint,
    StorageFactory,
    _json,
    compare_recovered,
    crash_and_recover,
)
from ._invariants import check_stream_invariants
from ._reference import Expected, ReferenceModel, ResumeRequest, chunk_signature
from ._spec import ResumeData, WorkflowSpec, build_workflow, describe

#: Resume data that fails ResumeData (value must be an int).
INVALID_RESUME_DATA = {"value": "not a number"}


class ModelMismatch(AssertionError):
    """The engine did something the reference model does not allow."""


@attrs.frozen(kw_only=True)
class ResumePlan:
    """How a run's suspensions are answered: the k-th resume sends
    ``ResumeData(values[k % len(values)])`` to the first suspended path (in sorted order),
    by its label when ``by_label`` and it has one, one foreach iteration at a time when
    ``per_iteration``; with ``invalid_first`` every resume is first tried with invalid
    data, which must raise ValidationError and change nothing."""

    values: tuple[int, ...] = (1,)
    by_label: bool = False
    per_iteration: bool = False
    invalid_first: bool = False

    def request(self, k: int, expected: Expected) -> ResumeRequest:
        path = sorted(expected.suspended)[0]
        data = {"value": self.values[k % len(self.values)]}
        index = None
        iterations = expected.foreach_suspended.get(path)
        if self.per_iteration and iterations:
            index = iterations[0]
        if self.by_label:
            for name, (where, at) in sorted(expected.labels.items()):
                if ".".join(where) == path and (index is None or at == index):
                    return ResumeRequest(resume_data=data, label=name)
        return ResumeRequest(resume_data=data, step=tuple(path.split(".")), for_each_index=index)


@attrs.frozen(kw_only=True)
class RunPlan:
    """The input of a run and how its suspensions are answered."""

    input_data: Any
    resumes: ResumePlan = attrs.field(factory=ResumePlan)


@attrs.frozen(kw_only=True)
class FaultPlan:
    """What goes wrong during a run.

    * ``crash_at``/``crash_mode``: the process dies before/after the k-th durable write
      (k is taken modulo the number of writes of the uninterrupted run, so every drawn k
      hits a write); the run is then recovered from storage in a new runtime.
    * ``cancel_after``/``cancel_in``: ``run.cancel()`` that many virtual seconds into
      execution ``cancel_in`` (0 = the start, 1 = the first resume...). Scripted sleeps
      last whole seconds, so a cancel at x.5 s never ties with a step.
    * ``concurrent_resumes``: every resume is sent that many times at once: exactly one
      must win, the others get ResumeAlreadyClaimedError (or NotSuspendedError when the
      winner's execution has already ended). Deterministic on MemoryStorage; on a slow
      storage a loser may legitimately win the *next* suspension, which the plan does not
      expect.
    * ``detach_after``: a subscriber reads that many chunks, detaches, and re-attaches
      from the next seq: what it reads in total must be the run's whole log.
    """

    crash_at: int | None = None
    crash_mode: Literal["before", "after"] = "before"
    cancel_after: float | None = None
    cancel_in: int = 0
    concurrent_resumes: int = 1
    detach_after: int | None = None


@attrs.frozen(eq=False)
class GeneratedWorkflow:
    """A generated spec and the real workflow built from it."""

    spec: WorkflowSpec
    workflow: tf.Workflow = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "workflow", build_workflow(self.spec))

    def model(self, input_data: Any) -> ReferenceModel:
        return ReferenceModel(self.spec, input_data)

    def expectations(
        self, plan: RunPlan, *, max_executions: int = 60
    ) -> list[tuple[ResumeRequest | None, Expected]]:
        """The executions the model predicts for ``plan``: (request, expected), the first
        with request None (the start)."""
        model = self.model(plan.input_data)
        out: list[tuple[ResumeRequest | None, Expected]] = [(None, model.start())]
        while out[-1][1].status == "suspended":
            if len(out) > max_executions:
                raise ModelMismatch(f"the model keeps suspending after {max_executions} resumes")
            request = plan.resumes.request(len(out) - 1, out[-1][1])
            out.append((request, model.resume(request)))
        return out

    def __repr__(self) -> str:
        return "GeneratedWorkflow(\n" + describe(self.spec, "  ") + "\n)"


@attrs.frozen(kw_only=True)
class ScenarioRecord:
    """What a checked scenario did: the engine's results per execution, the stored log,
    and (crash plans) the crash point."""

    results: list[tf.WorkflowResult]
    events: list[Any]
    expected: list[Expected]
    canceled: bool = False
    crash: CrashPoint | None = None


# --- comparing one execution ---------------------------------------------------------------


def execution_differences(
    result: tf.WorkflowResult, chunks: Sequence[Any], expected: Expected
) -> list[str]:
    """What differs between an engine execution (its result and its chunks, from its
    workflow-start on) and the model's prediction."""
    problems: list[str] = []
    status = str(result.status)
    if status != expected.status:
        problems.append(f"status: expected {expected.status!r}, got {status!r}")
    if expected.status == "success" and _json(result.result) != expected.result:
        problems.append(f"result: expected {expected.result!r}, got {_json(result.result)!r}")
    if expected.status == "failed":
        message = str(result.error) if result.error is not None else None
        if message not in expected.errors:
            problems.append(
                f"error: expected one of {sorted(expected.errors)}, got {result.error!r}"
            )
    suspended = sorted(".".join(p) for p in result.suspended)
    if suspended != sorted(expected.suspended):
        problems.append(f"suspended: expected {sorted(expected.suspended)}, got {suspended}")
    elif _json(result.suspend_payload) != dict(expected.suspend_payload):
        problems.append(
            f"suspend_payload: expected {dict(expected.suspend_payload)!r}, "
            f"got {_json(result.suspend_payload)!r}"
        )
    steps = {k: (str(v.status), _json(v.output)) for k, v in result.steps.items()}
    if steps != dict(expected.steps):
        for key in sorted(set(steps) | set(expected.steps)):
            if steps.get(key) != expected.steps.get(key):
                problems.append(
                    f"steps[{key!r}]: expected {expected.steps.get(key)!r}, got {steps.get(key)!r}"
                )
    if _json(result.state) != dict(expected.state):
        problems.append(f"state: expected {dict(expected.state)!r}, got {_json(result.state)!r}")
    got = Counter(chunk_signature(c) for c in chunks)
    missing, extra = expected.chunks - got, got - expected.chunks
    if missing or extra:
        problems.append(
            "chunks differ: missing " + _signatures(missing) + "; unexpected " + _signatures(extra)
        )
    return problems


def _signatures(counter: Counter[Any]) -> str:
    if not counter:
        return "none"
    parts = []
    for (kind, id, detail), n in sorted(counter.items()):
        text = kind + (f" {id!r}" if id else "") + (f" {detail}" if detail else "")
        parts.append(text + (f" x{n}" if n > 1 else ""))
    return "[" + ", ".join(parts) + "]"


def _executions(events: Sequence[Any]) -> list[list[Any]]:
    """The log split at each workflow-start (chunks before the first are dropped)."""
    out: list[list[Any]] = []
    for chunk in events:
        if chunk.type == "workflow-start":
            out.append([])
        if out:
            out[-1].append(chunk)
    return out


def wire_problems(events: Sequence[Any]) -> list[str]:
    """Chunks that do not survive ``from_wire(json(to_wire(c)))`` unchanged."""
    problems = []
    for chunk in events:
        wire = tf.to_wire(chunk)
        back = tf.from_wire(json.loads(json.dumps(wire)))
        if back != chunk:
            problems.append(f"seq {chunk.seq} ({chunk.type}) changes through the wire: {wire}")
    return problems


# --- running a scenario -------------------------------------------------------------------


def _mismatch(
    generated: GeneratedWorkflow,
    plan: RunPlan,
    faults: FaultPlan,
    problems: list[str],
    events: Sequence[Any] = (),
) -> ModelMismatch:
    lines = [
        "the engine disagrees with the reference model",
        describe(generated.spec, "  "),
        f"  input: {plan.input_data!r}",
        f"  resumes: {plan.resumes!r}",
        f"  faults: {faults!r}",
        "problems:",
        *(f"  - {p}" for p in problems),
    ]
    if events:
        lines.append("event log:")
        for chunk in events:
            p = getattr(chunk, "payload", None)
            detail = getattr(p, "id", None) or getattr(p, "step_name", None) or ""
            status = getattr(p, "status", None) or getattr(p, "workflow_status", None) or ""
            lines.append(f"  {chunk.seq:3} {chunk.type} {detail} {status}".rstrip())
    return ModelMismatch("\n".join(lines))


async def check_against_model(
    generated: GeneratedWorkflow,
    plan: RunPlan,
    faults: FaultPlan | None = None,
    *,
    storage_factory: StorageFactory = tf.MemoryStorage,
    run_id: str = "model-run",
) -> ScenarioRecord:
    """Run ``generated`` with ``plan`` under ``faults`` and check every execution against
    the reference model, the stream invariants, the wire round trip of every chunk, and
    what the fault plan requires. Raises :class:`ModelMismatch` on any difference."""
    faults = faults if faults is not None else FaultPlan()
    steps = generated.expectations(plan)
    if faults.crash_at is not None:
        return await _check_crash(generated, plan, faults, steps, storage_factory, run_id)
    storage = ClockGuardStorage(storage_factory())
    try:
        return await _check_live(generated, plan, faults, steps, storage, run_id)
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


async def _check_live(
    generated: GeneratedWorkflow,
    plan: RunPlan,
    faults: FaultPlan,
    steps: list[tuple[ResumeRequest | None, Expected]],
    storage: Any,
    run_id: str,
) -> ScenarioRecord:
    problems: list[str] = []
    results: list[tf.WorkflowResult] = []
    seen: list[Any] = []
    reader_done = trio.Event()
    canceled = False
    async with tf.open_runtime(storage=storage) as rt, trio.open_nursery() as nursery:
        run = await generated.workflow.create_run(run_id=run_id)
        if faults.detach_after is not None:
            nursery.start_soon(_detaching_reader, run, faults.detach_after, seen, reader_done)
        previous: Expected | None = None
        for number, (request, expected) in enumerate(steps):
            if request is not None and previous is not None:
                problems += await _try_invalid(rt, run, plan, request, previous)
            cancel_here = faults.cancel_after is not None and faults.cancel_in == number
            outcome: tf.WorkflowResult | str
            async with trio.open_nursery() as inner:
                if cancel_here:
                    assert faults.cancel_after is not None
                    inner.start_soon(_cancel_later, run, faults.cancel_after)
                if request is None:
                    outcome = await run.start(input_data=plan.input_data)
                else:
                    outcome = await _resume(run, request, faults.concurrent_resumes)
                    if isinstance(outcome, str):
                        inner.cancel_scope.cancel()
            if isinstance(outcome, str):
                problems.append(f"execution {number}: {outcome}")
                break
            result = outcome
            results.append(result)
            events = list(await storage.read_events(run_id))
            chunks = _executions(events)[-1] if events else []
            if cancel_here:
                canceled = True
                problems += await _check_canceled(
                    rt, run, result, chunks, expected, previous, faults
                )
                break
            problems += [
                f"execution {number}: {p}" for p in execution_differences(result, chunks, expected)
            ]
            if problems:
                break
            previous = expected
        if faults.detach_after is not None and not problems:
            with trio.move_on_after(3600) as waited:
                await reader_done.wait()
            if waited.cancelled_caught:
                problems.append("a re-attached subscriber never reached the end of the run")
        events = list(await storage.read_events(run_id))
        nursery.cancel_scope.cancel()
    violation = check_stream_invariants(events)
    if violation:
        problems.append(f"stream invariants: {violation}")
    problems += wire_problems(events)
    if (
        faults.detach_after is not None
        and reader_done.is_set()
        and not problems
        and ([c.seq for c in seen] != [c.seq for c in events] or seen != events)
    ):
        problems.append(
            f"a subscriber that detached after {faults.detach_after} chunks and "
            f"re-attached read seqs {[c.seq for c in seen]}, the log has "
            f"{[c.seq for c in events]}"
        )
    if problems:
        raise _mismatch(generated, plan, faults, problems, events)
    return ScenarioRecord(
        results=results, events=events, expected=[e for _, e in steps], canceled=canceled
    )


async def _detaching_reader(run: tf.Run, after: int, seen: list[Any], done: trio.Event) -> None:
    """Read ``after`` chunks, detach, pause, re-attach from the next seq, read to the
    terminal workflow-finish; ``done`` is set once it got there."""
    last = 0
    async with run.observe_stream() as sub:
        async for chunk in sub:
            seen.append(chunk)
            last = chunk.seq
            if len(seen) >= after:
                break
    if not (seen and ends_at_terminal_finish(seen[-1])):
        await trio.sleep(0.25)
        async with run.observe_stream(from_seq=last + 1) as sub:
            async for chunk in sub:
                seen.append(chunk)
    done.set()


async def _cancel_later(run: tf.Run, seconds: float) -> None:
    await trio.sleep(seconds)
    await run.cancel()


async def _resume(run: tf.Run, request: ResumeRequest, copies: int) -> tf.WorkflowResult | str:
    """Send the resume ``copies`` times at once; exactly one must win."""
    if copies <= 1:
        return await run.resume(**request.kwargs())
    won: list[tf.WorkflowResult] = []
    lost: list[BaseException] = []

    async def one() -> None:
        # Every error is a loss to report (a storage's raw error too): escaping, it would
        # leave the harness as an exception group instead of "exactly one must win".
        try:
            won.append(await run.resume(**request.kwargs()))
        except Exception as exc:
            lost.append(exc)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(copies):
            nursery.start_soon(one)
    # A loser that arrives while the winner executes gets ResumeAlreadyClaimedError; on a
    # slow storage the winner may already have ended (NotSuspendedError).
    wrong = [
        e for e in lost if not isinstance(e, tf.ResumeAlreadyClaimedError | tf.NotSuspendedError)
    ]
    if len(won) != 1 or wrong:
        return (
            f"{copies} concurrent resumes: {len(won)} won, the others raised "
            f"{[type(e).__name__ + ': ' + str(e) for e in lost]} (exactly one must win, the "
            "others must get ResumeAlreadyClaimedError or NotSuspendedError)"
        )
    return won[0]


async def _try_invalid(
    rt: tf.Runtime, run: tf.Run, plan: RunPlan, request: ResumeRequest, before: Expected
) -> list[str]:
    """Resume with invalid data first: ValidationError, and nothing changes."""
    await trio.lowlevel.checkpoint()
    if not plan.resumes.invalid_first:
        return []
    path = ".".join(request.step) if request.step else None
    if request.label is not None:
        where, _ = before.labels[request.label]
        path = ".".join(where)
    if path not in before.validated:
        return []
    log_before = await rt.storage.last_seq(run.run_id)
    state_before = await rt.get_run_state(run.run_id)
    bad = attrs.evolve(request, resume_data=INVALID_RESUME_DATA)
    try:
        await run.resume(**bad.kwargs())
    except tf.ValidationError as exc:
        problems = []
        if "value" not in str(exc):
            problems.append(f"ValidationError for invalid resume data does not name 'value': {exc}")
    else:
        return [f"resume with invalid data {INVALID_RESUME_DATA} of {path!r} did not raise"]
    after = await rt.get_run_state(run.run_id)
    if await rt.storage.last_seq(run.run_id) != log_before:
        problems.append("a resume rejected by validation appended to the log")
    if after.status != "suspended" or after.suspended != state_before.suspended:
        problems.append(f"a resume rejected by validation changed the run: {after.status}")
    return problems


async def _check_canceled(
    rt: tf.Runtime,
    run: tf.Run,
    result: tf.WorkflowResult,
    chunks: Sequence[Any],
    expected: Expected,
    previous: Expected | None,
    faults: FaultPlan,
) -> list[str]:
    """A cancel during (or right after) an execution."""
    assert faults.cancel_after is not None
    problems: list[str] = []
    stored = await rt.get_run_state(run.run_id)
    during = expected.duration > faults.cancel_after
    if during:
        if str(result.status) != "canceled":
            problems.append(
                f"run.cancel() {faults.cancel_after}s into an execution of "
                f"{expected.duration}s: status {result.status}, expected canceled"
            )
        # Each step either settled as the model says, was canceled, or is as it was
        # before this execution.
        for key, step in result.steps.items():
            got = (str(step.status), _json(step.output))
            allowed = [expected.steps.get(key), ("canceled", None)]
            if previous is not None:
                allowed.append(previous.steps.get(key))
            if got not in allowed:
                problems.append(f"canceled run: steps[{key!r}] is {got}, expected one of {allowed}")
    elif expected.status == "suspended":
        if stored.status != "canceled":
            problems.append(f"cancel of a suspended run left it {stored.status}")
    else:
        problems += execution_differences(result, chunks, expected)
    if during or expected.status == "suspended":
        if stored.status != "canceled":
            problems.append(f"stored status after cancel: {stored.status}")
        try:
            await run.resume(resume_data=ResumeData(1))
        except tf.NotSuspendedError:
            pass
        except tf.TrioflowError as exc:
            problems.append(f"resume of a canceled run raised {exc!r}, not NotSuspendedError")
        else:
            problems.append("resume of a canceled run did not raise")
    return problems


async def _check_crash(
    generated: GeneratedWorkflow,
    plan: RunPlan,
    faults: FaultPlan,
    steps: list[tuple[ResumeRequest | None, Expected]],
    storage_factory: StorageFactory,
    run_id: str,
) -> ScenarioRecord:
    requests = [r for r, _ in steps[1:]]

    def resumer(k: int, _: tf.RunState) -> ResumeRequest | None:
        return requests[k] if k < len(requests) else None

    kwargs: dict[str, Any] = {
        "input_data": plan.input_data,
        "resumer": resumer,
        "storage_factory": storage_factory,
        "run_id": run_id,
    }
    reference, storage, _ = await crash_and_recover(generated.workflow, write=None, **kwargs)
    problems: list[str] = []
    if len(reference.executions) != len(steps):
        problems.append(f"{len(reference.executions)} executions, the model expects {len(steps)}")
    executions = _executions(reference.events)
    for number, (result, (_, expected)) in enumerate(
        zip(reference.executions, steps, strict=False)
    ):
        chunks = executions[number] if number < len(executions) else []
        problems += [
            f"execution {number}: {p}" for p in execution_differences(result, chunks, expected)
        ]
    if problems:
        raise _mismatch(generated, plan, faults, problems, reference.events)
    assert faults.crash_at is not None
    write = 1 + (faults.crash_at - 1) % max(storage.writes, 1)
    record, faulty, at_crash = await crash_and_recover(
        generated.workflow, write=write, mode=faults.crash_mode, **kwargs
    )
    problems, reran = compare_recovered(
        reference,
        record,
        at_crash=at_crash,
        workflow=generated.workflow,
        allowed_errors=steps[-1][1].errors,
    )
    # (The number of durable writes may vary by a few with scheduling: a run that ends
    # before write k simply did not crash, and must still equal the reference.)
    crash = CrashPoint(
        write=write,
        mode=faults.crash_mode,
        crashed=faulty.crashed,
        record=record,
        reran=reran,
        problems=problems,
    )
    if problems:
        raise _mismatch(
            generated,
            plan,
            faults,
            [
                f"crash at write {write}/{storage.writes} ({faults.crash_mode}): {p}"
                for p in problems
            ],
            record.events,
        )
    return ScenarioRecord(
        results=record.executions,
        events=record.events,
        expected=[e for _, e in steps],
        crash=crash,
    )
