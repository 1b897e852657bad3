"""Tiny helpers shared by the benchmark scripts in this directory.

- `time_async` times a trio async callable over N repeats (after warm-up runs) with
  `time.perf_counter` and returns a `Timing` (best, median, every sample).
- `peak_rss_mb` is this process's peak resident set size, from `resource.getrusage`.
- `report(name, figures)` prints one JSON object for one scenario on stdout;
  `beside_floor` (us per unit) and `rate_beside_floor` (units per second) build the row of
  an engine scenario next to its raw-trio floor.
- `cli(module_main)` is the `__main__` entry point of every `bench_*.py` script:
  `python benchmarks/bench_x.py [--quick]`.

Importing this module puts the repository root on `sys.path` (right after this directory),
so the scripts benchmark the checkout they live in even when trioflow is not installed.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

import trioflow as tf  # noqa: E402 - after the checkout is on sys.path


@attrs.frozen
class Timing:
    """Wall-clock samples of one measured operation, in seconds."""

    samples: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def per(self, units: int) -> tuple[float, float]:
        """(median, best) in microseconds per unit (step, branch, item)."""
        return self.median * 1e6 / units, self.best * 1e6 / units

    def rate(self, units: int) -> tuple[float, float]:
        """(median, best) throughput in units (events, deliveries) per second."""
        return units / self.median, units / self.best


async def time_async(
    fn: Callable[..., Awaitable[object]],
    *,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], Awaitable[Any]] | None = None,
    teardown: Callable[..., Awaitable[object]] | None = None,
) -> Timing:
    """Await `fn()` `warmup` times untimed, then `repeats` times timed.

    With `setup`, each call (warm-up and timed) is `fn(await setup())`, and `teardown`, if
    given, is awaited with the same value afterwards; only `fn` is timed. A full garbage
    collection runs before each call (untimed) so that one repeat does not pay for the
    garbage of the previous one.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    samples: list[float] = []
    await trio.lowlevel.checkpoint()
    for i in range(warmup + repeats):
        args: tuple[Any, ...] = () if setup is None else (await setup(),)
        gc.collect()
        t0 = time.perf_counter()
        await fn(*args)
        elapsed = time.perf_counter() - t0
        if teardown is not None:
            await teardown(*args)
        if i >= warmup:
            samples.append(elapsed)
    return Timing(tuple(samples))


def current_rss_mb() -> float | None:
    """This process's resident set size now, in MiB (Linux only; else None)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024), 1)


async def write_many(ctx: tf.StepContext) -> int:
    """A step that writes ``ctx.input_data`` chunks through its writer."""
    n: int = ctx.input_data
    for i in range(n):
        await ctx.writer.write(i)
    return n


def writer_workflow(workflow_id: str) -> tf.Workflow:
    """One :func:`write_many` step: the streaming benchmarks' workload."""
    step = tf.create_step(id="writer", execute=write_many)
    return tf.create_workflow(id=workflow_id).then(step).commit()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(peak / divisor, 1)


def _round(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 3)
    return value


