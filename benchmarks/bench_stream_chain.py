"""Engine scenario: a chain of 100 trivial steps run with `run.stream()`, one reader.

Each repeat calls `await run.stream(input_data=0)` on a fresh run and iterates the returned
`RunOutput` to its end (`workflow-finish`), counting chunks. The figure is events per
second: chunks delivered to the reader per second of wall time, timed from the `stream()`
call to the reader's end (202 chunks per run: `workflow-start`, a start and a result per
step, `workflow-finish`). `steps_per_s` is the same wall time per step.

Beside it, the raw-trio chain floor of bench_floor.py measured in the same process: 100
inline trivial steps each sending one frozen attrs event over a memory channel to one reader
task, timed from the start to the reader's end; its events per second are its steps per
second (one event per step). Goal: >= 120,000 events/s.
"""

from __future__ import annotations

from typing import Any

import _harness
import bench_chain
import bench_floor

import trioflow as tf

STEPS = bench_floor.CHAIN_STEPS
CHUNKS = 2 * STEPS + 2
GOAL_EVENTS_PER_S = 120_000.0
#: Issue 15: at least this share of the raw-trio floor's events/s.
GOAL_SHARE_OF_FLOOR = 0.69


async def floor_events_per_s(*, repeats: int) -> float:
    """Median events per second of the chain floor (one event per step)."""
    timing = await _harness.time_async(lambda: bench_floor.chain_once(STEPS), repeats=repeats)
    return timing.rate(STEPS)[0]


async def time_streamed_runs(
    runtime: tf.Runtime, workflow: tf.Workflow, *, repeats: int, warmup: int = 2
) -> _harness.Timing:
    """Time `stream()` + reading every chunk, on fresh runs; check each run afterwards."""
    outputs: dict[str, tuple[tf.RunOutput, int]] = {}

    async def setup() -> tf.Run:
        return await workflow.create_run()

    async def stream_and_read(run: tf.Run) -> None:
        out = await run.stream(input_data=0)
        received = 0
        async for _chunk in out:
            received += 1
        outputs[run.run_id] = (out, received)

    async def teardown(run: tf.Run) -> None:
        out, received = outputs.pop(run.run_id)
        result = await out.result()
        if result.status != "success" or result.result != STEPS or received != CHUNKS:
            raise RuntimeError(
                f"{workflow.id}: run ended {result.status} with {result.result!r}, "
                f"reader got {received} chunks (expected {CHUNKS})"
            )
        await runtime.delete_run(run.run_id)

    return await _harness.time_async(
        stream_and_read, repeats=repeats, warmup=warmup, setup=setup, teardown=teardown
    )


async def main(quick: bool) -> dict[str, Any]:
    floor = await floor_events_per_s(repeats=bench_floor.repeat_count(quick, 30))
    async with tf.open_runtime() as runtime:
        timing = await time_streamed_runs(
            runtime, bench_chain.build_workflow(STEPS), repeats=bench_floor.repeat_count(quick, 30)
        )
    events_per_s = timing.rate(CHUNKS)[0]
    return _harness.rate_beside_floor(
        f"stream-chain-{STEPS}",
        unit="events",
        timing=timing,
        units=CHUNKS,
        floor_per_s=floor,
        goal_per_s=GOAL_EVENTS_PER_S,
        steps=STEPS,
        chunks_per_run=CHUNKS,
        steps_per_s=timing.rate(STEPS)[0],
        # Issue 15's goal: a share of the floor's rate, not a rate.
        share_of_floor=events_per_s / floor if floor > 0 else None,
        goal_share_of_floor=GOAL_SHARE_OF_FLOOR,
        meets_share_goal=floor > 0 and events_per_s / floor >= GOAL_SHARE_OF_FLOOR,
    )


if __name__ == "__main__":
    _harness.cli(globals())
