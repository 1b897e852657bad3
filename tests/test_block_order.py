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
