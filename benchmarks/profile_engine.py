"""Profile the issue-15 scenarios whose goal is not met (cProfile), grouped by layer.

Usage: python benchmarks/profile_engine.py [chain|parallel|stream|sqlite-latency|sqlite-1000]...
(no argument: all of them). For each scenario it runs the same workload as the benchmark
that prints its figure (bench_chain, bench_parallel, bench_stream_chain, bench_storage),
after a warm-up, under cProfile, and prints:

- self time per layer (the planner, the driver, the run/runtime glue, chunks and values,
  storage, trio, attrs/cattrs, json, sqlite3, threads, the rest), as a share of the
  profiled time and as microseconds per unit (step, branch, event, run) *scaled to the
  unprofiled wall time of the same repeats*, so the column adds up to the real figure;
- the top functions by self time and by cumulative time.

cProfile adds a fixed cost per Python call, so code with many small calls (trio's
scheduler, attrs __init__) is over-represented in the shares; the split is a guide to
where the time is, not a measurement of any part to the microsecond. This script prints
no benchmark figure and is not part of run_all.py.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_chain
import bench_parallel
import bench_storage
import trio

import trioflow as tf

LAYERS: list[tuple[str, str]] = [
    ("planner (trioflow/_core/_plan)", "trioflow/_core/_plan/"),
    ("driver (trioflow/_driver)", "trioflow/_driver/"),
    ("values, chunks, serde (trioflow/_core)", "trioflow/_core/"),
    ("storage (trioflow/storage)", "trioflow/storage/"),
    ("run, runtime, hub, broadcast, context (trioflow/*.py)", "trioflow/"),
    ("trio", "/trio/"),
    ("cattrs", "/cattrs/"),
    ("attrs (generated __init__ etc.)", "<attrs generated"),
    ("json", "/json/"),
    ("threading / queue", "/threading.py"),
    ("benchmark workload itself", "/benchmarks/"),
]


def layer_of(filename: str) -> str:
    if filename == "~":
        return "C builtins (sqlite3, json C, dict/list ops...)"
    for name, marker in LAYERS:
        if marker in filename:
            return name
    if filename.endswith("queue.py"):
        return "threading / queue"
    return "other Python"


def report(name: str, profile: cProfile.Profile, wall_s: float, units: int, unit: str) -> None:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    per_layer: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        per_layer[layer_of(filename)] += tottime
        total += tottime
    wall_per_unit_us = wall_s / units * 1e6
    print(f"\n=== {name}: unprofiled wall {wall_per_unit_us:.2f} us/{unit} ===")
    print(f"{'layer':58} {'share':>6} {'us/' + unit:>10}")
    for layer, seconds in sorted(per_layer.items(), key=lambda kv: -kv[1]):
        share = seconds / total
        print(f"{layer:58} {share:6.1%} {share * wall_per_unit_us:10.2f}")
    stream = sys.stdout
    print("\n-- top 25 by self time --")
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(25)
    print("-- top 30 by cumulative time --")
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(30)


async def measure(
    name: str,
    setup: Callable[[], Awaitable[Any]],
    work: Callable[[Any], Awaitable[None]],
    *,
    repeats: int,
    units_per_repeat: int,
    unit: str,
) -> None:
    for _ in range(5):
        await work(await setup())
    # Unprofiled wall time of the same work, to scale the profile's shares.
    args = [await setup() for _ in range(repeats)]
    t0 = time.perf_counter()
    for arg in args:
        await work(arg)
    wall = time.perf_counter() - t0
    args = [await setup() for _ in range(repeats)]
    profile = cProfile.Profile()
    profile.enable()
    for arg in args:
        await work(arg)
    profile.disable()
    report(name, profile, wall, repeats * units_per_repeat, unit)


async def memory_start(workflow: tf.Workflow, name: str, units: int, unit: str) -> None:
    async with tf.open_runtime():

        async def work(run: tf.Run) -> None:
            await run.start(input_data=0)

        await measure(
            name, workflow.create_run, work, repeats=200, units_per_repeat=units, unit=unit
        )


async def chain() -> None:
    await memory_start(bench_chain.build_workflow(100), "chain-100 (MemoryStorage)", 100, "step")


async def parallel() -> None:
    await memory_start(
        bench_parallel.build_workflow(100), "parallel-100 (MemoryStorage)", 100, "branch"
    )


async def stream() -> None:
    workflow = bench_chain.build_workflow(100)
    async with tf.open_runtime():

        async def work(run: tf.Run) -> None:
            out = await run.stream(input_data=0)
            async for _chunk in out:
                pass

        await measure(
            "stream-chain-100 (one reader)",
            workflow.create_run,
            work,
            repeats=200,
            units_per_repeat=202,
            unit="event",
        )


async def sqlite_latency() -> None:
    workflow = bench_storage.build_suspend_workflow()
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            tf.SqliteStorage(Path(tmp) / "runs.db") as storage,
            tf.open_runtime(storage=storage),
        ):
            suspended: list[tf.Run] = []

            async def start(run: tf.Run) -> None:
                await run.start(input_data=None)
                suspended.append(run)

            await measure(
                "sqlite start -> suspended",
                workflow.create_run,
                start,
                repeats=300,
                units_per_repeat=1,
                unit="run",
            )

            async def pop() -> tf.Run:
                await trio.lowlevel.checkpoint()
                return suspended.pop()

            async def resume(run: tf.Run) -> None:
                out = await run.resume_stream(resume_data=bench_storage.RESUME_DATA)
                async for _chunk in out:
                    pass

            await measure(
                "sqlite resume_stream -> success",
                pop,
                resume,
                repeats=300,
                units_per_repeat=1,
                unit="run",
            )


async def sqlite_1000() -> None:
    for label, use_db in (("MemoryStorage", False), ("SqliteStorage", True)):
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "runs.db" if use_db else None
            await bench_storage.start_at_once(50, db)  # warm the code paths
            wall = await bench_storage.start_at_once(1_000, db)
            profile = cProfile.Profile()
            profile.enable()
            await bench_storage.start_at_once(1_000, db)
            profile.disable()
            report(f"1,000 runs started at once ({label})", profile, wall, 1_000, "run")


SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    "chain": chain,
    "parallel": parallel,
    "stream": stream,
    "sqlite-latency": sqlite_latency,
    "sqlite-1000": sqlite_1000,
}


def main(argv: list[str]) -> None:
    names = argv or list(SCENARIOS)
    for name in names:
        trio.run(SCENARIOS[name])


if __name__ == "__main__":
    main(sys.argv[1:])
