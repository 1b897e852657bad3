"""The read-only commands: ``runs`` (the stored runs), ``show`` (one run: its steps,
result, suspensions and, with ``--all``, every step at every depth) and ``events`` (a run's
event log, optionally followed)."""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
from collections.abc import Sequence
from typing import Any

import attrs
from rich import box
from rich.table import Table

from .._broadcast import Subscription, ends_at_terminal_finish
from .._core._chunks import (
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowStart,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
)
from .._core._model import RunInfo, RunSnapshot, StepResult, WorkflowResult
from .._core._serde import camel, to_jsonable, to_wire
from .._core._status import TERMINAL, RunStatus
from .._runtime import open_runtime, result_from_snapshot
from ._common import error_json, escape, load_snapshot, stored_hints, suspended_payloads
from ._load import WORKFLOW_REF_KEY, CliError
from ._session import EXIT_SUCCESS, Session
from ._view import compact, error_text, plain_line

#: The sign of "retried 2 times" (written as an escape: the source stays ASCII).
TIMES = "\N{MULTIPLICATION SIGN}"


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _plain_table(session: Session, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        session.say(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), markup=False
        )


def _table(
    session: Session, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    if not session.fancy:
        _plain_table(session, header, rows)
        return
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for i, name in enumerate(header):
        # Ids, statuses and times are never wrapped; only a last free-text column is.
        table.add_column(name, no_wrap=i < len(header) - 1 or not name.startswith("OUTPUT"))
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    session.out.print(table)


async def cmd_runs(session: Session, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be 1 or more (the most runs to list), got {args.limit}")
    async with session.storage(must_exist=True) as storage:
        infos: list[RunInfo] = await storage.list_runs(
            workflow_id=args.workflow,
            status=RunStatus(args.status) if args.status else None,
            limit=args.limit,
        )
    if session.json:
        session.emit_json(
            [
                {
                    "runId": i.run_id,
                    "workflowId": i.workflow_id,
                    "status": i.status.value,
                    "createdAt": i.created_at,
                    "updatedAt": i.updated_at,
                }
                for i in infos
            ]
        )
        return EXIT_SUCCESS
    if not infos:
        session.say(f"no runs in {session.db_display}", markup=False)
        return EXIT_SUCCESS
    rows = [
        [i.run_id, i.workflow_id, i.status.value, _when(i.created_at), _when(i.updated_at)]
        for i in infos
    ]
    _table(
        session,
        f"runs in {session.db_display}",
        ["RUN ID", "WORKFLOW", "STATUS", "CREATED", "UPDATED"],
        rows,
    )
    return EXIT_SUCCESS


def _duration_ms(step: StepResult) -> int | None:
    start = step.resumed_at or step.started_at
    end = step.ended_at or step.suspended_at
    if start is None or end is None:
        return None
    return max(0, end - start)


def _step_json(step_id: str, step: StepResult) -> dict[str, Any]:
    return {
        "id": step_id,
        "status": step.status.value,
        "startedAt": step.started_at,
        "endedAt": step.ended_at,
        "durationMs": _duration_ms(step),
        "output": to_jsonable(step.output),
        "error": error_json(step.error),
        "suspendPayload": to_jsonable(step.suspend_payload),
        "retryCount": step.retry_count,
    }


def _any_step_json(step: StepResult) -> dict[str, Any]:
    """A step result of ``allSteps``: its fields in camelCase, as the wire names them, the
    ones it has no value for left out (``retryCount`` is always there)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(StepResult):
        value = getattr(step, field.name)
        if value is None:
            continue
        out[camel(field.name)] = error_json(value) if field.name == "error" else to_jsonable(value)
    return out


def _show_json(snapshot: RunSnapshot, result: WorkflowResult, *, every: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "runId": snapshot.run_id,
        "workflowId": snapshot.workflow_id,
        "resourceId": snapshot.resource_id,
        "status": snapshot.status.value,
        "workflowRef": snapshot.request_context.get(WORKFLOW_REF_KEY),
        "input": to_jsonable(snapshot.input),
        "state": to_jsonable(snapshot.state),
        "steps": [_step_json(step_id, step) for step_id, step in result.steps.items()],
        "suspended": _suspended_json(result),
        "result": to_jsonable(snapshot.result),
        "error": error_json(snapshot.error),
        "createdAt": snapshot.created_at,
        "updatedAt": snapshot.updated_at,
    }
    if every:
        body["allSteps"] = {key: _any_step_json(step) for key, step in result.all_steps.items()}
    return body


def _suspended_json(result: WorkflowResult) -> list[dict[str, Any]]:
    return [{"path": p, "payload": to_jsonable(v)} for p, v in suspended_payloads(result)]


def _step_row(key: str, step: StepResult, interrupted: frozenset[str] = frozenset()) -> list[str]:
    took = _duration_ms(step)
    status = "interrupted" if key in interrupted else step.status.value
    if step.retry_count > 0:
        status += f" (retried {step.retry_count}{TIMES})"
    detail = (
        error_text(step.error) if step.error is not None else compact(to_jsonable(step.output), 80)
    )
    return [key, status, "" if took is None else f"{took / 1000:.2f}s", detail]


def _prefixes(key: str) -> list[str]:
    """``digest[1].fetch`` -> ``digest``, ``digest[1]``, ``digest[1].fetch`` (ids never
    contain ``.``, ``[`` or ``]``)."""
    cuts = [i for i, c in enumerate(key) if c in ".["]
    return [key[:i] for i in cuts] + [key]


def tree_order(keys: Sequence[str]) -> list[str]:
    """Qualified keys each after its parent, foreach items by index, other siblings in the
    order given (all_steps lists the top level first, then the inner steps as stored)."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        for prefix in _prefixes(key):
            first.setdefault(prefix, i)

    def position(key: str) -> list[tuple[int, int]]:
        return [
            (0, int(p[p.rindex("[") + 1 : -1])) if p.endswith("]") else (1, first[p])
            for p in _prefixes(key)
        ]

    return sorted(keys, key=position)


def _show_steps(
    session: Session,
    result: WorkflowResult,
    *,
    every: bool,
    interrupted: frozenset[str] = frozenset(),
) -> None:
    """The table of the run's top-level steps, or with ``every`` of all its steps at every
    depth (by qualified key); without it, how many inner steps ``--all`` would add.
    ``interrupted`` steps show as such (not as the ``canceled`` record they left)."""
    steps = result.all_steps if every else result.steps
    rows = [_step_row(key, steps[key], interrupted) for key in tree_order(list(steps))]
    if rows:
        session.say("")
        _table(
            session,
            "all steps" if every else "steps",
            ["STEP", "STATUS", "DURATION", "OUTPUT / ERROR"],
            rows,
        )
    inner = 0 if every else len(result.all_steps) - len(result.steps)
    if inner > 0:
        session.say(
            f"{inner} inner step{'s' if inner > 1 else ''} (of nested workflows and foreach "
            f"items): trioflow show {result.run_id} --all{session.db_option} lists them",
            markup=False,
        )


#: Stored chunks read at once when looking for steps that started and never settled.
_LOG_PAGE = 1000


async def _unsettled_steps(storage: Any, run_id: str) -> list[tuple[str, int | None]]:
    """Steps whose start is in the stored log with no result or suspension after it, in
    the last execution: what was running when the executing process stopped (or still
    runs, elsewhere). The snapshot may not say so: it is written after entries settle."""
    # Logs written before trioflow stopped settling the steps a stopping runtime
    # interrupted hold canceled results for them, though the run stayed running and
    # restart() runs them again: only a workflow-canceled (a cancel of the run) makes a
    # canceled result final.
    started: dict[str, int | None] = {}
    seq = 1
    while True:
        page = await storage.read_events(run_id, from_seq=seq, limit=_LOG_PAGE)
        for chunk in page:
            if isinstance(chunk, WorkflowStart | WorkflowFinish | WorkflowCanceled):
                started.clear()  # a new execution, the end of one, or a real cancel
            elif isinstance(chunk, WorkflowStepStart):
                started[chunk.payload.id] = chunk.payload.started_at
            elif isinstance(chunk, WorkflowStepSuspended) or (
                isinstance(chunk, WorkflowStepResult) and chunk.payload.status != "canceled"
            ):
                started.pop(chunk.payload.id, None)
        if len(page) < _LOG_PAGE:
            return list(started.items())
        seq = page[-1].seq + 1


async def cmd_show(session: Session, args: argparse.Namespace) -> int:
    async with session.storage(must_exist=True) as storage:
        snapshot = await load_snapshot(session, storage, args.run_id)
        running = (
            await _unsettled_steps(storage, snapshot.run_id)
            if snapshot.status in (RunStatus.RUNNING, RunStatus.WAITING)
            else []
        )
    # The result a stored run describes: Runtime.get_run_state reads the same (all_steps
    # included) without a runtime to open.
    result = result_from_snapshot(snapshot)
    if session.json:
        body = _show_json(snapshot, result, every=args.all)
        body["running"] = [{"id": step_id, "startedAt": at} for step_id, at in running]
        session.emit_json(body)
        return EXIT_SUCCESS
    say = functools.partial(session.say, markup=False)
    say(f"run       {snapshot.run_id}")
    say(f"workflow  {snapshot.workflow_id}")
    say(f"status    {snapshot.status.value}")
    say(f"created   {_when(snapshot.created_at)}")
    say(f"updated   {_when(snapshot.updated_at)}")
    say(f"input     {compact(to_jsonable(snapshot.input), 400)}")
    _show_steps(
        session, result, every=args.all, interrupted=frozenset(step_id for step_id, _ in running)
    )
    for step_id, at in running:
        say(f"running   {step_id} (started {_when(at)}; no final result stored: a restart runs it)")
    say("")
    if snapshot.status is RunStatus.SUCCESS:
        say(f"result    {json.dumps(to_jsonable(snapshot.result))}")
    elif snapshot.error is not None:
        say(f"error     {error_text(snapshot.error)}")
    for item in _suspended_json(result):
        say(f"suspended {item['path']}: {compact(item['payload'], 400)}")
    for command in stored_hints(session, snapshot):
        say(f"resume    {command}")
    return EXIT_SUCCESS


async def cmd_events(session: Session, args: argparse.Namespace) -> int:
    if args.from_seq < 1:
        raise CliError("--from-seq must be 1 or more")
    async with session.storage(must_exist=True) as storage:
        snapshot = await load_snapshot(session, storage, args.run_id)
        follow = args.follow and snapshot.status not in TERMINAL
        async with open_runtime(storage=storage) as rt:
            hub = rt._hub_for(snapshot)
            # Read straight from the run's log (no workflow needed); while following, the
            # log polls storage for what the executing process appends.
            sub = Subscription(
                hub.log,
                from_seq=args.from_seq,
                ends_after=ends_at_terminal_finish,
                follow=follow,
            )
            async with sub:
                async for chunk in sub:
                    if session.json:
                        session.emit_json(to_wire(chunk))
                    else:
                        session.say(
                            f"{chunk.seq:>5} {plain_line(chunk) or chunk.type}", markup=False
                        )
                        session.out.file.flush()
    return EXIT_SUCCESS
