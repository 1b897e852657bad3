"""``watch-runs`` sees every run's change, however many runs are stored (docs/bridge.md,
``run-status``): the server's run watch pages through storage's ``list_runs`` instead of
reading only its newest page, so a change another process makes to an old run is pushed.

Two runtimes on one SQLite file stand for two processes (the watched server and a worker
or a ``trioflow resume`` in another terminal). Real clock (SQLite runs in threads), short
poll bounds, a ``trio.fail_after`` guard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow.bridge import _watch
from trioflow.bridge._watch import RunWatch

GUARD = 20


async def _gate(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"question": "go on?"})
    return ctx.resume_data


async def _quick(ctx: tf.StepContext) -> Any:
    await trio.lowlevel.checkpoint()
    return ctx.input_data


GATED = tf.create_workflow(id="gated").then(tf.create_step(id="gate", execute=_gate)).commit()
QUICK = tf.create_workflow(id="quick").then(tf.create_step(id="step", execute=_quick)).commit()


@attrs.define(eq=False)
class Collector:
    """A watcher without filters that keeps every ``run-status`` message."""

    workflow_id: str | None = None
    status: tf.RunStatus | None = None
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)

    def push(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.arrived.set()

    async def until(self, done: Callable[[list[dict[str, Any]]], bool]) -> None:
        while not done(self.messages):
            self.arrived = trio.Event()
            await self.arrived.wait()

    def statuses(self, run_id: str) -> list[str]:
        return [m["status"] for m in self.messages if m["runId"] == run_id]


@asynccontextmanager
async def two_processes(db: Path) -> AsyncIterator[tuple[tf.Runtime, tf.Runtime]]:
    """The watched runtime and another one on the same SQLite file."""
    here_storage, other_storage = tf.SqliteStorage(db), tf.SqliteStorage(db)
    try:
        async with (
            tf.open_runtime(storage=here_storage, workflows=[GATED, QUICK]) as here,
            tf.open_runtime(storage=other_storage, workflows=[GATED, QUICK]) as other,
        ):
            yield here, other
    finally:
        with trio.CancelScope(shield=True):
            await here_storage.aclose()
            await other_storage.aclose()


@asynccontextmanager
async def watching(runtime: tf.Runtime) -> AsyncIterator[tuple[RunWatch, Collector]]:
    watch = RunWatch(runtime, poll_min=0.01, poll_max=0.05)
    collector = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        await watch.add(collector)
        yield watch, collector
        nursery.cancel_scope.cancel()


async def test_a_change_to_a_run_older_than_the_newest_page_is_pushed(tmp_path: Path) -> None:
    async with two_processes(tmp_path / "runs.db") as (here, other):
        old = await other.create_run(GATED)
        assert (await old.start(input_data=None)).status == "suspended"
        for _ in range(_watch.POLL_LIMIT + 100):  # the old run is far below the first page
            await other.create_run(QUICK)
        async with watching(here) as (_, seen):
            resumed = await other.create_run(GATED, run_id=old.run_id)
            result = await resumed.resume(resume_data={"ok": True})
            assert result.status == "success"
            with trio.fail_after(GUARD):
                await seen.until(lambda _: "success" in seen.statuses(old.run_id))
            assert seen.statuses(old.run_id)[-1] == "success"
            assert [m["workflowId"] for m in seen.messages] == ["gated"] * len(seen.messages)


async def test_runs_created_and_finished_between_two_polls_are_all_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More new runs than one page holds: the new-run scan pages down to the runs it
    already knew."""
    monkeypatch.setattr(_watch, "POLL_LIMIT", 5)
    async with two_processes(tmp_path / "runs.db") as (here, other):
        for _ in range(7):
            await (await other.create_run(QUICK)).start(input_data=0)
        async with watching(here) as (watch, seen):
            async with watch._lock:  # no poll while the other process works
                finished = []
                for index in range(12):
                    run = await other.create_run(QUICK)
                    assert (await run.start(input_data=index)).status == "success"
                    finished.append(run.run_id)
            with trio.fail_after(GUARD):
                await seen.until(lambda _: all(seen.statuses(r) for r in finished))
            assert {r: seen.statuses(r) for r in finished} == {r: ["success"] for r in finished}
            # The seven runs that ended before the watch began are not news.
            assert {m["runId"] for m in seen.messages} == set(finished)