def report(name: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    """Print one JSON object for scenario `name` on stdout (one line) and return it."""
    row: dict[str, Any] = {"scenario": name}
    row.update({key: _round(value) for key, value in figures.items()})
    print(json.dumps(row), flush=True)
    return row


def beside_floor(
    name: str,
    *,
    unit: str,
    timing: Timing,
    units: int,
    floor_us: float,
    goal_us: float,
    **extra: Any,
) -> dict[str, Any]:
    """The figures of an engine scenario, next to the raw-trio floor and the goal.

    `unit` names the figure: `us_per_<unit>` (median), `best_us_per_<unit>`,
    `floor_us_per_<unit>`, `goal_us`, `ratio_to_floor` (median / floor), `meets_goal`.
    """
    median_us, best_us = timing.per(units)
    figures: dict[str, Any] = {
        f"us_per_{unit}": median_us,
        f"best_us_per_{unit}": best_us,
        f"floor_us_per_{unit}": floor_us,
        "goal_us": goal_us,
        "ratio_to_floor": median_us / floor_us if floor_us > 0 else None,
        "meets_goal": median_us <= goal_us,
        "repeats": len(timing.samples),
    }
    figures.update(extra)
    figures["peak_rss_mb"] = peak_rss_mb()
    return report(name, figures)


def rate_beside_floor(
    name: str,
    *,
    unit: str,
    timing: Timing,
    units: int,
    floor_per_s: float,
    goal_per_s: float | None,
    **extra: Any,
) -> dict[str, Any]:
    """The figures of a throughput scenario, next to the raw-trio floor and the goal.

    `unit` names the figure: `<unit>_per_s` (from the median time), `best_<unit>_per_s`,
    `floor_<unit>_per_s`, `goal_<unit>_per_s` (None: no goal), `ratio_to_floor`
    (floor rate / median rate: like the us rows, the cost relative to the floor, so 1.5 is
    1.5x slower than the floor) and `meets_goal` (None without a goal).
    """
    median_rate, best_rate = timing.rate(units)
    figures: dict[str, Any] = {
        f"{unit}_per_s": median_rate,
        f"best_{unit}_per_s": best_rate,
        f"floor_{unit}_per_s": floor_per_s,
        f"goal_{unit}_per_s": goal_per_s,
        "ratio_to_floor": floor_per_s / median_rate if median_rate > 0 else None,
        "meets_goal": None if goal_per_s is None else median_rate >= goal_per_s,
        "repeats": len(timing.samples),
    }
    figures.update(extra)
    figures["peak_rss_mb"] = peak_rss_mb()
    return report(name, figures)


@attrs.frozen
class RunTimings:
    """`run.start()` timings of one workflow, and the median cost of `create_run()`."""

    start: Timing
    create_run_us: float


async def time_workflow_runs(
    runtime: Any,
    workflow: Any,
    *,
    input_data: Any,
    expected: Any,
    repeats: int,
    warmup: int = 2,
) -> RunTimings:
    """Time `await run.start(input_data=...)` on fresh runs of `workflow`.

    Each repeat creates a run (untimed here, reported apart as `create_run_us`), times its
    `start()`, checks that it ended `success` with `expected` as its result (a benchmark of a
    broken run means nothing), then deletes the run so storage does not grow between repeats.
    """
    create_samples: list[float] = []

    async def setup() -> Any:
        t0 = time.perf_counter()
        run = await workflow.create_run()
        create_samples.append(time.perf_counter() - t0)
        return run

    results: dict[str, Any] = {}

    async def start(run: Any) -> None:
        results[run.run_id] = await run.start(input_data=input_data)

    async def teardown(run: Any) -> None:
        result = results.pop(run.run_id)
        if result.status != "success" or result.result != expected:
            detail = result.error if result.status == "failed" else str(result.result)[:200]
            raise RuntimeError(f"{workflow.id}: run ended {result.status}: {detail!r}")
        await runtime.delete_run(run.run_id)

    timing = await time_async(start, repeats=repeats, warmup=warmup, setup=setup, teardown=teardown)
    return RunTimings(timing, statistics.median(create_samples) * 1e6)


ScenarioResult = dict[str, Any] | list[dict[str, Any]]


def run_scenario(module_globals: Mapping[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Run a scenario module's `async def main(quick)` (under trio) or `run(quick)`."""
    main = module_globals.get("main")
    if main is not None and inspect.iscoroutinefunction(main):
        result: ScenarioResult = trio.run(main, quick)
    elif "run" in module_globals:
        result = module_globals["run"](quick)
    else:
        raise TypeError("a scenario module defines `async def main(quick)` or `run(quick)`")
    return [result] if isinstance(result, dict) else list(result)


def cli(module_globals: Mapping[str, Any], argv: Iterable[str] | None = None) -> None:
    """Entry point of a `bench_*.py` script: parse `--quick` and run the scenario."""
    parser = argparse.ArgumentParser(description=module_globals.get("__doc__"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    args = parser.parse_args(None if argv is None else list(argv))
    run_scenario(module_globals, args.quick)
