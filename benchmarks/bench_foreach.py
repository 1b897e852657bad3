"""Engine scenario: `.foreach(step, concurrency=c)` over 10,000 items, c = 1 and 16.

Figure: microseconds per item (median over repeats of `run.start()`, after warm-up),
beside the raw-trio sliding-window floor at the same concurrency measured in the same
process (see bench_floor.py). Goal: <= 10 us per item.
"""

from __future__ import annotations

from typing import Any

import _harness
import bench_floor

import trioflow as tf

GOAL_US = 10.0


# Deliberately checkpoint-free (flake8-async ASYNC124/910): the trivial step measured.
async def add_one(ctx: tf.StepContext) -> int:
    return ctx.input_data + 1


def build_workflow(concurrency: int) -> tf.Workflow:
    step = tf.create_step(id="item", execute=add_one)
    return (
        tf.create_workflow(id=f"bench-foreach-c{concurrency}")
        .foreach(step, concurrency=concurrency)
        .commit()
    )


async def main(quick: bool) -> list[dict[str, Any]]:
    n_items = bench_floor.foreach_items(quick)
    items = list(range(n_items))
    rows = []
    for concurrency in bench_floor.FOREACH_CONCURRENCIES:
        floor_us = await bench_floor.foreach_floor_us(
            n_items, concurrency, repeats=bench_floor.repeat_count(quick, 5)
        )
        async with tf.open_runtime() as runtime:
            timings = await _harness.time_workflow_runs(
                runtime,
                build_workflow(concurrency),
                input_data=items,
                expected=[item + 1 for item in items],
                repeats=bench_floor.repeat_count(quick, 5),
                warmup=1,
            )
        rows.append(
            _harness.beside_floor(
                f"foreach-c{concurrency}",
                unit="item",
                timing=timings.start,
                units=n_items,
                floor_us=floor_us,
                goal_us=GOAL_US,
                items=n_items,
                concurrency=concurrency,
                create_run_us=timings.create_run_us,
            )
        )
    return rows


if __name__ == "__main__":
    _harness.cli(globals())
