"""Engine scenario: a chain of 100 trivial steps (`.then` x 100) run with `run.start()`.

Figure: microseconds per step (median over repeats, after warm-up), beside the raw-trio
chain floor measured in the same process (see bench_floor.py). Goal: <= 20 us per step.
"""

from __future__ import annotations

from typing import Any

import _harness
import bench_floor

import trioflow as tf

STEPS = bench_floor.CHAIN_STEPS
GOAL_US = 20.0
#: Issue 15: at most this multiple of the raw-trio floor.
GOAL_RATIO_TO_FLOOR = 1.5


# Deliberately checkpoint-free (flake8-async ASYNC124/910): the trivial step measured.
async def add_one(ctx: tf.StepContext) -> int:
    return ctx.input_data + 1


def build_workflow(n_steps: int = STEPS) -> tf.Workflow:
    wf = tf.create_workflow(id=f"bench-chain-{n_steps}")
    for i in range(n_steps):
        wf = wf.then(tf.create_step(id=f"step_{i}", execute=add_one))
    return wf.commit()


async def main(quick: bool) -> dict[str, Any]:
    floor_us = await bench_floor.chain_floor_us(STEPS, repeats=bench_floor.repeat_count(quick, 30))
    async with tf.open_runtime() as runtime:
        timings = await _harness.time_workflow_runs(
            runtime,
            build_workflow(STEPS),
            input_data=0,
            expected=STEPS,
            repeats=bench_floor.repeat_count(quick, 20),
        )
    return _harness.beside_floor(
        f"chain-{STEPS}",
        unit="step",
        timing=timings.start,
        units=STEPS,
        floor_us=floor_us,
        goal_us=GOAL_US,
        steps=STEPS,
        create_run_us=timings.create_run_us,
        # Issue 15's goal: at most this many times the floor (ratio_to_floor).
        goal_ratio_to_floor=GOAL_RATIO_TO_FLOOR,
        meets_ratio_goal=timings.start.per(STEPS)[0] <= GOAL_RATIO_TO_FLOOR * floor_us,
    )


if __name__ == "__main__":
    _harness.cli(globals())
