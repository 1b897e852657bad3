"""PostgreSQL streaming across processes (issue 8): notify -> deliver latency of custom
events, from a step in one process to `observe_stream` in another, beside raw
NOTIFY -> LISTEN measured in the same run.

One producer process (`--producer-child`) executes a run; this process follows it with
`run.observe_stream()` on its own `PostgresStorage` (woken by `NOTIFY trioflow_events`, then
reading the new rows). Each event carries `t = time.time()` taken just before
`await ctx.writer.write(...)`; the follower takes `time.time()` when the chunk comes out of
its subscription (one machine, one clock). The producer's storage records when each write
that carried events returned (`save_snapshot`/`append_events` returned: committed), so
the latency splits into write -> commit and commit -> deliver.

- `pg-notify-midstep`: one step writes M events (500; --quick: 40) 5 ms apart. Mid-step
  chunks are flushed after a 20 ms linger (`FLUSH_LINGER` in trioflow/_broadcast.py), so a
  flush carries the events of the last ~20 ms: end-to-end latency is linger + commit +
  notify + read, spread over 0..20 ms of linger.
- `pg-notify-snapshot`: a chain of S steps (100; --quick: 10), each sleeping 5 ms, writing
  one event and returning at once: the step's result snapshot carries the chunk, with no
  linger (write -> commit is the snapshot transaction).
- Floors (raw psycopg, two connections, a sender thread and a listening thread in this
  process, 5 ms apart, as many as M): `floor_notify_*`: `NOTIFY` (autocommit) carrying the
  send time -> `LISTEN` delivery; `floor_write_read_*`: a transaction `INSERT` + `NOTIFY`,
  the listener woken then `SELECT`ing the new row on a second connection (what a follower
  does) -> time since before the transaction.
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import _harness
import _pgbench
import trio

import trioflow as tf
from trioflow._broadcast import FLUSH_LINGER

MIDSTEP_EVENTS = 500
QUICK_MIDSTEP_EVENTS = 40
SNAPSHOT_STEPS = 100
QUICK_SNAPSHOT_STEPS = 10
SPACING = 0.005
TIMEOUT = 120.0
SCENARIOS = ["pg-notify-midstep", "pg-notify-snapshot"]

NOTES = (
    "Mid-step events (ctx.writer.write inside a running step) are stored after a "
    f"{FLUSH_LINGER * 1e3:.0f} ms linger (FLUSH_LINGER in trioflow/_broadcast.py): events "
    "written meanwhile share one transaction, so a burst costs one write, but the first "
    "event of a flush waits the whole linger. Chunks written with a snapshot (the step "
    "returns right after writing) skip the linger. e2e = follower's delivery time minus "
    "t taken before writer.write; commit = when the producer's storage call that carried "
    "the event returned (just after COMMIT: the thread hop back adds tens of us); "
    "commit_to_deliver = NOTIFY + follower wake-up + reading the rows + subscription. "
    "Same machine, same clock (time.time) in both processes."
)


# --- workflows ----------------------------------------------------------------------------


def build_midstep(events: int) -> tf.Workflow:
    async def talk(ctx: tf.StepContext) -> int:
        for i in range(events):
            await trio.sleep(SPACING)
            await ctx.writer.write({"i": i, "t": time.time()})
        return events

    step = tf.create_step(id="talk", execute=talk)
    return tf.create_workflow(id="pg-notify-midstep").then(step).commit()


def build_snapshot(steps: int) -> tf.Workflow:
    async def say_once(ctx: tf.StepContext) -> int:
        await trio.sleep(SPACING)
        i = int(ctx.input_data)
        await ctx.writer.write({"i": i, "t": time.time()})
        return i + 1

    workflow = tf.create_workflow(id="pg-notify-snapshot")
    for i in range(steps):
        workflow = workflow.then(tf.create_step(id=f"say{i}", execute=say_once))
    return workflow.commit()


def build(mode: str, count: int) -> tf.Workflow:
    return build_midstep(count) if mode == "midstep" else build_snapshot(count)


# --- producer child -------------------------------------------------------------------------


class TimedStorage(tf.PostgresStorage):
    """Records, per write carrying events, (first seq, last seq, time it returned)."""

    commits: list[tuple[int, int, float]]

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.commits = []

    async def save_snapshot(self, snapshot: Any, events: Sequence[Any] = (), **kw: Any) -> bool:
        written = await super().save_snapshot(snapshot, events, **kw)
        if written and events:
            self.commits.append((events[0].seq, events[-1].seq, time.time()))
        return written

    async def append_events(self, run_id: str, events: Sequence[Any]) -> None:
        await super().append_events(run_id, events)
        if events:
            self.commits.append((events[0].seq, events[-1].seq, time.time()))


async def producer_main(args: argparse.Namespace) -> None:
    workflow = build(args.mode, args.count)
    stdin = _pgbench.StdinLines()
    storage = TimedStorage(args.dsn)
    try:
        async with storage, tf.open_runtime(storage=storage, workflows=[workflow]):
            run = await workflow.create_run()
            print(f"run {run.run_id}", flush=True)
            if await stdin.readline() != "go":
                return
            result = await run.start(input_data=0)
            if result.status != "success" or result.result != args.count:
                raise RuntimeError(f"producer run ended {result.status}: {result.error!r}")
            print(f"commits {json.dumps(storage.commits)}", flush=True)
            await stdin.readline()
    finally:
        await stdin.aclose()


def producer_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--producer-child", action="store_true")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=["midstep", "snapshot"], required=True)
    parser.add_argument("--count", type=int, required=True)
    trio.run(producer_main, parser.parse_args(argv))


# --- follower (this process) ----------------------------------------------------------------


async def follow(
    dsn: str, mode: str, count: int, producer: _pgbench.Child
) -> list[tuple[int, float, float]]:
    """Follow the producer's run; (seq, t written, time delivered) per custom event."""
    workflow = build(mode, count)
    run_id = await trio.to_thread.run_sync(producer.expect, "run ")
    delivered: list[tuple[int, float, float]] = []
    async with (
        tf.PostgresStorage(dsn) as storage,
        tf.open_runtime(storage=storage, workflows=[workflow]) as runtime,
    ):
        follower = await runtime.create_run(workflow, run_id=run_id)
        with trio.fail_after(TIMEOUT):
            async with follower.observe_stream() as subscription, trio.open_nursery() as nursery:

                async def go() -> None:
                    await trio.sleep(0.2)  # the follower is waiting on the log by now
                    producer.send("go")

                nursery.start_soon(go)
                async for chunk in subscription:
                    now = time.time()
                    if isinstance(chunk, tf.WorkflowStepOutput):
                        delivered.append((chunk.seq, float(chunk.payload.output["t"]), now))
    if len(delivered) != count:
        raise RuntimeError(f"{mode}: {len(delivered)} of {count} events delivered")
    return delivered


