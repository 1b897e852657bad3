"""Engine scenario: one step writing 10,000 chunks with `await ctx.writer.write(i)`, one reader.

Each repeat calls `await run.stream(input_data=n)` on a fresh run of a one-step workflow
whose step writes `n` chunks, and iterates the `RunOutput` to its end. The figure is events
per second: chunks delivered to the reader per second of wall time, from the `stream()` call
to the reader's end (n `workflow-step-output` chunks plus `workflow-start`, the step's
start and result, and `workflow-finish`). Mastra's reference: 154,000 events/s (no goal set).

Beside it, a raw-trio floor measured in the same process: one producer task sending `n`
frozen attrs events with `await send.send(...)` (a checkpoint per event, as `writer.write`
has) over an unbounded memory channel to one reader task that counts them, timed from the
start to the reader's end.
"""

from __future__ import annotations

import math
from typing import Any

import _harness
import attrs
import bench_floor
import trio

import trioflow as tf

WRITES = 10_000
QUICK_WRITES = 1_000
EXTRA_CHUNKS = 4  # workflow-start, step start, step result, workflow-finish
MASTRA_EVENTS_PER_S = 154_000.0


@attrs.frozen
class OutputEvent:
    """The one event the floor's producer sends per write."""

    output: int


async def floor_once(n_writes: int) -> int:
    """One run of the floor: `n_writes` events from a producer task to one reader."""
    send, receive = trio.open_memory_channel[OutputEvent](math.inf)
    received = 0

    async def produce() -> None:
        async with send:
            for i in range(n_writes):
                await send.send(OutputEvent(i))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receive:
            async for _event in receive:
                received += 1
    if received != n_writes:
        raise RuntimeError(f"writer floor: {received} events, expected {n_writes}")
    return received


async def floor_events_per_s(n_writes: int, *, repeats: int) -> float:
    timing = await _harness.time_async(lambda: floor_once(n_writes), repeats=repeats)
    return timing.rate(n_writes)[0]


def build_workflow() -> tf.Workflow:
    return _harness.writer_workflow("bench-stream-writer")


async def time_streamed_runs(
    runtime: tf.Runtime, workflow: tf.Workflow, n_writes: int, *, repeats: int, warmup: int = 1
) -> _harness.Timing:
    """Time `stream()` + reading every chunk, on fresh runs; check each run afterwards."""
    outputs: dict[str, tuple[tf.RunOutput, int]] = {}
    expected_chunks = n_writes + EXTRA_CHUNKS

    async def stream_and_read(run: tf.Run) -> None:
        out = await run.stream(input_data=n_writes)
        received = 0
        async for _chunk in out:
            received += 1
        outputs[run.run_id] = (out, received)

    async def teardown(run: tf.Run) -> None:
        out, received = outputs.pop(run.run_id)
        result = await out.result()
        if result.status != "success" or result.result != n_writes or received != expected_chunks:
            raise RuntimeError(
                f"{workflow.id}: run ended {result.status} with {result.result!r}, "
                f"reader got {received} chunks (expected {expected_chunks})"
            )
        await runtime.delete_run(run.run_id)

    return await _harness.time_async(
        stream_and_read,
        repeats=repeats,
        warmup=warmup,
        setup=workflow.create_run,
        teardown=teardown,
    )


async def main(quick: bool) -> dict[str, Any]:
    n_writes = QUICK_WRITES if quick else WRITES
    repeats = bench_floor.repeat_count(quick, 10)
    floor = await floor_events_per_s(n_writes, repeats=repeats)
    async with tf.open_runtime() as runtime:
        timing = await time_streamed_runs(runtime, build_workflow(), n_writes, repeats=repeats)
    return _harness.rate_beside_floor(
        "stream-writer",
        unit="events",
        timing=timing,
        units=n_writes + EXTRA_CHUNKS,
        floor_per_s=floor,
        goal_per_s=None,
        writes=n_writes,
        mastra_events_per_s=MASTRA_EVENTS_PER_S,
    )


if __name__ == "__main__":
    _harness.cli(globals())
