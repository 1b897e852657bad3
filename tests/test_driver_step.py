"""The step driver (trioflow/_driver/_step.py) against a real runtime: what only the trio
side can show (cancellation at each await). The decisions are tested alone in
tests/test_plan_step.py.
"""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import wait_all_tasks_blocked

import trioflow as tf


async def chunks(run: tf.Run) -> list[tuple[str, Any]]:
    async with run.observe_stream(from_seq=1, follow=False) as sub:
        return [
            (chunk.type, getattr(getattr(chunk, "payload", None), "status", None))
            async for chunk in sub
        ]


async def test_cancel_during_retry_delay_publishes_the_canceled_result(
    autojump_clock: Any,
) -> None:
    """Regression: a step cancelled while waiting to retry was recorded ``canceled`` but
    its ``workflow-step-start`` had no ``workflow-step-result`` (a cancel during an
    attempt always had one)."""
    attempts: list[int] = []

    async def flaky(ctx: tf.StepContext) -> int:
        attempts.append(ctx.retry_count)
        raise ValueError("down")

    wf = (
        tf.create_workflow(id="retry-cancel", retry_config=tf.RetryConfig(attempts=3, delay=60))
        .then(tf.create_step(id="flaky", execute=flaky))
        .commit()
    )
    results: list[tf.WorkflowResult] = []
    async with tf.open_runtime():
        run = await wf.create_run()

        async def start() -> None:
            results.append(await run.start(input_data=1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await wait_all_tasks_blocked()
            assert attempts == [0]  # the first attempt failed; the retry waits its delay
            await run.cancel()
        log = await chunks(run)
    assert results[0].status == "canceled"
    assert results[0].steps["flaky"].status == "canceled"
    assert attempts == [0]
    assert log == [
        ("workflow-start", None),
        ("workflow-step-start", "running"),
        ("workflow-step-result", "canceled"),
        ("workflow-canceled", None),
        ("workflow-finish", None),
    ]
