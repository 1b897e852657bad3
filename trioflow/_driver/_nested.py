"""Running a nested workflow as a step: a child level, its header, its progress record.
"""

from __future__ import annotations

from typing import Any

import trio

from .._core._errors import (
    ValidationError,
)
from .._core._model import (
    ITERATION_COUNT,
    StepResult,
)
from .._core._plan._values import (
    Announced,
    Label,
    NodeResume,
    StepRun,
    merge_state,
)
from .._core._resume import ResumeTarget, nested_header
from .._core._serde import (
    to_jsonable,
    validate,
)
from .._core._status import StepStatus
from .._effects import now_ms
from .._workflow import Workflow
from ._level import Level

_S = StepStatus


async def run_nested(
    level: Level,
    node: Workflow,
    value: Any,
    *,
    resume: NodeResume | None,
    chunk_id: str,
    emit: bool,
    foreach_index: int | None,
    announced: Announced | None = None,
    iteration: int = 0,
) -> StepRun:
    execution = level.execution
    if announced is None:
        announced = level.announce(node, value, resume, chunk_id, emit=emit)
    emit = emit and level.emits
    call_id = announced.call_id
    started_at = announced.started_at
    index = f"[{foreach_index}]" if foreach_index is not None else ""
    key_prefix = f"{level.key_prefix}{node.id}{index}."
    loop = f"#{iteration}" if iteration else ""
    key_scope = f"{level.key_scope}{node.id}{index}{loop}."
    stored = resume.stored if resume is not None else None
    header = nested_header(stored)
    if header is not None and stored is not None and "payload" in stored:
        value = stored["payload"]
    base: dict[str, Any] = {
        "payload": value,
        "started_at": started_at,
        "resume_payload": resume.data if resume is not None and header is not None else None,
        "resumed_at": announced.resumed_at if header is not None else None,
    }

    def finish(result: StepResult, run: StepRun) -> StepRun:
        if emit:
            level.emit_settled(chunk_id, result, call_id)
        return run

    if header is not None:
        sub = level.child(
            node,
            key_prefix=key_prefix,
            chunk_prefix=chunk_id + ".",
            input=header.get("input"),
            state=header.get("state"),
            header=header,
            key_scope=key_scope,
        )
        # The nested run continues with the parent's current state merged over its own.
        sub.state = (
            merge_state(sub.state, level.state, None)
            if isinstance(level.state, dict)
            else sub.state
        )
        inner_target: ResumeTarget | None = None
        start = sub.active_entry if sub.active_entry is not None else len(node.entries)
        tail = list(resume.tail) if resume is not None else []
        if resume is not None and not tail and not resume.restarting:
            # Resumed without a path below this workflow (a foreach item): its first
            # suspended inner path.
            paths = sub.full_suspended_paths()
            tail = paths[0] if paths else []
        if resume is not None and tail:
            inner_target = ResumeTarget(path=tail, foreach_index=resume.foreach_index)
            start = sub.suspended_paths[tail[0]][0]
    else:
        nested_input = value
        if node.input_schema is not None and node.validate_inputs:
            try:
                nested_input = validate(value, node.input_schema, "Invalid step input:")
            except ValidationError as exc:
                result = StepResult(status=_S.FAILED, error=exc, ended_at=now_ms(), **base)
                return finish(result, StepRun(result=result))
        # A fresh run (e.g. the next iteration of a loop) replaces what an earlier run
        # of this workflow recorded under the same keys.
        for key in [k for k in execution.stored if k.startswith(key_prefix)]:
            del execution.stored[key]
        sub = level.child(
            node,
            key_prefix=key_prefix,
            chunk_prefix=chunk_id + ".",
            input=nested_input,
            state=level.state,
            key_scope=key_scope,
        )
        inner_target = None
        start = 0
    record_key = level.key_prefix + node.id
    if foreach_index is None and execution.durable:
        payload_json = to_jsonable(value)

        def progress_record() -> dict[str, Any]:
            # Durable storage: every write while this workflow runs stores where it is
            # (its header: state, position), so a crash re-runs only its unfinished
            # entry and a restart continues it.
            metadata: dict[str, Any] = {"nested": sub.header()}
            if iteration:
                metadata[ITERATION_COUNT] = iteration
            return {
                "status": "running",
                "payload": payload_json,
                "started_at": started_at,
                "metadata": metadata,
            }

        execution.live_records[record_key] = progress_record
        sub.on_entry_done = execution.persist_progress
    try:
        outcome = await sub.run(
            start,
            sub.active_input if header is not None else sub.input,
            inner_target,
            restart=header is not None and inner_target is None,
        )
    except trio.Cancelled:
        if emit:
            canceled = StepResult(status=_S.CANCELED, ended_at=now_ms(), **base)
            level.emit_settled(chunk_id, canceled, call_id)
        raise
    finally:
        refresh = execution.live_records.pop(record_key, None)
        if refresh is not None:
            # The last progress record stays until the step's own result replaces it
            # (an interrupted execution keeps it, for restart).
            execution.stored[record_key] = refresh()

    ended_at = now_ms()
    metadata: dict[str, Any] = {"nested": sub.header()}
    if iteration:
        metadata[ITERATION_COUNT] = iteration
    if outcome.status in (_S.SUCCESS, _S.SUSPENDED):
        level.apply_state(sub.state, None)
    if outcome.status is _S.SUCCESS:
        result = StepResult(
            status=_S.SUCCESS,
            output=outcome.output,
            ended_at=ended_at,
            metadata=metadata,
            **base,
        )
        return finish(result, StepRun(result=result))
    if outcome.status is _S.SUSPENDED:
        paths = sub.full_suspended_paths()
        payloads = sub.suspend_payloads()
        first = payloads.get(".".join(paths[0])) if paths else None
        result = StepResult(
            status=_S.SUSPENDED,
            suspend_payload=first,
            suspended_at=ended_at,
            metadata=metadata,
            **base,
        )
        labels = [
            Label(name, label.path, label.foreach_index)
            for name, label in sub.resume_labels.items()
        ]
        return finish(result, StepRun(result=result, labels=labels))
    status = _S.FAILED if outcome.status is _S.TRIPWIRE else outcome.status
    result = StepResult(
        status=status, error=outcome.error, ended_at=ended_at, metadata=metadata, **base
    )
    return finish(result, StepRun(result=result, tripwire=outcome.tripwire))

