"""foreach: a node run once per item, ``concurrency`` lanes without a task per item.
"""

from __future__ import annotations

from typing import Any

import trio

from .._core._chunks import (
    StepProgressPayload,
    WorkflowStepProgress,
)
from .._core._graph import (
    ForeachEntry,
)
from .._core._model import (
    StepResult,
)
from .._core._plan._records import (
    VALUE,
    start_times,
    type_name,
)
from .._core._plan._values import (
    Label,
    NodeResume,
    Outcome,
    StepRun,
)
from .._core._resume import ResumeTarget
from .._core._serde import (
    dump_error,
    load_error,
    to_jsonable,
)
from .._core._status import StepStatus
from .._effects import now_ms
from .._groups import unwrap_groups
from ._level import Level

_S = StepStatus


async def run_foreach(
    level: Level,
    idx: int,
    entry: ForeachEntry,
    value: Any,
    target: ResumeTarget | None,
    *,
    restart: bool,
) -> Outcome:
    node = entry.node
    chunk_id = level.chunk_id(node.id)
    execution = level.execution
    emit = level.emits
    resume = level.node_resume(node.id, target)
    stored = (
        execution.stored.get(level.key_prefix + node.id)
        if (resume is not None or restart)
        else None
    )
    if stored is not None and "payload" in stored:
        value = stored["payload"]
    started_at, resumed_at = start_times(now_ms(), resume, stored)
    if not isinstance(value, list):
        error = TypeError(f"foreach expects a list, got {type_name(value)}")
        result = StepResult(
            status=_S.FAILED,
            payload=value,
            error=error,
            started_at=started_at,
            ended_at=now_ms(),
        )
        if emit:
            level.emit_start(
                chunk_id, call_id=None, payload=value, started_at=started_at, resume=None
            )
            level.emit_settled(chunk_id, result, None)
        level.settle(node.id, StepRun(result=result), [idx])
        return Outcome(_S.FAILED, error=error)

    items = value
    total = len(items)
    previous: list[dict[str, Any] | None] = [None] * total
    if stored is not None:
        saved = ((stored.get("metadata") or {}).get("foreach") or {}).get("outcomes") or []
        previous[: len(saved)] = saved[:total]
    outcomes: list[dict[str, Any] | None] = list(previous)
    outputs: list[Any] = [p.get("output") if p else None for p in previous]
    suspended_payloads: dict[int, Any] = {}
    runs: dict[int, StepRun] = {}

    plan: list[tuple[int, NodeResume | None]] = []
    stored_bail = next(
        (i for i, p in enumerate(previous) if p and p.get("status") == "bailed"), None
    )
    # A restart continues the foreach where it was: if an item had already suspended or
    # failed, it had stopped taking new items, and still does (a resume starts them).
    stopped = any(
        p
        and p.get("status") in ("suspended", "failed")
        # A plain restart: any such item had stopped the foreach. A replayed resume:
        # one that suspended or failed during that very resume had.
        and (resume is None or p.get("resumed") == execution.resume_token)
        for p in previous
    )
    for i in range(total):
        prev = previous[i]
        if prev and prev.get("status") == "running":
            # In flight when the execution stopped: it runs again (at least once), as a
            # resume again if it was being resumed.
            prev = prev.get("prior")
            if not (prev and prev.get("status") == "suspended" and resume is not None):
                plan.append((i, None))
                continue
        status = prev.get("status") if prev else None
        if status == "success" or stored_bail is not None:
            continue
        if (
            status == "suspended"
            and prev is not None
            and prev.get("resumed") is not None
            and prev.get("resumed") == execution.resume_token
        ):
            # Suspended during this very resume (before a crash): it stays suspended.
            suspended_payloads[i] = prev.get("suspend_payload")
            continue
        settled_here = prev is not None and (
            resume is None or prev.get("resumed") == execution.resume_token
        )
        if (status is None and stopped) or (status == "failed" and settled_here):
            continue
        if status == "suspended":
            if resume is not None and resume.foreach_index in (None, i):
                plan.append(
                    (
                        i,
                        NodeResume(
                            data=resume.data,
                            tail=resume.tail,
                            stored=prev,
                            foreach_index=None,
                        ),
                    )
                )
            else:
                suspended_payloads[i] = prev.get("suspend_payload") if prev else None
            continue
        plan.append((i, None))

    if emit:
        level.emit_start(
            chunk_id,
            call_id=None,
            payload=items,
            started_at=started_at,
            resume=resume,
            resumed_at=resumed_at,
        )
    completed = 0
    stop = False
    first_failure: int | None = None
    bailed: int | None = None

    def progress(i: int, status: str, output: Any = None) -> None:
        if not emit:
            return
        body = StepProgressPayload(
            id=chunk_id,
            step_name=chunk_id,
            completed_count=completed,
            total_count=total,
            current_index=i,
            iteration_status=status,
            iteration_output=to_jsonable(output) if status == "success" else None,
        )
        level.publish(WorkflowStepProgress, body)

    async def iterate(i: int, item_resume: NodeResume | None) -> None:
        nonlocal completed, stop, first_failure, bailed
        run = await level.run_node(
            node,
            items[i],
            resume=item_resume,
            chunk_id=chunk_id,
            emit=False,
            foreach_index=i,
            record=False,
        )
        runs[i] = run
        result = run.result
        record: dict[str, Any] = {"status": VALUE[result.status]}
        if execution.resume_token is not None:
            # Settled during this resume (resumed, or started fresh by it): a replay of
            # the same resume after a crash leaves this record as it is.
            record["resumed"] = execution.resume_token
        if result.metadata:
            record["metadata"] = to_jsonable(result.metadata)
        if result.payload is not None:
            record["payload"] = to_jsonable(result.payload)
        if result.retry_count:
            record["retry_count"] = result.retry_count
        if run.bailed:
            bailed = i if bailed is None else min(bailed, i)
            stop = True
            completed += 1
            record["status"] = "bailed"
            record["output"] = to_jsonable(result.output)
            progress(i, "failed")
        elif result.status is _S.SUCCESS:
            completed += 1
            outputs[i] = result.output
            record["output"] = to_jsonable(result.output)
            progress(i, "success", result.output)
        elif result.status is _S.SUSPENDED:
            stop = True
            suspended_payloads[i] = result.suspend_payload
            record["suspend_payload"] = to_jsonable(result.suspend_payload)
            if run.labels:
                record["labels"] = [lab.name for lab in run.labels]
            progress(i, "suspended")
        else:
            completed += 1
            stop = True
            if result.error is not None:
                record["error"] = dump_error(result.error)
            # Every item in flight settles before the outcome is decided: report the
            # failure with the lowest index, not whichever trio happened to finish first.
            if first_failure is None or i < first_failure:
                first_failure = i
            progress(i, "failed")
        outcomes[i] = record
        if execution.durable:
            execution.stored[level.key_prefix + node.id] = {
                "status": "running",
                "payload": items_json,
                "started_at": started_at,
                "metadata": {"foreach": {"outcomes": list(outcomes)}},
            }
            await execution.persist_progress()

    items_json = to_jsonable(items) if execution.durable else None
    pending = iter(plan)
    log = execution.log

    async def worker() -> None:
        # A sliding window without a task per item: each of `concurrency` workers takes
        # the next item as soon as its current one settles (taking is synchronous).
        for done, (i, item_resume) in enumerate(pending, start=1):
            if stop:
                return
            # Recorded with the next progress write: a restart re-runs items that were
            # in flight, and does not start the ones that were never taken.
            outcomes[i] = {"status": "running", "prior": outcomes[i]}
            await iterate(i, item_resume)
            # Items whose steps never checkpoint must not make the run uncancellable
            # (a cancel point per item) nor starve other tasks (a schedule point every
            # few items: a full checkpoint per item would double the cost of an item).
            # Each item adds a progress chunk: past the bound of chunks waiting for
            # storage (SPEC §3.0), the next item waits until storage commits some.
            if not log.has_room():
                await log.wait_for_room()
            elif done % 32:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()

    workers = min(entry.concurrency, len(plan))
    try:
        if workers == 1:
            await worker()
        elif workers > 1:
            # A cancelled nursery raises a group of Cancelled: unwrapped, so that
            # the ``except trio.Cancelled`` below settles the foreach.
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    for _ in range(workers):
                        nursery.start_soon(worker)
    except trio.Cancelled:
        # Keep the outcomes: if the runtime (not the user) interrupted the run, a restart
        # continues with the items that finished.
        canceled = StepResult(
            status=_S.CANCELED,
            payload=items,
            started_at=started_at,
            ended_at=now_ms(),
            metadata={"foreach": {"outcomes": list(outcomes)}},
        )
        if emit:
            level.emit_settled(chunk_id, canceled, None)
        level.settle(node.id, StepRun(result=canceled), [idx])
        if execution.interrupted_resume(resume):
            # The runtime stopped during this resume: the foreach stays suspended, and
            # restart() replays the resume on the items it had not finished.
            level.suspended_paths[node.id] = [idx]
        raise

    if resume is None or execution.resume_token is not None:
        # A restart (or a replayed resume) of a foreach whose item had failed: the lowest
        # failed item, recorded or new, is the outcome.
        recorded = next(
            (
                i
                for i, p in enumerate(previous)
                if p
                and p.get("status") == "failed"
                and (resume is None or p.get("resumed") == execution.resume_token)
            ),
            None,
        )
        if recorded is not None and (first_failure is None or recorded < first_failure):
            first_failure = recorded
            runs[recorded] = StepRun(
                result=StepResult(
                    status=_S.FAILED,
                    error=load_error((previous[recorded] or {}).get("error"))
                    or RuntimeError(f"foreach item {recorded} failed before a restart"),
                )
            )
    if stored_bail is not None and bailed is None:
        bailed = stored_bail
        bail_record = previous[stored_bail] or {}
        runs[stored_bail] = StepRun(
            result=StepResult(status=_S.SUCCESS, output=bail_record.get("output")),
            bailed=True,
        )
    ended_at = now_ms()
    metadata = {"foreach": {"outcomes": outcomes}}
    base: dict[str, Any] = {
        "payload": items,
        "started_at": started_at,
        "metadata": metadata,
        "resume_payload": resume.data if resume is not None else None,
        "resumed_at": resumed_at,
    }
    if first_failure is not None:
        failed_result = runs[first_failure].result
        result = StepResult(
            status=_S.FAILED, error=failed_result.error, ended_at=ended_at, **base
        )
        if emit:
            level.emit_settled(chunk_id, result, None)
        tripwire = runs[first_failure].tripwire
        level.settle(node.id, StepRun(result=result, tripwire=tripwire), [idx])
        if tripwire is not None:
            return Outcome(_S.TRIPWIRE, error=failed_result.error, tripwire=tripwire)
        return Outcome(_S.FAILED, error=failed_result.error)
    if bailed is not None:
        bail_value = runs[bailed].result.output
        result = StepResult(status=_S.SUCCESS, output=bail_value, ended_at=ended_at, **base)
        if emit:
            level.emit_settled(chunk_id, result, None)
        level.settle(node.id, StepRun(result=result), [idx])
        return Outcome(_S.BAILED, output=bail_value)
    if suspended_payloads:
        first = min(suspended_payloads)
        result = StepResult(
            status=_S.SUSPENDED,
            suspend_payload=suspended_payloads[first],
            suspended_at=ended_at,
            **base,
        )
        if emit:
            level.emit_settled(chunk_id, result, None)
        labels: list[Label] = []
        for i, record in enumerate(outcomes):
            if record and record.get("status") == "suspended":
                labels.extend(Label(name, [], i) for name in record.get("labels") or [])
        level.settle(node.id, StepRun(result=result, labels=labels), [idx])
        return Outcome(_S.SUSPENDED)
    result = StepResult(status=_S.SUCCESS, output=outputs, ended_at=ended_at, **base)
    if emit:
        level.emit_settled(chunk_id, result, None)
    level.settle(node.id, StepRun(result=result), [idx])
    return Outcome(_S.SUCCESS, output=outputs)

