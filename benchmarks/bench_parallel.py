"""Engine scenario: 100 parallel branches (`.parallel([...100 trivial steps...])`).

Figure: microseconds per branch (median over repeats of `run.start()`, after warm-up),
beside the raw-trio floor of a nursery of 100 tasks measured in the same process (see
bench_floor.py). Goal: <= 20 us per branch.
"""

from __future__ import annotations

from typing import Any

import _harness
import bench_floor

import trioflow as tf

BRANCHES = bench_floor.PARALLEL_BRANCHES
GOAL_US = 20.0


# Deliberately checkpoint-free (flake8-async ASYNC124/910): the trivial step measured.
async def add_one(ctx: tf.StepContext) -> int:
    return ctx.input_data + 1


def build_workflow(n_branches: int = BRANCHES) -> tf.Workflow:
    steps = [tf.create_step(id=f"branch_{i}", execute=add_one) for i in range(n_branches)]
    return tf.create_workflow(id=f"bench-parallel-{n_branches}").parallel(steps).commit()


async def main(quick: bool) -> dict[str, Any]:
    floor_us = await bench_floor.parallel_floor_us(
        BRANCHES, repeats=bench_floor.repeat_count(quick, 30)
    )
    async with tf.open_runtime() as runtime:
        timings = await _harness.time_workflow_runs(
            runtime,
            build_workflow(BRANCHES),
            input_data=0,
            expected={f"branch_{i}": 1 for i in range(BRANCHES)},
            repeats=bench_floor.repeat_count(quick, 20),
        )
    return _harness.beside_floor(
        f"parallel-{BRANCHES}",
        unit="branch",
        timing=timings.start,
        units=BRANCHES,
        floor_us=floor_us,
        goal_us=GOAL_US,
        branches=BRANCHES,
        create_run_us=timings.create_run_us,
    )


if __name__ == "__main__":
    _harness.cli(globals())
