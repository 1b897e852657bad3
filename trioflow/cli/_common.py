"""What the commands share: finding a stored run and its workflow, and reporting how an
execution ended (text or ``--json``, with the commands that resume a suspended run)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, Sequence
from typing import Any

import trio

from .._core._chunks import Chunk, WorkflowFinish
from .._core._model import RunSnapshot, WorkflowResult
from .._core._serde import to_jsonable
from .._core._status import RunStatus
from .._runtime import result_from_snapshot
from .._workflow import WorkflowGraph
from ..storage import Storage
from ._hints import resume_commands
from ._load import WORKFLOW_REF_KEY, CliError, load_workflow
from ._session import Session, exit_status
from ._view import compact, error_text, make_view


async def load_snapshot(session: Session, storage: Storage, run_id: str) -> RunSnapshot:
    snapshot = await storage.load_snapshot(run_id)
    if snapshot is None:
        raise CliError(f"no run {run_id} in {session.db_display}")
    return snapshot


def workflow_of(snapshot: RunSnapshot, ref: str | None) -> tuple[WorkflowGraph, str]:
    """The workflow a stored run belongs to: ``--ref`` or the reference stored with it."""
    stored = snapshot.request_context.get(WORKFLOW_REF_KEY)
    chosen = ref or (stored if isinstance(stored, str) else None)
    if chosen is None:
        raise CliError(
            f"run {snapshot.run_id} (workflow {snapshot.workflow_id!r}) was not started by "
            "trioflow run, serve or worker, so its workflow module is unknown: pass "
            "--ref MODULE:WORKFLOW"
        )
    try:
        workflow, canonical = load_workflow(chosen, snapshot.workflow_id)
    except CliError as exc:
        if ref is None:
            raise CliError(
                f"cannot load the workflow of run {snapshot.run_id} ({chosen}): {exc} "
                "(pass --ref MODULE:WORKFLOW)"
            ) from None
        raise
    if workflow.id != snapshot.workflow_id:
        raise CliError(
            f"run {snapshot.run_id} belongs to workflow {snapshot.workflow_id!r}, "
            f"but {chosen} is workflow {workflow.id!r}"
        )
    return workflow, canonical


def suspended_payloads(result: WorkflowResult) -> list[tuple[str, Any]]:
    return [
        (".".join(path), result.suspend_payload.get(".".join(path))) for path in result.suspended
    ]


def error_json(error: Any) -> dict[str, Any] | None:
    if error is None:
        return None
    if isinstance(error, BaseException):
        return {"name": type(error).__name__, "message": str(error)}
    return {"name": getattr(error, "name", "Error"), "message": getattr(error, "message", "")}


def result_json(result: WorkflowResult, workflow_id: str) -> dict[str, Any]:
    return {
        "runId": result.run_id,
        "workflowId": workflow_id,
        "status": result.status.value,
        "result": to_jsonable(result.result),
        "error": error_json(result.error),
        "suspended": [
            {"path": path, "payload": to_jsonable(payload)}
            for path, payload in suspended_payloads(result)
        ],
    }


async def resume_hints(
    session: Session,
    storage: Storage,
    result: WorkflowResult,
    workflow: WorkflowGraph | None,
    data: Any | None = None,
) -> list[str]:
    """The commands that resume ``result``'s run (``data``: the resume data, if known)."""
    snapshot = await storage.load_snapshot(result.run_id)
    labels = snapshot.resume_labels if snapshot is not None else {}
    return resume_commands(
        result.run_id,
        session.db_option,
        result.suspended,
        workflow=workflow,
        labels=labels,
        data=data,
    )


def stored_hints(session: Session, snapshot: RunSnapshot, ref: str | None = None) -> list[str]:
    """The commands that resume a stored suspended run, with example data when its
    workflow can be loaded (``ref``, or the reference stored with the run)."""
    suspended = result_from_snapshot(snapshot).suspended
    if not suspended:
        return []
    workflow: WorkflowGraph | None = None
    if ref is not None or snapshot.request_context.get(WORKFLOW_REF_KEY) is not None:
        # Without the workflow the command still helps, only without example data.
        with contextlib.suppress(CliError):
            workflow, _ = workflow_of(snapshot, ref)
    return resume_commands(
        snapshot.run_id,
        session.db_option,
        suspended,
        workflow=workflow,
        labels=snapshot.resume_labels,
    )


def report(
    session: Session,
    result: WorkflowResult,
    workflow_id: str,
    *,
    hints: Sequence[str] = (),
    data_known: bool = False,
    extra: dict[str, Any] | None = None,
) -> int:
    """Print how the execution ended; return the exit status. ``hints``: the commands
    that resume a suspended run (``data_known``: they carry the data to give)."""
    status = result.status
    if session.json:
        body = result_json(result, workflow_id)
        if status is RunStatus.SUSPENDED and hints:
            body["resumeCommand"] = hints[0]
            body["resumeCommands"] = list(hints)
        body.update(extra or {})
        session.emit_json(body)
        return exit_status(status)
    fancy = session.fancy
    if status is RunStatus.SUCCESS:
        session.say("[bold green]✔ success[/]" if fancy else "status: success")
        if fancy:
            print_value(session, to_jsonable(result.result))
        else:
            session.say(f"result: {json.dumps(to_jsonable(result.result))}", markup=False)
    elif status in (RunStatus.FAILED, RunStatus.TRIPWIRE):
        reason = error_text(result.error)
        if status is RunStatus.TRIPWIRE and result.tripwire is not None:
            reason = result.tripwire.reason
        if fancy:
            session.say(f"[bold red]✖ {status.value}[/]: {escape(reason)}")
        else:
            session.say(f"status: {status.value}", markup=False)
            session.say(f"error: {reason}", markup=False)
    elif status is RunStatus.SUSPENDED:
        session.say("[bold yellow]⏸ suspended[/]" if fancy else "status: suspended")
        for path, payload in suspended_payloads(result):
            text = f"{path}: {compact(to_jsonable(payload), 400)}"
            session.say(f"  [yellow]{escape(text)}[/]" if fancy else f"suspended {text}")
        if not data_known:
            session.say(
                "Resume it (from any terminal) with:" if fancy else "to resume:", markup=False
            )
        else:
            session.say(
                "Finish it from another terminal with:" if fancy else "to finish it, run:",
                markup=False,
            )
        for command in hints:
            session.say(command, markup=False)
    elif status is RunStatus.CANCELED:
        session.say("[bold yellow]■ canceled[/]" if fancy else "status: canceled")
    else:
        session.say(f"status: {status.value}", markup=False)
    return exit_status(status)


def print_value(session: Session, value: Any) -> None:
    """A JSON value on a terminal: on one line when it fits, else indented."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= max(40, session.out.width - 4):
        session.out.print_json(text, indent=None)
    else:
        session.out.print_json(text, indent=2)


def escape(text: str) -> str:
    """``text`` with rich markup escaped (rich is imported with the first use)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


async def show_chunks(
    session: Session,
    chunks: AsyncIterable[Chunk],
    *,
    until_any_finish: bool,
    workflow: WorkflowGraph | None = None,
) -> None:
    """Show chunks as they come (nothing in --json mode: the summary says it all)."""
    if session.json:
        await trio.lowlevel.checkpoint()
        return
    view = make_view(session.out, workflow)
    async with view.showing():
        async for chunk in chunks:
            view.handle(chunk)
            if until_any_finish and isinstance(chunk, WorkflowFinish):
                break
