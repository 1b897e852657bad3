"""Engine scenario: fan-out of one run's chunks to 100 subscribers.

Each repeat creates a run of a one-step workflow whose step writes 2,000 chunks with
`await ctx.writer.write(i)`, starts 100 subscriber tasks each iterating
`run.observe_stream(from_seq=1)` (attached before the run starts, so they follow it live),
then starts the run with `run.start()`; the repeat ends when every subscriber has received
the run's terminal `workflow-finish`. The figure is deliveries per second: chunks received,
summed over all subscribers, per second of wall time from spawning the subscribers to the
last one's end (100 x 2,004 deliveries: the 2,000 outputs plus `workflow-start`, the step's
start and result, and `workflow-finish`).

Beside it, two raw-trio floors measured in the same process, each one producer task and 100
consumer tasks over the same span (spawning the consumers to the last one's end), the
producer checkpointing once per event as `writer.write` does (so consumers run while it
produces, as live subscribers do):

- `floor_deliveries_per_s` (the ratio's reference): each consumer has its own unbounded
  memory channel (a `MemoryReceiveChannel.clone()` would split the items between receivers,
  not broadcast them); for each of the 2,004 events the producer builds one frozen attrs
  event and `send_nowait`s it into all 100 channels; each consumer counts what its channel
  yields (every `receive` is a schedule point).
- `shared_log_floor_deliveries_per_s`, the cheapest honest fan-out written here: the
  producer appends each event to one shared list and sets a `trio.Event` (replaced per
  event); each consumer is a cursor into the list that, when woken, takes every event it has
  not seen yet (one schedule point per batch) and then waits again. This is the engine's own
  design with nothing else around it; no per-consumer buffers.

Goal: >= 250,000 deliveries/s.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import _harness
import attrs
import bench_floor
import trio

import trioflow as tf

SUBSCRIBERS = 100
WRITES = 2_000
QUICK_WRITES = 100
EXTRA_CHUNKS = 4  # workflow-start, step start, step result, workflow-finish
GOAL_DELIVERIES_PER_S = 250_000.0


@attrs.frozen
class Event:
    """The one event the floor's producer broadcasts per chunk."""

    seq: int
    output: int


async def floor_once(n_events: int, n_consumers: int = SUBSCRIBERS) -> int:
    """One run of the floor; returns the total number of deliveries."""
    counts = [0] * n_consumers
    channels = [trio.open_memory_channel[Event](math.inf) for _ in range(n_consumers)]

    async def consume(index: int, receive: trio.MemoryReceiveChannel[Event]) -> None:
        async with receive:
            async for _event in receive:
                counts[index] += 1

    async def produce() -> None:
        sends = [send for send, _ in channels]
        try:
            for seq in range(1, n_events + 1):
                event = Event(seq, seq)
                for send in sends:
                    send.send_nowait(event)
                await trio.lowlevel.checkpoint()
        finally:
            for send in sends:
                send.close()

    async with trio.open_nursery() as nursery:
        for index, (_, receive) in enumerate(channels):
            nursery.start_soon(consume, index, receive)
        nursery.start_soon(produce)
    total = sum(counts)
    if total != n_events * n_consumers:
        raise RuntimeError(f"fan-out floor: {total} deliveries, expected {n_events * n_consumers}")
    return total


async def shared_log_floor_once(n_events: int, n_consumers: int = SUBSCRIBERS) -> int:
    """One run of the shared-log floor; returns the total number of deliveries."""
    counts = [0] * n_consumers
    log: list[Event] = []
    wakeup = [trio.Event()]
    closed = [False]

    async def consume(index: int) -> None:
        position = 0
        while not (closed[0] and position == len(log)):
            end = len(log)
            if position == end:
                await wakeup[0].wait()
                continue
            for k in range(position, end):
                _event = log[k]
                counts[index] += 1
            position = end
            await trio.lowlevel.checkpoint()

    async def produce() -> None:
        try:
            for seq in range(1, n_events + 1):
                log.append(Event(seq, seq))
                wakeup[0].set()
                wakeup[0] = trio.Event()
                await trio.lowlevel.checkpoint()
        finally:
            closed[0] = True
            wakeup[0].set()

    async with trio.open_nursery() as nursery:
        for index in range(n_consumers):
            nursery.start_soon(consume, index)
        nursery.start_soon(produce)
    total = sum(counts)
    if total != n_events * n_consumers:
        raise RuntimeError(
            f"shared-log floor: {total} deliveries, expected {n_events * n_consumers}"
        )
    return total


async def floor_deliveries_per_s(
    n_events: int, *, repeats: int, once: Callable[[int], Awaitable[int]] = floor_once
) -> float:
    timing = await _harness.time_async(lambda: once(n_events), repeats=repeats)
    return timing.rate(n_events * SUBSCRIBERS)[0]


def build_workflow() -> tf.Workflow:
    return _harness.writer_workflow("bench-fanout")


async def time_fanout(
    runtime: tf.Runtime, workflow: tf.Workflow, n_writes: int, *, repeats: int, warmup: int = 1
) -> _harness.Timing:
    """Time 100 live subscribers of fresh runs; check each run and every count afterwards."""
    outcomes: dict[str, tuple[tf.WorkflowResult, list[int]]] = {}
    expected_each = n_writes + EXTRA_CHUNKS

    async def fan_out(run: tf.Run) -> None:
        counts = [0] * SUBSCRIBERS

        async def subscribe(index: int) -> None:
            async with run.observe_stream(from_seq=1) as subscription:
                async for _chunk in subscription:
                    counts[index] += 1

        async with trio.open_nursery() as nursery:
            for index in range(SUBSCRIBERS):
                nursery.start_soon(subscribe, index)
            result = await run.start(input_data=n_writes)
        outcomes[run.run_id] = (result, counts)

    async def teardown(run: tf.Run) -> None:
        result, counts = outcomes.pop(run.run_id)
        if result.status != "success" or result.result != n_writes:
            raise RuntimeError(f"{workflow.id}: run ended {result.status}: {result.result!r}")
        if counts != [expected_each] * SUBSCRIBERS:
            raise RuntimeError(
                f"{workflow.id}: subscribers got {sorted(set(counts))} chunks, "
                f"expected {expected_each} each"
            )
        await runtime.delete_run(run.run_id)

    return await _harness.time_async(
        fan_out, repeats=repeats, warmup=warmup, setup=workflow.create_run, teardown=teardown
    )


async def main(quick: bool) -> dict[str, Any]:
    n_writes = QUICK_WRITES if quick else WRITES
    n_events = n_writes + EXTRA_CHUNKS
    repeats = bench_floor.repeat_count(quick, 5)
    floor = await floor_deliveries_per_s(n_events, repeats=repeats)
    shared_log_floor = await floor_deliveries_per_s(
        n_events, repeats=repeats, once=shared_log_floor_once
    )
    async with tf.open_runtime() as runtime:
        timing = await time_fanout(runtime, build_workflow(), n_writes, repeats=repeats)
    return _harness.rate_beside_floor(
        f"fanout-{SUBSCRIBERS}",
        unit="deliveries",
        timing=timing,
        units=n_events * SUBSCRIBERS,
        floor_per_s=floor,
        goal_per_s=GOAL_DELIVERIES_PER_S,
        subscribers=SUBSCRIBERS,
        writes=n_writes,
        chunks_per_subscriber=n_events,
        shared_log_floor_deliveries_per_s=shared_log_floor,
        ratio_to_shared_log_floor=shared_log_floor / timing.rate(n_events * SUBSCRIBERS)[0],
    )


if __name__ == "__main__":
    _harness.cli(globals())
