"""A writer kept past its step while the execution's final snapshot is being saved.

The engine builds the ``workflow-finish`` chunk (its seq) before the final storage write
and publishes it once stored; a write through a kept writer in between must not take
that seq (two chunks with one seq, or a chunk after the finish).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._core._model import RunSnapshot
from trioflow._core._status import RunStatus


class FinalSaveGate(tf.MemoryStorage):
    """Blocks the first snapshot save with a final (not running) status until released."""

    def __init__(self) -> None:
        super().__init__()
        self.final_save_entered = trio.Event()
        self.release = trio.Event()

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Any] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        if snapshot.status is not RunStatus.RUNNING and not self.final_save_entered.is_set():
            self.final_save_entered.set()
            await self.release.wait()
        return await super().save_snapshot(
            snapshot, events, expected_status=expected_status, changed_steps=changed_steps
        )


@pytest.mark.parametrize("method", ["write", "custom"])
async def test_a_kept_writer_cannot_take_the_finish_seq_while_the_final_save_runs(
    method: str,
) -> None:
    storage = FinalSaveGate()
    outcome: dict[str, BaseException | None] = {}

    async def write_late(writer: tf.Writer) -> None:
        await storage.final_save_entered.wait()
        try:
            if method == "write":
                await writer.write("late")
            else:
                await writer.custom("data-late", 1)
        except RuntimeError as exc:
            outcome["error"] = exc
        else:
            outcome["error"] = None
        storage.release.set()

    async with trio.open_nursery() as background:

        async def hand_off(ctx: tf.StepContext) -> int:
            await ctx.writer.write("early")
            # A task in a nursery the step does not own keeps the writer past the step.
            background.start_soon(write_late, ctx.writer)
            return 1

        wf = tf.create_workflow(id="w").then(tf.create_step(id="hand", execute=hand_off)).commit()
        async with tf.open_runtime(storage=storage):
            run = await wf.create_run()
            result = await run.start()
            chunks = [c async for c in run.observe_stream(follow=False)]

    assert result.status == "success"
    error = outcome["error"]
    assert isinstance(error, RuntimeError)
    assert "'hand'" in str(error)
    seqs = [c.seq for c in chunks]
    assert seqs == list(range(1, len(chunks) + 1)), seqs
    assert chunks[-1].type == "workflow-finish"
    outputs = [c.payload.output for c in chunks if isinstance(c, tf.WorkflowStepOutput)]
    assert outputs == ["early"]
    assert not [c for c in chunks if c.type == "data-late"]
    stored = await storage.read_events(run.run_id)
    assert [c.seq for c in stored] == seqs

