"""Showing a run as it happens: a live view in a terminal, plain lines everywhere else.

:class:`LiveView` (a terminal) draws one row per step with a spinner while it runs, a
progress bar with counts for foreach steps, and its status and duration when it ends;
custom output and step output scroll above the rows. :class:`PlainView` (a pipe, a file,
CI logs) prints one line per event, flushed, without escape codes and in ASCII.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .._core._chunks import (
    DataChunk,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowPaused,
    WorkflowStart,
    WorkflowStepOutput,
    WorkflowStepProgress,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
    WorkflowStepWaiting,
)
from .._core._graph import BranchEntry, ForeachEntry, LoopEntry, ParallelEntry, StepEntry
from .._workflow import WorkflowGraph

#: Longest rendering of a value on one line before it is cut.
MAX_VALUE = 160


def compact(value: Any, limit: int = MAX_VALUE) -> str:
    """``value`` as one line of JSON, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def seconds(ms: int | None, since: int | None) -> str:
    """A duration between two epoch-millisecond timestamps, or ``""``."""
    if ms is None or since is None:
        return ""
    return f"{max(0, ms - since) / 1000:.2f}s"


def error_text(error: Any) -> str:
    """One line for a serialized error (or a live exception)."""
    if error is None:
        return ""
    name = getattr(error, "name", None) or type(error).__name__
    message = " ".join(str(getattr(error, "message", error)).split())
    return f"{name}: {message}" if message else str(name)


def plain_line(chunk: object) -> str | None:
    """The one-line, ASCII-tagged description of a chunk (None for nothing to say)."""
    if isinstance(chunk, WorkflowStart):
        return f"[workflow-start] {chunk.payload.workflow_id}"
    if isinstance(chunk, WorkflowStepStart):
        resumed = " (resumed)" if chunk.payload.resumed_at is not None else ""
        return f"[start] {chunk.payload.id}{resumed}"
    if isinstance(chunk, WorkflowStepResult):
        result = chunk.payload
        took = seconds(result.ended_at, result.resumed_at or result.started_at)
        head = f"[{result.status}] {result.id}" + (f" {took}" if took else "")
        if result.error is not None:
            return f"{head} error: {error_text(result.error)}"
        return f"{head} -> {compact(result.output)}"
    if isinstance(chunk, WorkflowStepProgress):
        progress = chunk.payload
        note = (
            ""
            if progress.iteration_status == "success"
            else f" (item {progress.current_index} {progress.iteration_status})"
        )
        return f"[progress] {progress.id} {progress.completed_count}/{progress.total_count}{note}"
    if isinstance(chunk, WorkflowStepWaiting):
        return f"[waiting] {chunk.payload.id}"
    if isinstance(chunk, WorkflowStepSuspended):
        return f"[suspended] {chunk.payload.id} {compact(chunk.payload.suspend_payload)}"
    if isinstance(chunk, WorkflowStepOutput):
        return f"[output] {chunk.payload.step_name}: {compact(chunk.payload.output)}"
    if isinstance(chunk, DataChunk):
        return f"[{chunk.type}] {compact(chunk.data)}"
    if isinstance(chunk, WorkflowCanceled):
        return "[canceled]"
    if isinstance(chunk, WorkflowPaused):
        return "[paused]"
    if isinstance(chunk, WorkflowFinish):
        meta = chunk.payload.metadata or {}
        err = meta.get("error") if isinstance(meta, dict) else None
        tail = f" error: {error_text(_SimpleError.of(err))}" if isinstance(err, dict) else ""
        return f"[finish] {chunk.payload.workflow_status}{tail}"
    return None


@attrs.frozen
class _SimpleError:
    name: str
    message: str

    @classmethod
    def of(cls, data: dict[str, Any]) -> _SimpleError:
        return cls(name=str(data.get("name", "Error")), message=str(data.get("message", "")))


class View(Protocol):
    """Something that shows a run's chunks as they arrive."""

    def handle(self, chunk: object) -> None: ...

    def message(self, text: str) -> None: ...

    def showing(self) -> Any: ...