async def test_an_open_run_ending_elsewhere_is_pushed_once_with_its_final_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open run that leaves every open status between two polls (suspended, then
    resumed to success elsewhere) is found through its snapshot."""
    monkeypatch.setattr(_watch, "POLL_LIMIT", 3)
    async with two_processes(tmp_path / "runs.db") as (here, other):
        suspended = []
        for _ in range(5):
            run = await other.create_run(GATED)
            await run.start(input_data=None)
            suspended.append(run.run_id)
        for _ in range(10):
            await other.create_run(QUICK)  # pending: open too
        async with watching(here) as (watch, seen):
            async with watch._lock:
                for run_id in suspended:
                    resumed = await other.create_run(GATED, run_id=run_id)
                    await resumed.resume(resume_data=run_id)
            with trio.fail_after(GUARD):
                await seen.until(lambda _: all(seen.statuses(r) for r in suspended))
            await watch.poll()
            assert {r: seen.statuses(r) for r in suspended} == {r: ["success"] for r in suspended}


@attrs.define
class _Rows:
    """A stand-in runtime whose ``list_runs`` serves rows as storage would (newest first,
    filtered, paged), with creation times chosen by the test."""

    rows: list[tf.RunInfo] = attrs.field(factory=list)
    queries: int = 0

    @property
    def storage(self) -> _Rows:
        return self

    def add(self, run_id: str, status: str, created_at: int, updated_at: int = 0) -> None:
        info = tf.RunInfo(
            run_id=run_id,
            workflow_id="w",
            resource_id=None,
            status=tf.RunStatus(status),
            created_at=created_at,
            updated_at=max(created_at, updated_at),
        )
        kept = [r for r in self.rows if r.run_id != run_id]
        at = next((i for i, r in enumerate(self.rows) if r.run_id == run_id), len(kept))
        self.rows = [*kept[:at], info, *kept[at:]]  # an update keeps the insertion order

    async def list_runs(
        self, *, status: tf.RunStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[tf.RunInfo]:
        await trio.lowlevel.checkpoint()
        self.queries += 1
        order = {r.run_id: i for i, r in enumerate(self.rows)}
        found = [r for r in self.rows if status is None or r.status == status]
        found.sort(key=lambda r: (r.created_at, order[r.run_id]), reverse=True)
        return found[offset : offset + limit]

    async def load_snapshot(self, run_id: str) -> tf.RunInfo | None:
        """The row stands in for the snapshot (the fields the watch reads)."""
        await trio.lowlevel.checkpoint()
        return next((r for r in self.rows if r.run_id == run_id), None)


async def test_the_watch_forgets_old_finished_runs_and_never_reports_them_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watch's memory is the open and the recent runs, not the whole history; a
    forgotten run met again on the first page is not news."""
    monkeypatch.setattr(_watch, "POLL_LIMIT", 50)
    day = 86_400_000
    now = _watch.now_ms()
    rows = _Rows()
    rows.add("open", "suspended", now - 10 * day)
    for index in range(2000):  # a minute apart, the newest over a week old
        rows.add(f"old-{index}", "success", now - 10 * day + index * 60_000)
    watch = RunWatch(rows, poll_min=0.01, poll_max=0.01)  # type: ignore[arg-type]
    seen = Collector()
    await watch.add(seen)
    # One page read, and forgotten but for the newest (within the new-run margin).
    assert set(watch._known) == {"old-1999", "open"}
    rows.add("new", "success", now)
    rows.add("open", "success", now - 10 * day, updated_at=now)
    for _ in range(3):
        await watch.poll()
    assert [(m["runId"], m["status"]) for m in seen.messages] == [
        ("new", "success"),
        ("open", "success"),
    ]
    assert set(watch._known) == {"new"}