def summarize(name: str, samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples_s]
    return {
        f"{name}_p50_ms": _pgbench.percentile(ms, 50),
        f"{name}_p99_ms": _pgbench.percentile(ms, 99),
        f"{name}_max_ms": max(ms),
        f"{name}_mean_ms": statistics.fmean(ms),
    }


def measure_engine(server: str, mode: str, count: int) -> dict[str, Any]:
    with _pgbench.fresh_database(server) as dsn:
        with _pgbench.children() as kids:
            producer = _pgbench.Child(
                [__file__, "--producer-child", "--dsn", dsn, "--mode", mode, "--count", str(count)]
            )
            kids.append(producer)
            delivered = trio.run(follow, dsn, mode, count, producer)
            commits: list[list[float]] = json.loads(producer.expect("commits "))
            producer.finish()
    committed_at: dict[int, float] = {}
    for first, last, at in commits:
        for seq in range(int(first), int(last) + 1):
            committed_at[seq] = at
    e2e = [now - t for _, t, now in delivered]
    to_commit = [committed_at[seq] - t for seq, t, _ in delivered]
    to_deliver = [now - committed_at[seq] for seq, _, now in delivered]
    flushes = len({committed_at[seq] for seq, _, _ in delivered})
    return {
        **summarize("e2e", e2e),
        **summarize("write_to_commit", to_commit),
        **summarize("commit_to_deliver", to_deliver),
        "events": count,
        "writes_carrying_events": flushes,
    }


# --- raw floor ------------------------------------------------------------------------------


def raw_floor(dsn: str, count: int, *, write_read: bool) -> list[float]:
    """NOTIFY -> LISTEN latencies (or INSERT+NOTIFY -> LISTEN+SELECT), seconds."""
    import psycopg

    with (
        psycopg.connect(dsn, autocommit=True) as sender,
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as reader,
    ):
        sender.execute("CREATE TABLE IF NOT EXISTS floor_log (i bigint PRIMARY KEY, t float8)")
        listener.execute("LISTEN floor")

        def send() -> None:
            for i in range(count):
                time.sleep(SPACING)
                t = time.time()
                if write_read:
                    with sender.transaction():
                        sender.execute("INSERT INTO floor_log VALUES (%s, %s)", (i, t))
                        sender.execute("NOTIFY floor")
                else:
                    sender.execute("SELECT pg_notify('floor', %s)", (repr(t),))

        latencies: list[float] = []
        seen = -1
        thread = threading.Thread(target=send)
        thread.start()
        try:
            pgconn = listener.pgconn
            deadline = time.monotonic() + TIMEOUT
            while len(latencies) < count and time.monotonic() < deadline:
                select.select([pgconn.socket], [], [], 1.0)
                pgconn.consume_input()
                while (note := pgconn.notifies()) is not None:
                    if not write_read:
                        latencies.append(time.time() - float(note.extra.decode()))
                        continue
                    rows = reader.execute(
                        "SELECT i, t FROM floor_log WHERE i > %s ORDER BY i", (seen,)
                    ).fetchall()
                    now = time.time()
                    for i, t in rows:
                        seen = i
                        latencies.append(now - t)
        finally:
            thread.join()
    if len(latencies) != count:
        raise RuntimeError(f"floor: {len(latencies)} of {count} notifications")
    return latencies


def measure(server: str, quick: bool) -> list[dict[str, Any]]:
    version = _pgbench.server_version(server)
    rows = []
    for mode, count in (
        ("midstep", QUICK_MIDSTEP_EVENTS if quick else MIDSTEP_EVENTS),
        ("snapshot", QUICK_SNAPSHOT_STEPS if quick else SNAPSHOT_STEPS),
    ):
        engine = measure_engine(server, mode, count)
        with _pgbench.fresh_database(server) as dsn:
            notify = raw_floor(dsn, count, write_read=False)
            write_read = raw_floor(dsn, count, write_read=True)
        rows.append(
            _harness.report(
                f"pg-notify-{mode}",
                {
                    **engine,
                    **summarize("floor_notify", notify),
                    **summarize("floor_write_read", write_read),
                    "spacing_ms": SPACING * 1e3,
                    "flush_linger_ms": FLUSH_LINGER * 1e3,
                    "notes": NOTES,
                    "postgres_version": version,
                    **_pgbench.machine(),
                    "peak_rss_mb": _harness.peak_rss_mb(),
                },
            )
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    return _pgbench.run_with_server(SCENARIOS, lambda server: measure(server, quick))


if __name__ == "__main__":
    if "--producer-child" in sys.argv[1:]:
        producer_child(sys.argv[1:])
    else:
        _harness.cli(globals())
