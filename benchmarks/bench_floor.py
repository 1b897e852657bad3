"""The raw-trio floor: what the engine's scenarios cost with no engine at all.

Each floor is the same work as an engine scenario, written by hand in plain trio: trivial
async steps, one frozen attrs event per step sent over a trio memory channel to one reader
task that counts them.

- chain: a hand-written loop of 100 inline steps sending one event each -> us per step;
- parallel: a nursery of 100 tasks each running one step and sending one event
  -> us per branch;
- foreach: 10,000 items through a sliding window (`trio.CapacityLimiter`) of concurrency 1
  and 16, each item a task that runs the step and sends one event; outputs kept in input
  order -> us per item.

The `*_floor_us` coroutines are exported so engine scenarios measure their floor in the same
process, right beside their own figure.
"""

from __future__ import annotations

import math
from typing import Any

import _harness
import attrs
import trio

CHAIN_STEPS = 100
PARALLEL_BRANCHES = 100
FOREACH_ITEMS = 10_000
FOREACH_CONCURRENCIES = (1, 16)


@attrs.frozen
class StepEvent:
    """The one event a floor step emits (the engine emits a chunk per step)."""

    step: int
    output: int


# Deliberately checkpoint-free (flake8-async ASYNC124/910): the trivial step measured.
async def trivial_step(value: int) -> int:
    return value + 1


async def _count_events(receive: trio.MemoryReceiveChannel[StepEvent], counter: list[int]) -> None:
    async with receive:
        async for _event in receive:
            counter[0] += 1


async def chain_once(n_steps: int = CHAIN_STEPS) -> int:
    """One run of the chain floor; returns the final output (== n_steps)."""
    send, receive = trio.open_memory_channel[StepEvent](math.inf)
    counter = [0]
    value = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_count_events, receive, counter)
        async with send:
            for i in range(n_steps):
                value = await trivial_step(value)
                await send.send(StepEvent(i, value))
    if counter[0] != n_steps or value != n_steps:
        raise RuntimeError(f"chain floor: {counter[0]} events, output {value}")
    return value


async def parallel_once(n_branches: int = PARALLEL_BRANCHES) -> dict[int, int]:
    """One run of the parallel floor; returns {branch: output}."""
    send, receive = trio.open_memory_channel[StepEvent](math.inf)
    counter = [0]
    outputs: dict[int, int] = {}

    async def branch(i: int) -> None:
        outputs[i] = await trivial_step(i)
        await send.send(StepEvent(i, outputs[i]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_count_events, receive, counter)
        async with send, trio.open_nursery() as branches:
            for i in range(n_branches):
                branches.start_soon(branch, i)
    if counter[0] != n_branches or len(outputs) != n_branches:
        raise RuntimeError(f"parallel floor: {counter[0]} events, {len(outputs)} outputs")
    return outputs


async def foreach_once(items: list[int], concurrency: int) -> list[int]:
    """One run of the foreach floor: a sliding window of `concurrency` item tasks."""
    send, receive = trio.open_memory_channel[StepEvent](math.inf)
    counter = [0]
    outputs: list[Any] = [None] * len(items)
    limiter = trio.CapacityLimiter(concurrency)

    async def item(i: int, value: int) -> None:
        try:
            outputs[i] = await trivial_step(value)
            await send.send(StepEvent(i, outputs[i]))
        finally:
            limiter.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_count_events, receive, counter)
        async with send, trio.open_nursery() as window:
            for i, value in enumerate(items):
                await limiter.acquire_on_behalf_of(i)
                window.start_soon(item, i, value)
    if counter[0] != len(items) or outputs != [v + 1 for v in items]:
        raise RuntimeError(f"foreach floor: {counter[0]} events, wrong outputs")
    return outputs


def foreach_items(quick: bool) -> int:
    """Items per foreach run: the issue's 10,000, or a few hundred for a smoke test."""
    return 300 if quick else FOREACH_ITEMS


def repeat_count(quick: bool, full: int) -> int:
    """Timed repeats: `full`, or 2 for a smoke test."""
    return 2 if quick else full


async def chain_floor_us(n_steps: int = CHAIN_STEPS, *, repeats: int = 30) -> float:
    """Median us per step of the chain floor."""
    timing = await _harness.time_async(lambda: chain_once(n_steps), repeats=repeats)
    return timing.per(n_steps)[0]


async def parallel_floor_us(n_branches: int = PARALLEL_BRANCHES, *, repeats: int = 30) -> float:
    """Median us per branch of the parallel floor."""
    timing = await _harness.time_async(lambda: parallel_once(n_branches), repeats=repeats)
    return timing.per(n_branches)[0]


async def foreach_floor_us(
    n_items: int = FOREACH_ITEMS, concurrency: int = 1, *, repeats: int = 5
) -> float:
    """Median us per item of the foreach floor at `concurrency`."""
    items = list(range(n_items))
    timing = await _harness.time_async(lambda: foreach_once(items, concurrency), repeats=repeats)
    return timing.per(n_items)[0]


async def main(quick: bool) -> list[dict[str, Any]]:
    n_items = foreach_items(quick)
    rows = [
        _harness.report(
            f"floor-chain-{CHAIN_STEPS}",
            {
                "steps": CHAIN_STEPS,
                "floor_us_per_step": await chain_floor_us(repeats=repeat_count(quick, 30)),
                "peak_rss_mb": _harness.peak_rss_mb(),
            },
        ),
        _harness.report(
            f"floor-parallel-{PARALLEL_BRANCHES}",
            {
                "branches": PARALLEL_BRANCHES,
                "floor_us_per_branch": await parallel_floor_us(repeats=repeat_count(quick, 30)),
                "peak_rss_mb": _harness.peak_rss_mb(),
            },
        ),
    ]
    for concurrency in FOREACH_CONCURRENCIES:
        us = await foreach_floor_us(n_items, concurrency, repeats=repeat_count(quick, 5))
        rows.append(
            _harness.report(
                f"floor-foreach-c{concurrency}",
                {
                    "items": n_items,
                    "concurrency": concurrency,
                    "floor_us_per_item": us,
                    "peak_rss_mb": _harness.peak_rss_mb(),
                },
            )
        )
    return rows


if __name__ == "__main__":
    _harness.cli(globals())
