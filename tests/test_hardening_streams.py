"""Issue 12, streaming and the event log: regression tests for what an adversarial pass
found (SPEC §3.0, §3.1, §0 "strict JSON everywhere").

- A subscriber behind the in-memory window while a storage write is in flight reads every
  chunk (chunks stay in memory until their write committed), and a storage that lost
  chunks is a clear StorageError, never an IndexError.
- The chunks waiting for storage are bounded: ``writer.write`` waits at the bound and
  resumes once storage commits.
- ``writer.write``/``writer.custom`` refuse data that is not strict JSON at the call.
- A process that is not executing the run reads what storage holds (``observe_stream``
  with ``follow=False``), and a ``close_on_suspend=False`` stream follows a resume made by
  another process to the end.

Storage writes are held back deterministically by :class:`GatedStorage` (no sleeps).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow import bridge
from trioflow._broadcast import (
    CHUNK_OVERHEAD,
    DEFAULT_WINDOW,
    FLUSH_THRESHOLD,
    MAX_UNSTORED_BYTES,
    MAX_UNSTORED_CHUNKS,
)
from trioflow._core import _chunks as ch
from trioflow._core._chunks import Chunk
from trioflow._core._json import JsonValueError
from trioflow._core._model import RunInfo, RunSnapshot
from trioflow._core._status import RunStatus

# --------------------------------------------------------------------------- helpers


class GatedStorage:
    """Delegates to ``inner``; while the gate is closed, ``save_snapshot`` and
    ``append_events`` wait until it opens (a storage write in flight for as long as the
    test wants)."""

    def __init__(self, inner: Any, *, durable: bool | None = None) -> None:
        self.inner = inner
        self.durable = bool(inner.durable) if durable is None else durable
        self._allowance = math.inf  # writes that may pass before the gate blocks
        self._changed = trio.Event()
        self.waiting = 0
        self.lose_reads = False

    def close_gate(self) -> None:
        self._allowance = 0

    def open_gate(self) -> None:
        self.let_through(math.inf)

    def let_through(self, writes: float) -> None:
        """Let ``writes`` more writes pass, then block again."""
        self._allowance += writes
        self._changed.set()
        self._changed = trio.Event()

    async def _gate(self) -> None:
        while self._allowance <= 0:
            self.waiting += 1
            try:
                await self._changed.wait()
            finally:
                self.waiting -= 1
        self._allowance -= 1
        await trio.lowlevel.checkpoint()

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        return bool(await self.inner.create_run(snapshot))

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        return await self.inner.load_snapshot(run_id)  # type: ignore[no-any-return]

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        await self._gate()
        return bool(
            await self.inner.save_snapshot(snapshot, events, expected_status=expected_status)
        )

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        await self._gate()
        await self.inner.append_events(run_id, events)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        if self.lose_reads:
            await trio.lowlevel.checkpoint()
            return []
        return await self.inner.read_events(  # type: ignore[no-any-return]
            run_id, from_seq=from_seq, limit=limit
        )

    async def last_seq(self, run_id: str) -> int:
        return int(await self.inner.last_seq(run_id))

    async def list_runs(self, **kwargs: Any) -> list[RunInfo]:
        return await self.inner.list_runs(**kwargs)  # type: ignore[no-any-return]

    async def delete_run(self, run_id: str) -> bool:
        return bool(await self.inner.delete_run(run_id))

    async def aclose(self) -> None:
        await self.inner.aclose()


def chain(wf_id: str, *steps: tf.Step) -> tf.Workflow:
    wf = tf.create_workflow(id=wf_id)
    for step in steps:
        wf = wf.then(step)
    return wf.commit()


async def collect(source: AsyncIterable[Any]) -> list[Any]:
    return [item async for item in source]


def outputs_of(chunks: Sequence[Any]) -> list[Any]:
    return [c.payload.output for c in chunks if isinstance(c, tf.WorkflowStepOutput)]


# ------------------------------------------------- 1. behind the window, write in flight


async def test_a_subscriber_behind_the_window_reads_chunks_whose_write_is_in_flight() -> None:
    # The flusher's first write (about FLUSH_THRESHOLD chunks) is held while the step
    # publishes more than a whole window; then that write passes and the next one, the
    # whole rest in one batch, is held. Before the fix the chunks of that batch left memory
    # when they were taken, storage did not hold them yet, and a subscriber from seq 1 got
    # `IndexError: pop from an empty deque` (Subscription._next_raw).
    n = FLUSH_THRESHOLD + DEFAULT_WINDOW + 1000
    storage = GatedStorage(tf.MemoryStorage())
    written = trio.Event()
    finish = trio.Event()

    async def talk(ctx: tf.StepContext) -> int:
        storage.close_gate()  # the run is claimed: from now on every write waits
        for i in range(n):
            await ctx.writer.write(i)
        written.set()
        await finish.wait()
        return n

    async with tf.open_runtime(storage=storage) as rt:
        wf = chain("talk", tf.create_step(id="talk", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        out = await run.stream(input_data=None)
        with trio.fail_after(30):
            await written.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert storage.waiting == 1  # the flusher's first write
        storage.let_through(1)
        await trio.testing.wait_all_tasks_blocked()
        assert storage.waiting == 1  # its second write: the rest, in flight
        assert run._hub.log.statistics().next_seq - 1 == n + 2
        chunks = await collect(run.observe_stream(follow=False))
        assert [c.seq for c in chunks] == list(range(1, n + 3))
        assert outputs_of(chunks) == list(range(n))
        storage.open_gate()
        finish.set()
        assert (await out.result()).status == "success"
        everything = await collect(run.observe_stream())
        assert [c.seq for c in everything] == list(range(1, n + 5))


async def test_storage_missing_chunks_it_must_hold_is_a_storage_error() -> None:
    n = 3 * DEFAULT_WINDOW
    storage = GatedStorage(tf.MemoryStorage())

    async def talk(ctx: tf.StepContext) -> int:
        for i in range(n):
            await ctx.writer.write(i)
        return n

    async with tf.open_runtime(storage=storage) as rt:
        wf = chain("talk", tf.create_step(id="talk", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        assert (await run.start(input_data=None)).status == "success"
        storage.lose_reads = True
        sub = run.observe_stream()
        with pytest.raises(tf.StorageError, match=r"seq 1\b"):
            await collect(sub)


# ------------------------------------------------------------- 2. memory bound, backpressure


async def test_writer_waits_at_the_unstored_bound_and_resumes_when_storage_commits() -> None:
    n = MAX_UNSTORED_CHUNKS + 2 * FLUSH_THRESHOLD
    storage = GatedStorage(tf.MemoryStorage())
    progress: list[int] = []
    peak: list[int] = [0]
    holder: list[tf.Run] = []

    async def talk(ctx: tf.StepContext) -> int:
        storage.close_gate()
        log = holder[0]._hub.log
        for i in range(n):
            await ctx.writer.write(i)
            progress.append(i)
            peak[0] = max(peak[0], log.statistics().unflushed)
        return n

    async with tf.open_runtime(storage=storage) as rt:
        wf = chain("talk", tf.create_step(id="talk", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        holder.append(run)
        out = await run.stream(input_data=None)
        await trio.testing.wait_all_tasks_blocked()
        stats = run._hub.log.statistics()
        # The writer is blocked at the bound, the flusher's first write in flight.
        assert storage.waiting == 1
        assert stats.unflushed == MAX_UNSTORED_CHUNKS
        assert len(progress) == MAX_UNSTORED_CHUNKS - 2  # workflow-start, step start
        assert stats.in_memory == MAX_UNSTORED_CHUNKS
        before = len(progress)
        storage.let_through(1)  # that write commits: room again
        await trio.testing.wait_all_tasks_blocked()
        assert len(progress) > before
        assert storage.waiting == 1  # the next write, in flight
        assert run._hub.log.statistics().unflushed <= MAX_UNSTORED_CHUNKS
        storage.open_gate()
        with trio.fail_after(30):
            result = await out.result()
        assert result.status == "success"
        assert progress == list(range(n))
        assert peak[0] <= MAX_UNSTORED_CHUNKS
        chunks = await collect(run.observe_stream())
        assert outputs_of(chunks) == list(range(n))


async def test_writer_waits_at_the_unstored_byte_bound() -> None:
    big = "x" * (1024 * 1024)
    storage = GatedStorage(tf.MemoryStorage())
    progress: list[int] = []

    async def talk(ctx: tf.StepContext) -> int:
        storage.close_gate()
        for i in range(40):
            await ctx.writer.custom("data-big", big)
            progress.append(i)
        return 40

    async with tf.open_runtime(storage=storage) as rt:
        wf = chain("big", tf.create_step(id="big", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        out = await run.stream(input_data=None)
        await trio.testing.wait_all_tasks_blocked()
        assert storage.waiting == 1
        stats = run._hub.log.statistics()
        assert len(progress) == 16  # 16 chunks of 1 MiB (and overheads) fill 16 MiB
        assert stats.unstored_bytes <= MAX_UNSTORED_BYTES + len(big) + CHUNK_OVERHEAD
        storage.open_gate()
        with trio.fail_after(30):
            assert (await out.result()).status == "success"
        assert progress == list(range(40))
        chunks = await collect(run.observe_stream())
        assert len([c for c in chunks if isinstance(c, tf.DataChunk)]) == 40


# ------------------------------------------------------------------- 3. strict JSON writes


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def cycle() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


BAD_VALUES = {
    "object": object(),
    "bytes": b"raw",
    "nan": math.nan,
    "infinity": {"x": [math.inf]},
    "cycle": cycle(),
    "deep": deep(150),
    "surrogate": {"text": "\ud800"},
}


@pytest.mark.parametrize("how", ["write", "custom"])
async def test_writer_refuses_values_that_are_not_strict_json_at_the_call(
    tmp_path: Path, how: str
) -> None:
    refused: dict[str, str] = {}

    async def talk(ctx: tf.StepContext) -> str:
        for name, value in BAD_VALUES.items():
            try:
                if how == "write":
                    await ctx.writer.write(value)
                else:
                    await ctx.writer.custom("data-bad", value)
            except JsonValueError as exc:
                refused[name] = str(exc)
        await ctx.writer.write({"fine": 1})
        return "done"

    async with tf.SqliteStorage(tmp_path / "runs.db") as storage:
        async with tf.open_runtime(storage=storage) as rt:
            wf = chain("bad", tf.create_step(id="bad", execute=talk))
            rt.register(wf)
            run = await wf.create_run()
            result = await run.start(input_data=None)
            assert result.status == "success", result.error
            assert set(refused) == set(BAD_VALUES)
            assert "x[0]" in refused["infinity"]
            assert "text" in refused["surrogate"]
            chunks = await collect(run.observe_stream())
            assert [c.type for c in chunks] == [
                "workflow-start",
                "workflow-step-start",
                "workflow-step-output",
                "workflow-step-result",
                "workflow-finish",
            ]
            stored = await storage.read_events(run.run_id)
            assert [c.seq for c in stored] == [1, 2, 3, 4, 5]


async def test_an_uncaught_bad_write_fails_the_step_and_the_run_ends_failed() -> None:
    async def talk(ctx: tf.StepContext) -> str:
        await ctx.writer.write({"n": math.nan})
        return "never"

    async with tf.open_runtime() as rt:
        wf = chain("bad", tf.create_step(id="bad", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        out = await run.stream(input_data=None)
        chunks = await collect(out)
        result = await out.result()
        assert result.status == "failed"
        assert isinstance(result.error, ValueError)
        assert "n" in str(result.error)
        assert chunks[-1].type == "workflow-finish"
        assert chunks[-1].payload.workflow_status == "failed"


# ------------------------------------------- 4./5. a process that is not executing the run


def talker(release: trio.Event, started: trio.Event, count: int = 10) -> tf.Workflow:
    async def talk(ctx: tf.StepContext) -> int:
        for i in range(count):
            await ctx.writer.write(i)
        started.set()
        await release.wait()
        return count

    return chain("talker", tf.create_step(id="talk", execute=talk))


async def test_follow_false_reads_what_another_process_stored_after_this_one_bound_the_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    release, started = trio.Event(), trio.Event()
    release.set()
    wf = talker(release, started)
    async with (
        tf.SqliteStorage(db) as here_storage,
        tf.SqliteStorage(db) as there_storage,
        tf.open_runtime(storage=here_storage) as here,
    ):
        here.register(wf)
        run_here = await wf.create_run()  # bound here while pending
        async with tf.open_runtime(storage=there_storage) as there:
            there.register(wf)
            run_there = await there.create_run(wf, run_id=run_here.run_id)
            assert (await run_there.start(input_data=None)).status == "success"
        chunks = await collect(run_here.observe_stream(follow=False))
        assert [c.seq for c in chunks] == list(range(1, 10 + 5))
        assert outputs_of(chunks) == list(range(10))
        assert chunks[-1].type == "workflow-finish"


async def test_follow_false_reads_every_stored_chunk_of_an_interrupted_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    release, started = trio.Event(), trio.Event()
    wf = talker(release, started)
    async with (
        tf.SqliteStorage(db) as here_storage,
        tf.SqliteStorage(db) as there_storage,
        tf.open_runtime(storage=here_storage) as here,
    ):
        here.register(wf)
        with trio.CancelScope() as there_scope:  # "the other process", interrupted
            async with tf.open_runtime(storage=there_storage):
                run_there = await wf.create_run()
                out = await run_there.stream(input_data=None)
                await started.wait()
                # Bound while the run executes there: the snapshot says last_seq 2.
                run_here = await here.create_run(wf, run_id=run_there.run_id)
                there_scope.cancel()
        assert out.status == "running"
        stored = await here_storage.read_events(run_here.run_id)
        last = len(stored)
        assert last >= 12  # the interruption stored every chunk published there
        chunks = await collect(run_here.observe_stream(follow=False))
        assert chunks == list(stored)
        assert outputs_of(chunks) == list(range(10))
        later = await collect(run_here.observe_stream(from_seq=4, follow=False))
        assert [c.seq for c in later] == list(range(4, last + 1))


def asker() -> tf.Workflow:
    async def ask(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            await ctx.writer.write("asking")
            return await ctx.suspend({"q": 1})
        await ctx.writer.write("answered")
        return {"answer": ctx.resume_data["a"]}

    async def after(ctx: tf.StepContext) -> Any:
        return {"final": ctx.input_data["answer"] + 1}

    return chain(
        "asker", tf.create_step(id="ask", execute=ask), tf.create_step(id="after", execute=after)
    )


async def test_a_stream_kept_open_across_a_suspension_follows_a_resume_in_another_process(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    wf = asker()
    async with (
        tf.SqliteStorage(db) as here_storage,
        tf.SqliteStorage(db) as there_storage,
        tf.open_runtime(storage=here_storage) as here,
    ):
        here.register(wf)
        run = await wf.create_run()
        out = await run.stream(input_data=None, close_on_suspend=False)
        received: list[Any] = []
        results: list[tf.WorkflowResult] = []

        async def read() -> None:
            async for chunk in out:
                received.append(chunk)

        async def result() -> None:
            results.append(await out.result())

        # Both end only once the other process's resume has finished the run (they
        # follow the stored log).
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(result)
                while run.status != "suspended":
                    await run._hub.wait_changed()
                async with tf.open_runtime(storage=there_storage) as there:
                    there.register(wf)
                    elsewhere = await there.create_run(wf, run_id=run.run_id)
                    resumed = await elsewhere.resume(resume_data={"a": 41})
                    assert resumed.status == "success"
        (final,) = results
        assert final.status == "success"
        assert final.result == {"final": 42}
        assert outputs_of(received) == ["asking", "answered"]
        assert received[-1].payload.workflow_status == "success"
        assert [c.type for c in received].count("workflow-start") == 1
        assert out.status == "success"


async def test_a_crashed_run_shows_every_chunk_stored_after_its_last_snapshot(
    tmp_path: Path,
) -> None:
    # What a SIGKILL leaves: the flusher stored chunks 4..12 mid-step, the last snapshot
    # says last_seq 3. Before the fix a reader bound afterwards showed 3 of the 12 chunks
    # (`trioflow events`), and nothing from --from-seq 4.
    run_id = "crashed"
    start = ch.WorkflowStart(
        run_id=run_id, seq=1, payload=ch.WorkflowStartPayload(workflow_id="talker")
    )
    outputs = [
        ch.WorkflowStepOutput(
            run_id=run_id, seq=seq, payload=ch.StepOutputPayload(output=seq, step_name="talk")
        )
        for seq in range(2, 13)
    ]
    wf = talker(trio.Event(), trio.Event())
    async with tf.SqliteStorage(tmp_path / "runs.db") as storage:
        snapshot = RunSnapshot(
            run_id=run_id, workflow_id="talker", status=RunStatus.RUNNING, last_seq=3
        )
        assert await storage.create_run(snapshot)
        assert await storage.save_snapshot(snapshot, [start, *outputs[:2]])
        await storage.append_events(run_id, outputs[2:])
        async with tf.open_runtime(storage=storage) as rt:
            run = await rt.create_run(wf, run_id=run_id)
            chunks = await collect(run.observe_stream(follow=False))
            assert [c.seq for c in chunks] == list(range(1, 13))
            later = await collect(run.observe_stream(from_seq=4, follow=False))
            assert [c.seq for c in later] == list(range(4, 13))
            assert run.last_seq == 12


async def test_a_bridge_subscriber_behind_the_window_reads_chunks_whose_write_is_in_flight() -> None:
    # The same moment as the first test, read through the websocket bridge: before the fix
    # the server answered `internal … (IndexError)` and every re-subscribe failed again.
    n = FLUSH_THRESHOLD + DEFAULT_WINDOW + 1000
    storage = GatedStorage(tf.MemoryStorage())
    written = trio.Event()
    finish = trio.Event()

    async def talk(ctx: tf.StepContext) -> int:
        storage.close_gate()
        for i in range(n):
            await ctx.writer.write(i)
        written.set()
        await finish.wait()
        return n

    async with tf.open_runtime(storage=storage) as rt, trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(bridge.serve, rt, port=0, tokens={"read-token": "read"})
        )
        wf = chain("talk", tf.create_step(id="talk", execute=talk))
        rt.register(wf)
        run = await wf.create_run()
        out = await run.stream(input_data=None)
        with trio.fail_after(30):
            await written.wait()
            await trio.testing.wait_all_tasks_blocked()
            storage.let_through(1)
            await trio.testing.wait_all_tasks_blocked()
            assert storage.waiting == 1  # the second flush, in flight
            got: list[Any] = []
            async with bridge.connect(f"ws://127.0.0.1:{port}", token="read-token") as client:
                async with client.subscribe(run.run_id) as sub:
                    async for chunk in sub:
                        got.append(chunk)
                        if chunk.seq == n + 2:
                            break
        assert [c.seq for c in got] == list(range(1, n + 3))
        assert outputs_of(got) == list(range(n))
        storage.open_gate()
        finish.set()
        assert (await out.result()).status == "success"
        nursery.cancel_scope.cancel()
