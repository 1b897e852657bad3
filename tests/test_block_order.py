"""Parallel entries end the same way whatever order their branches complete in (issue 15:
the block's outcome is the planner's, from the branches' results, not trio's scheduling).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import trioflow as tf


@pytest.fixture
async def rt() -> AsyncIterator[Any]:
    async with tf.open_runtime() as runtime:
        yield runtime


def bailing_step(step_id: str, delay: float) -> Any:
    async def execute(ctx: tf.StepContext) -> Any:
        await trio.sleep(delay)
        return ctx.bail({"bailed_by": step_id})

    return tf.create_step(id=step_id, execute=execute)


@pytest.mark.parametrize("delays", [(1, 2), (2, 1)])
async def test_the_lowest_bailing_branch_ends_the_run(
    rt: Any, autojump_clock: Any, delays: tuple[float, float]
) -> None:
    wf = (
        tf.create_workflow(id="par-bail")
        .parallel([bailing_step("first", delays[0]), bailing_step("second", delays[1])])
        .commit()
    )
    run = await wf.create_run()
    result = await run.start(input_data={})
    assert result.status == "success"
    assert result.result == {"bailed_by": "first"}


class SlowDurableStorage(tf.storage.MemoryStorage):
    """A durable storage whose next write, once armed, waits: the moment a branch's
    progress write is in flight."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.writing = trio.Event()

    async def save_snapshot(self, snapshot: Any, *args: Any, **kwargs: Any) -> bool:
        if self.armed:
            self.armed = False
            self.writing.set()
            await trio.sleep(1)
        return await super().save_snapshot(snapshot, *args, **kwargs)


async def test_fail_fast_does_not_cancel_a_branch_whose_progress_is_being_written(
    autojump_clock: Any,
) -> None:
    storage = SlowDurableStorage()

    async def quick(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        storage.armed = True
        return {"q": 1}

    async def bad(ctx: tf.StepContext) -> Any:
        await storage.writing.wait()
        raise ValueError("bad")

    wf = (
        tf.create_workflow(id="par-ff-write")
        .parallel(
            [tf.create_step(id="quick", execute=quick), tf.create_step(id="bad", execute=bad)],
            fail_fast=True,
        )
        .commit()
    )
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        result = await run.start(input_data={})
    assert result.status == "failed"
    # quick succeeded (its end chunk said so) before bad failed: it stays a success.
    assert result.steps["quick"].status == "success"
    assert result.steps["quick"].output == {"q": 1}


@pytest.mark.parametrize("attempt", range(8))
async def test_fail_fast_cancels_a_sibling_that_had_not_started(
    rt: Any, autojump_clock: Any, attempt: int
) -> None:
    # trio starts the branches' tasks in a random order: a branch failing at its first
    # step may run before its sibling has started at all.
    done: list[str] = []

    async def bad(ctx: tf.StepContext) -> Any:
        raise ValueError("at once")

    async def slow(ctx: tf.StepContext) -> Any:
        await trio.sleep(100)
        done.append("slow")

    wf = (
        tf.create_workflow(id="par-ff-first")
        .parallel(
            [tf.create_step(id="bad", execute=bad), tf.create_step(id="slow", execute=slow)],
            fail_fast=True,
        )
        .commit()
    )
    run = await wf.create_run()
    result = await run.start(input_data={})
    assert result.status == "failed"
    assert done == []
    assert result.steps["slow"].status == "canceled"
