"""The ``trioflow`` command: argument parsing, the commands, errors.

The exit statuses are in ``_session``; ``serve`` and ``watch`` live in ``_serve``, the
read-only ``runs``, ``show`` and ``events`` in ``_inspect``; what the commands share (a
stored run's workflow, the report of how an execution ended) in ``_common``, the resume
hints and examples of schemas in ``_hints``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from typing import Any

import trio
from rich.console import Console

from .._core._chunks import Chunk
from .._core._errors import MultipleSuspendedStepsError, TrioflowError, ValidationError
from .._core._model import RunSnapshot, WorkflowResult
from .._core._status import TERMINAL, RunStatus
from .._groups import leaves as exception_leaves
from .._install import install_hint
from .._run import RunOutput
from .._runtime import open_runtime, result_from_snapshot
from .._version import __version__
from .._workflow import WorkflowGraph
from ..storage import Storage
from ._common import (
    escape,
    load_snapshot,
    report,
    resume_hints,
    show_chunks,
    stored_hints,
    workflow_of,
)
from ._hints import require_value, resume_schema_at, step_to_resume
from ._inspect import cmd_events, cmd_runs, cmd_show
from ._load import WORKFLOW_REF_KEY, CliError, load_module_workflows, load_workflow, parse_json
from ._serve import add_arguments as add_bridge_arguments
from ._serve import cmd_serve, cmd_watch
from ._session import (
    DEFAULT_DB,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_SUCCESS,
    EXIT_SUSPENDED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Session,
)
from ._view import error_text

DEMO_REF = "trioflow._demo:demo_workflow"


# --- run / demo ----------------------------------------------------------------------------


async def _start_and_show(
    session: Session,
    workflow: WorkflowGraph,
    ref: str,
    input_data: Any,
    context: dict[str, Any],
    *,
    resume_data: Any | None = None,
) -> int:
    async with session.storage(must_exist=False) as storage:
        async with open_runtime(storage=storage, workflows=[workflow]) as rt:
            run = await rt.create_run(workflow)
            try:
                out = await run.stream(
                    input_data=input_data, request_context={**context, WORKFLOW_REF_KEY: ref}
                )
            except Exception:
                # Nothing ran: leave no pending run behind.
                with trio.CancelScope(shield=True):
                    await rt.delete_run(run.run_id)
                raise
            session.active_run = run.run_id
            return await _follow_output(session, storage, out, workflow, resume_data=resume_data)


async def _follow_output(
    session: Session,
    storage: Storage,
    out: RunOutput,
    workflow: WorkflowGraph,
    *,
    resume_data: Any | None = None,
) -> int:
    return await _follow(
        session,
        storage,
        out,
        out.result,
        workflow,
        until_any_finish=False,
        resume_data=resume_data,
    )


async def _follow(
    session: Session,
    storage: Storage,
    chunks: AsyncIterable[Chunk],
    outcome: Callable[[], Awaitable[WorkflowResult]],
    workflow: WorkflowGraph,
    *,
    until_any_finish: bool,
    resume_data: Any | None = None,
) -> int:
    """Show ``chunks`` while ``outcome()`` (the execution's result) is awaited, then report.

    An execution that stops without a result (its storage refused a write, e.g. because
    another process cancelled the run meanwhile) never publishes ``workflow-finish``: the
    view is stopped then, and the stored status says what happened."""
    results: list[WorkflowResult] = []
    failures: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            try:
                results.append(await outcome())
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel(reason="the execution stopped without a result")
                await trio.lowlevel.checkpoint()

        nursery.start_soon(wait)
        await show_chunks(session, chunks, until_any_finish=until_any_finish, workflow=workflow)
    run_id, session.active_run = session.active_run, None
    if results:
        result = results[0]
        hints: list[str] = []
        if result.status is RunStatus.SUSPENDED:
            hints = await resume_hints(session, storage, result, workflow, resume_data)
        return report(session, result, workflow.id, hints=hints, data_known=resume_data is not None)
    assert failures
    assert run_id is not None
    snapshot = await storage.load_snapshot(run_id)
    if snapshot is not None and snapshot.status is RunStatus.CANCELED:
        if not session.json:
            session.say(f"run {run_id} was canceled by another process", markup=False)
        return report(session, result_from_snapshot(snapshot), workflow.id)
    session.err.print(
        f"trioflow: error: run {run_id} stopped: {error_text(failures[0])}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_FAILED


async def cmd_run(session: Session, args: argparse.Namespace) -> int:
    workflow, ref = load_workflow(args.target)
    input_data = parse_json(args.input, "--input")
    if args.input is None and workflow.validate_inputs:
        require_value(workflow.input_schema, "--input", f"workflow {workflow.id!r}")
    context = parse_json(args.context, "--context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise CliError("--context must be a JSON object")
    return await _start_and_show(session, workflow, ref, input_data, context)


async def cmd_demo(session: Session, args: argparse.Namespace) -> int:
    from .._demo import DEMO_APPROVAL, DEMO_INPUT

    workflow, ref = load_workflow(DEMO_REF)
    if not session.json:
        session.say(
            "[bold]trioflow demo[/]: parallel steps, a foreach with progress, custom output, "
            f"a suspension for approval [dim](database {escape(session.db_display)})[/]"
            if session.fancy
            else f"trioflow demo (database: {session.db_display})",
            markup=session.fancy,
        )
    status = await _start_and_show(
        session, workflow, ref, DEMO_INPUT, {}, resume_data=DEMO_APPROVAL
    )
    if status == EXIT_SUSPENDED and not session.json:
        session.say(
            "or watch and approve it in a browser: "
            f"trioflow serve {DEMO_REF}{session.db_option}  (then open the web viewer URL it "
            "prints)",
            markup=False,
        )
        if importlib.util.find_spec("trio_websocket") is None:
            session.say(f"(serve needs the 'bridge' extra: {install_hint('bridge')})", markup=False)
    return status


# --- resume / restart / cancel -------------------------------------------------------------


async def cmd_resume(session: Session, args: argparse.Namespace) -> int:
    data = parse_json(args.data, "--data")
    async with session.storage(must_exist=True) as storage:
        snapshot = await load_snapshot(session, storage, args.run_id)
        if snapshot.status is not RunStatus.SUSPENDED:
            raise CliError(
                f"run {args.run_id} is not suspended (its status is {snapshot.status.value})"
            )
        workflow, ref = workflow_of(snapshot, args.ref)
        if args.data is None:
            _require_resume_data(snapshot, workflow, args)
        async with open_runtime(storage=storage, workflows=[workflow]) as rt:
            run = await rt.create_run(workflow, run_id=args.run_id)
            out = await run.resume_stream(
                resume_data=data,
                step=args.step,
                label=args.label,
                for_each_index=args.for_each_index,
                request_context={WORKFLOW_REF_KEY: ref},
            )
            session.active_run = run.run_id
            return await _follow_output(session, storage, out, workflow)


def _require_resume_data(
    snapshot: RunSnapshot, workflow: WorkflowGraph, args: argparse.Namespace
) -> None:
    """A resume without ``--data``: refused with an example when the step expects data."""
    suspended = [list(path) for path in result_from_snapshot(snapshot).suspended]
    path = step_to_resume(suspended, snapshot.resume_labels, args.step, args.label)
    if path is not None and path in suspended:
        schema = resume_schema_at(workflow, path)
        require_value(schema, "--data", f"step {'.'.join(path)!r}")


async def cmd_restart(session: Session, args: argparse.Namespace) -> int:
    async with session.storage(must_exist=True) as storage:
        snapshot = await load_snapshot(session, storage, args.run_id)
        status = snapshot.status
        if status in (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TRIPWIRE):
            if not session.json:
                session.say(f"run {args.run_id} already ended", markup=False)
            return report(session, result_from_snapshot(snapshot), snapshot.workflow_id)
        if status is RunStatus.SUSPENDED:
            raise CliError(
                f"run {args.run_id} is suspended: continue it with "
                + " or ".join(stored_hints(session, snapshot, args.ref))
            )
        if status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
            raise CliError(f"run {args.run_id} is {status.value}: there is nothing to restart")
        workflow, _ = workflow_of(snapshot, args.ref)
        last = await storage.last_seq(args.run_id)
        async with open_runtime(storage=storage, workflows=[workflow]) as rt:
            run = await rt.create_run(workflow, run_id=args.run_id)
            session.active_run = run.run_id
            async with run.observe_stream(from_seq=last + 1) as chunks:
                return await _follow(
                    session, storage, chunks, run.restart, workflow, until_any_finish=True
                )


async def cmd_cancel(session: Session, args: argparse.Namespace) -> int:
    async with session.storage(must_exist=True) as storage:
        snapshot = await load_snapshot(session, storage, args.run_id)
        before = snapshot.status
        status: RunStatus = before
        if before is RunStatus.CANCELED:
            pass
        elif before in TERMINAL:
            raise CliError(
                f"run {args.run_id} already ended ({before.value}): there is nothing to cancel"
            )
        else:
            workflow, _ = workflow_of(snapshot, args.ref)
            async with open_runtime(storage=storage, workflows=[workflow]) as rt:
                run = await rt.create_run(workflow, run_id=args.run_id)
                await run.cancel()
                status = (await rt.get_run_state(args.run_id)).status
    if session.json:
        session.emit_json({"runId": args.run_id, "status": status.value})
    else:
        session.say(f"run {args.run_id}: {status.value}", markup=False)
        if before in (RunStatus.RUNNING, RunStatus.WAITING) and not session.is_postgres:
            # PostgreSQL notifies the executing process, which stops at once.
            session.say(
                "note: it is stored canceled; a process still executing it is not "
                "interrupted and stops at its next stored step",
                markup=False,
            )
    return EXIT_SUCCESS if status is RunStatus.CANCELED else EXIT_FAILED


# --- workers -----------------------------------------------------------------------------------


async def cmd_worker(session: Session, args: argparse.Namespace) -> int:
    if not session.is_postgres:
        raise CliError(
            "a worker needs a database shared by processes: --db postgresql://... (or TRIOFLOW_DB)"
        )
    if args.capacity < 1:
        raise CliError(f"--capacity must be at least 1, got {args.capacity}")
    workflows = load_module_workflows(args.target)
    async with session.storage(must_exist=False) as storage:
        async with open_runtime(
            storage=storage, workflows=workflows, worker=True, worker_capacity=args.capacity
        ):
            ids = [w.id for w in workflows]
            if session.json:
                session.emit_json({"worker": True, "workflows": ids, "pid": os.getpid()})
            else:
                session.say(
                    f"worker {os.getpid()} executing {', '.join(ids)} (Ctrl-C to stop)",
                    markup=False,
                )
                session.out.file.flush()
            # SIGTERM (systemd, docker stop, Kubernetes) stops the worker cleanly: leaving
            # the runtime gives its runs' leases back, so other workers continue them at
            # once instead of after lease_ttl. Ctrl-C does the same (exit status 130).
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    break
    if not session.json:
        session.say("worker stopped (SIGTERM); its runs were handed back", markup=False)
    return EXIT_SUCCESS


# --- parsing and the entry point ----------------------------------------------------------------

Command = Callable[[Session, argparse.Namespace], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="SQLite file or postgresql:// URI (default: $TRIOFLOW_DB or ./trioflow.db)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser = argparse.ArgumentParser(
        prog="trioflow",
        parents=[common],
        description="Run, resume, inspect and serve trioflow workflows.",
        epilog="exit status: 0 success, 1 failed, 2 usage error, 3 suspended, 4 canceled, "
        "130 interrupted, 143 terminated (SIGTERM)",
    )
    parser.add_argument("--version", action="version", version=f"trioflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    ref_help = "MODULE:WORKFLOW of the run (for runs not started by this command)"
    p = command("run", cmd_run, "start a workflow and show it live")
    p.add_argument(
        "target", metavar="MODULE:WORKFLOW", help="e.g. myapp.flows:orders or flows.py:orders"
    )
    p.add_argument("--input", metavar="JSON", help="the workflow input (JSON, or @file)")
    p.add_argument("--context", metavar="JSON", help="the request context (a JSON object)")

    p = command("resume", cmd_resume, "resume a suspended run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--data", metavar="JSON", help="the resume data (JSON, or @file)")
    p.add_argument("--step", metavar="STEP", help="the suspended step (dotted path for nested)")
    p.add_argument("--label", metavar="LABEL", help="a resume label given to suspend()")
    p.add_argument("--for-each-index", type=int, metavar="N", help="resume one foreach item")
    p.add_argument("--ref", metavar="MODULE:WORKFLOW", help=ref_help)

    p = command("restart", cmd_restart, "continue a run whose process stopped")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--ref", metavar="MODULE:WORKFLOW", help=ref_help)

    p = command("cancel", cmd_cancel, "cancel a run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--ref", metavar="MODULE:WORKFLOW", help=ref_help)

    p = command("runs", cmd_runs, "list stored runs, newest first")
    p.add_argument(
        "--status", choices=[s.value for s in RunStatus if s.value not in ("bailed", "skipped")]
    )
    p.add_argument("--workflow", metavar="WORKFLOW_ID", help="only runs of this workflow id")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (50)")

    p = command("show", cmd_show, "show a stored run: steps, result, suspensions")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--all",
        action="store_true",
        help="every settled step at every depth, by qualified key (e.g. digest[2].fetch)",
    )

    p = command("events", cmd_events, "print a run's event log")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--from-seq", type=int, default=1, metavar="N", help="start at seq N (1)")
    p.add_argument("--follow", action="store_true", help="keep following until the run ends")

    serve = command("serve", cmd_serve, "serve workflows over the websocket bridge")
    serve.add_argument(
        "target", metavar="MODULE[:ATTR]", help="a module (all its workflows) or MODULE:ATTR"
    )

    p = command("worker", cmd_worker, "execute queued runs and runs of dead workers (PostgreSQL)")
    p.add_argument(
        "target", metavar="MODULE[:ATTR]", help="a module (all its workflows) or MODULE:ATTR"
    )
    p.add_argument(
        "--capacity", type=int, default=64, metavar="N", help="at most N runs at once (64)"
    )

    watch = command("watch", cmd_watch, "watch a run through a trioflow bridge")
    watch.add_argument("url", metavar="URL", help="e.g. ws://127.0.0.1:8765")
    watch.add_argument("run_id", metavar="RUN_ID")
    add_bridge_arguments(serve, watch)

    command("demo", cmd_demo, "run the bundled demo: it ends suspended, waiting for you")
    return parser


def user_error_text(exc: BaseException) -> str | None:
    """One line for an error the user caused, or None for a bug."""
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, ValidationError):
        fields = "; ".join(f"{path or '(root)'}: {message}" for path, message in exc.errors)
        return f"{exc.prefix} {fields}"
    if isinstance(exc, MultipleSuspendedStepsError):
        paths = ", ".join(".".join(path) for path in exc.suspended)
        return f"several steps are suspended ({paths}): choose one with --step or --label"
    if isinstance(exc, TrioflowError):
        return " ".join(str(exc).split())
    return None


#: Commands that drive a run's execution: SIGTERM stops them as Ctrl-C does.
_DRIVES_A_RUN = frozenset({"run", "resume", "restart", "demo"})


def _say_stopped(session: Session, how: str) -> None:
    run_id = session.active_run
    session.err.print(how if run_id else "stopped", highlight=False, markup=False)
    if run_id is not None:
        session.err.print(
            f"run {run_id} stopped and can be continued with:\n"
            f"trioflow restart {run_id}{session.db_option}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


async def _cancel_on_sigterm(  # noqa: ASYNC114 - started by _amain only
    scope: trio.CancelScope, stopped: list[str], *, task_status: trio.TaskStatus[None]
) -> None:
    # A service manager, `kill` or a container stop sends SIGTERM: leave the runtime as
    # Ctrl-C does (the run stays stored running, restartable), not silently with 143.
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            stopped.append("SIGTERM")
            scope.cancel(reason="SIGTERM")
            return


async def _amain(session: Session, func: Command, args: argparse.Namespace) -> int:
    code = EXIT_INTERRUPTED
    stopped: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            if args.command in _DRIVES_A_RUN:
                await nursery.start(_cancel_on_sigterm, nursery.cancel_scope, stopped)
            code = await func(session, args)
            nursery.cancel_scope.cancel()
    except* KeyboardInterrupt:
        _say_stopped(session, "interrupted")
        code = EXIT_INTERRUPTED
    else:
        if stopped:
            _say_stopped(session, "terminated (SIGTERM)")
            code = EXIT_TERMINATED
    return code  # noqa: ASYNC910 - the nursery checkpoints


class _OneLineFormatter(logging.Formatter):
    """Library log records as one line each (the traceback only with TRIOFLOW_DEBUG)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"trioflow: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ not in line:
            # Without the traceback, the line must still say what went wrong.
            text = " ".join(str(exc).split())
            line += f" ({type(exc).__name__}: {text})" if text else f" ({type(exc).__name__})"
        if record.exc_info and os.environ.get("TRIOFLOW_DEBUG"):
            line += "\n" + self.formatException(record.exc_info)
        return line


def _configure_logging() -> None:
    logger = logging.getLogger("trioflow")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLineFormatter())
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """The ``trioflow`` command. Returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging()
    out = Console(file=sys.stdout, highlight=False)
    err = Console(file=sys.stderr, highlight=False)
    db = getattr(args, "db", None) or os.environ.get("TRIOFLOW_DB") or DEFAULT_DB
    session = Session(db=db, json=getattr(args, "json", False), out=out, err=err)
    try:
        return trio.run(
            _amain, session, args.func, args, restrict_keyboard_interrupt_to_checkpoints=True
        )
    except (Exception, KeyboardInterrupt, SystemExit, BaseExceptionGroup) as exc:
        leaves = exception_leaves(exc)
        texts = [user_error_text(leaf) for leaf in leaves]
        if leaves and all(t is not None for t in texts):
            err.print(f"trioflow: error: {texts[0]}", markup=False, highlight=False, soft_wrap=True)
            return EXIT_USAGE
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return EXIT_INTERRUPTED
        if leaves and all(isinstance(leaf, BrokenPipeError | SystemExit) for leaf in leaves):
            # stdout was closed early (`trioflow events ID | head`): stop quietly.
            _silence_stdout()
            return EXIT_FAILED
        raise


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