class PlainView:
    """One flushed line per chunk, ASCII tags, no escape codes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def handle(self, chunk: object) -> None:
        if isinstance(chunk, WorkflowStart):
            line: str | None = f"run {chunk.run_id}: {chunk.payload.workflow_id}"
        elif isinstance(chunk, WorkflowFinish):
            line = None  # the summary follows
        else:
            line = plain_line(chunk)
        if line is not None:
            self.message(line)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    @asynccontextmanager
    async def showing(self) -> AsyncIterator[None]:
        await trio.lowlevel.checkpoint()
        yield


_ICONS = {
    "success": ("✔", "green"),
    "failed": ("✖", "red"),
    "tripwire": ("✖", "red"),
    "canceled": ("■", "yellow"),
    "suspended": ("⏸", "yellow"),
    "waiting": ("⧗", "cyan"),
    "skipped": ("·", "dim"),
    "bailed": ("✔", "green"),
}


@attrs.define
class _Row:
    id: str
    spinner: Spinner
    status: str = "running"
    began: float = attrs.field(factory=time.monotonic)
    ended: float | None = None
    completed: int | None = None
    total: int | None = None
    note: str = ""


class LiveView:
    """A live board of the run's steps for a terminal (rich)."""

    def __init__(self, console: Console, foreach: frozenset[str] = frozenset()) -> None:
        self.console = console
        self._foreach = foreach
        self._rows: dict[str, _Row] = {}
        self._title = Text("")
        self._began = time.monotonic()
        self._ended: float | None = None
        self._live: Live | None = None

    # --- state --------------------------------------------------------------------------

    def _row(self, step_id: str) -> _Row:
        row = self._rows.get(step_id)
        if row is None:
            row = _Row(id=step_id, spinner=Spinner("dots", style="cyan"))
            self._rows[step_id] = row
        return row

    def handle(self, chunk: object) -> None:
        if isinstance(chunk, WorkflowStart):
            self._title = Text.assemble(
                (chunk.payload.workflow_id, "bold"), "  ", (f"run {chunk.run_id}", "dim")
            )
            self._began, self._ended = time.monotonic(), None
        elif isinstance(chunk, WorkflowStepStart):
            row = self._row(chunk.payload.id)
            row.status, row.began, row.ended, row.note = "running", time.monotonic(), None, ""
            items = chunk.payload.payload
            if chunk.payload.id in self._foreach and isinstance(items, list):
                row.total, row.completed = len(items), row.completed or 0
        elif isinstance(chunk, WorkflowStepProgress):
            p = chunk.payload
            row = self._row(p.id)
            row.completed, row.total = p.completed_count, p.total_count
        elif isinstance(chunk, WorkflowStepWaiting):
            self._row(chunk.payload.id).status = "waiting"
        elif isinstance(chunk, WorkflowStepSuspended):
            row = self._row(chunk.payload.id)
            row.status, row.ended = "suspended", time.monotonic()
            row.note = compact(chunk.payload.suspend_payload, 80)
        elif isinstance(chunk, WorkflowStepResult):
            result = chunk.payload
            row = self._row(result.id)
            row.status, row.ended = result.status, time.monotonic()
            start = result.resumed_at or result.started_at
            if result.ended_at is not None and start is not None:
                row.began = row.ended - max(0, result.ended_at - start) / 1000
            row.note = (
                error_text(result.error) if result.error is not None else compact(result.output, 80)
            )
        elif isinstance(chunk, WorkflowStepOutput):
            self.message(
                f"  [dim]│[/] [bold]{escape(chunk.payload.step_name)}[/]: "
                f"{escape(compact(chunk.payload.output))}"
            )
        elif isinstance(chunk, DataChunk):
            self.message(f"  [magenta]✎ {escape(chunk.type)}[/] {escape(compact(chunk.data))}")
        elif isinstance(chunk, WorkflowFinish):
            self._ended = time.monotonic()
        # No redraw per chunk (a foreach of 10,000 items would redraw 10,000 times): the
        # board is redrawn ten times a second, and once more at the end.

    def message(self, text: str) -> None:
        target = self._live.console if self._live is not None else self.console
        target.print(text, highlight=False, soft_wrap=True)

    # --- drawing ------------------------------------------------------------------------

    def __rich__(self) -> RenderableType:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=2)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(overflow="ellipsis", no_wrap=True, max_width=60)
        now = time.monotonic()
        for row in self._rows.values():
            depth = row.id.count(".")
            name = Text("  " * depth + row.id.rsplit(".", 1)[-1], style="bold")
            icon: RenderableType
            if row.status == "running":
                icon = row.spinner
            else:
                symbol, color = _ICONS.get(row.status, ("?", "white"))
                icon = Text(symbol, style=color)
            progress: RenderableType = Text("")
            if row.total is not None:
                progress = Table.grid(padding=(0, 1))
                progress.add_row(
                    ProgressBar(total=max(row.total, 1), completed=row.completed or 0, width=24),
                    Text(f"{row.completed or 0}/{row.total}", style="cyan"),
                )
            took = (row.ended or now) - row.began
            status = Text(row.status if row.status != "running" else "", style="dim")
            note = Text(row.note, style="red" if row.status == "failed" else "dim")
            grid.add_row(
                icon, name, progress, Text(f"{took:.1f}s", style="dim"), status + " " + note
            )
        took = (self._ended or now) - self._began
        header = Text.assemble(("trioflow ", "bold cyan"), self._title, (f"  {took:.1f}s", "dim"))
        return Group(header, grid)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    @asynccontextmanager
    async def showing(self) -> AsyncIterator[None]:
        live = Live(
            self,
            console=self.console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
        )
        # Refreshed from trio (not rich's thread), so rendering never races the updates.
        with live:
            self._live = live
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tick)
                    try:
                        yield
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                live.refresh()
                self._live = None

    async def _tick(self) -> None:
        while True:
            self.refresh()
            await trio.sleep(0.1)


def foreach_ids(workflow: WorkflowGraph | None, prefix: str = "") -> frozenset[str]:
    """The chunk ids of the foreach steps of ``workflow`` (nested workflows included), so
    their progress bars can show from the start."""
    if workflow is None:
        return frozenset()
    found: set[str] = set()

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, WorkflowGraph):
            found.update(foreach_ids(node, f"{prefix}{node.id}."))

    for entry in workflow.entries:
        if isinstance(entry, ForeachEntry):
            found.add(f"{prefix}{entry.node.id}")
            visit(entry.node, prefix)
        elif isinstance(entry, ParallelEntry | BranchEntry):
            for node in entry.nodes:
                visit(node, prefix)
        elif isinstance(entry, StepEntry | LoopEntry):
            visit(entry.node, prefix)
    return frozenset(found)


def make_view(console: Console, workflow: WorkflowGraph | None = None) -> PlainView | LiveView:
    """The live view on a terminal, plain lines elsewhere."""
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveView(console, foreach_ids(workflow))
    return PlainView(console)
