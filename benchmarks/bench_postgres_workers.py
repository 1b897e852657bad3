"""PostgreSQL workers (issue 8): runs/s completed by 1, 2 and 4 worker processes sharing one
PostgreSQL server, beside a raw psycopg floor measured in the same run.

- `pg-workers-{K}` for K = 1, 2, 4: N runs (2,000; --quick: 100) of a 10-step workflow of
  trivial async steps are queued first (untimed, `runtime.enqueue` from this process, no
  worker). Then K worker processes start (`_pgbench.py worker`: `open_runtime(storage=
  PostgresStorage(dsn), workflows=[wf], worker=True, worker_capacity=64)`, the storage's
  default pool of 8 connections); each connects, creates/checks the tables and prints
  `ready`. The clock starts when every worker is ready and is told `go` (it then opens its
  worker runtime and claims runs), and stops when all N runs are `success` (polled every
  5 ms from this process). Figures: `runs_per_s`, `steps_per_s`, and
  `db_transactions_per_run` (the database's `xact_commit` over the timed part, reads
  included, minus this process's polls). Every run's result is checked in SQL.
- The floor, on a fresh database in the same run: the same N runs' worth of raw psycopg
  writes from K processes of 8 threads each (one connection per thread, as the engine's
  pool): per run 10 transactions (one per step), each an `UPDATE` of the run's row with a
  snapshot text, an `INSERT` of that step's event rows and a `NOTIFY`. The texts are cut
  from the engine's own stored snapshot and chunks (step i writes i/10 of the final
  snapshot), so the sizes match. `floor_runs_per_s`; `ratio_to_floor` = floor runs/s over
  the engine's (2.0: the engine completes half as many runs as raw writes would).

- `pg-run-transactions` (`--transactions` alone, issue 15): the transactions of one 10-step
  run started in process (`transactions`) and of one queued and run by a worker
  (`queued_transactions`), with the storage calls the engine made and the database jobs
  each sent (see `_pg_transactions.py`). Goal: <= 12; floor: 10. `--quick`: one
  measurement of each instead of the least of 3. `run_all.py` runs it too.

Every process (workers, floor processes and the server) shares the machine's cores:
`cpu_count` is in each row, and the figures for K > cpu_count are oversubscribed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import _harness
import _pg_transactions
import _pgbench
import trio

WORKER_COUNTS = (1, 2, 4)
RUNS = 2_000
QUICK_RUNS = 100
CAPACITY = 64
FLOOR_THREADS = 8
POLL_INTERVAL = 0.005
TIMEOUT = 600.0
STEPS = _pgbench.CHAIN_STEPS
SCENARIOS = [f"pg-workers-{k}" for k in WORKER_COUNTS]
#: Issue 15's goal for one worker (runs/s); none is set for more workers.
GOAL_RUNS_PER_S = {1: 240.0}


def xact_commit(dsn: str) -> int:
    rows = _pgbench.query(
        dsn, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(rows[0][0])


def settled_xact_commit(dsn: str) -> int:
    """`xact_commit` once closed connections have flushed their statistics (a backend
    reports them as it exits). The reading itself is one transaction, not counted."""
    time.sleep(0.5)
    return xact_commit(dsn) - 1


def wait_all_success(dsn: str, n_runs: int, workers: list[_pgbench.Child]) -> tuple[float, int]:
    """Poll until `n_runs` runs are `success`; (perf_counter at that moment, polls made)."""
    import psycopg

    polls = 0
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            polls += 1
            row = conn.execute(
                "SELECT count(*) FROM trioflow_runs WHERE status = 'success'"
            ).fetchone()
            now = time.perf_counter()
            if row is not None and row[0] >= n_runs:
                return now, polls
            for worker in workers:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {worker.pid} exited ({worker.proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row} of {n_runs} runs done after {TIMEOUT} s")
            time.sleep(POLL_INTERVAL)


def check_results(dsn: str, n_runs: int) -> None:
    rows = _pgbench.query(
        dsn,
        "SELECT count(*) FROM trioflow_runs WHERE status = 'success' "
        "AND (snapshot::jsonb ->> 'result')::bigint = (snapshot::jsonb ->> 'input')::bigint + %s",
        STEPS,
    )
    if rows[0][0] != n_runs:
        raise RuntimeError(f"only {rows[0][0]} of {n_runs} runs ended success with input + {STEPS}")


def engine_samples(dsn: str) -> dict[str, Any]:
    """Sizes of what the engine stored, for the floor to write alike."""
    snapshot, chunks_per_run, chunk = _pgbench.query(
        dsn,
        "SELECT (SELECT snapshot FROM trioflow_runs LIMIT 1), "
        "(SELECT count(*) FROM trioflow_events)::float / (SELECT count(*) FROM trioflow_runs), "
        "(SELECT chunk FROM trioflow_events WHERE chunk LIKE '%%workflow-step-result%%' LIMIT 1)",
    )[0]
    return {"snapshot": str(snapshot), "chunks_per_run": float(chunks_per_run), "chunk": chunk}


def measure_engine(server: str, k: int, n_runs: int) -> dict[str, Any]:
    with _pgbench.fresh_database(server) as dsn:
        workflow = _pgbench.build_chain10()
        trio.run(_pgbench.enqueue_runs, dsn, workflow, list(range(n_runs)))
        with _pgbench.children() as workers:
            for _ in range(k):
                workers.append(_pgbench.start_worker(dsn, "chain10", capacity=CAPACITY))
            for worker in workers:
                worker.expect("ready")
            before = settled_xact_commit(dsn)
            t0 = time.perf_counter()
            for worker in workers:
                worker.send("go")
            t1, polls = wait_all_success(dsn, n_runs, workers)
            stats = [json.loads(w.finish("stats") or "{}") for w in workers]
        after = settled_xact_commit(dsn)
        check_results(dsn, n_runs)
        samples = engine_samples(dsn)
    elapsed = t1 - t0
    return {
        "elapsed_s": elapsed,
        "runs_per_worker": [s.get("started") for s in stats],
        "db_transactions_per_run": (after - before - polls) / n_runs,
        "samples": samples,
    }


# --- the raw floor -------------------------------------------------------------------------

FLOOR_SCHEMA = [
    "CREATE TABLE floor_runs (run_id text PRIMARY KEY, status text NOT NULL, "
    "snapshot text NOT NULL, last_seq bigint NOT NULL, updated_at bigint NOT NULL)",
    "CREATE TABLE floor_events (run_id text NOT NULL, seq bigint NOT NULL, "
    "chunk text NOT NULL, PRIMARY KEY (run_id, seq))",
    "CREATE TABLE floor_template (snapshot text NOT NULL, chunk text NOT NULL, "
    "chunks_per_step int NOT NULL)",
]


def prepare_floor(dsn: str, n_runs: int, samples: dict[str, Any]) -> None:
    import psycopg

    chunks_per_step = max(1, round(samples["chunks_per_run"] / STEPS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in FLOOR_SCHEMA:
            conn.execute(statement.encode())
        conn.execute(
            "INSERT INTO floor_template VALUES (%s, %s, %s)",
            (samples["snapshot"], samples["chunk"], chunks_per_step),
        )
        conn.execute(
            "INSERT INTO floor_runs SELECT 'r' || i, 'pending', '', 0, 0 "
            "FROM generate_series(0, %s - 1) AS i",
            (n_runs,),
        )


def floor_thread(dsn: str, run_numbers: list[int], template: tuple[str, str, int]) -> None:
    """One connection writing its runs' 10 step transactions each (floor child)."""
    import psycopg

    snapshot, chunk, per_step = template
    with psycopg.connect(dsn, autocommit=True) as conn:
        for number in run_numbers:
            run_id = f"r{number}"
            seq = 0
            for step in range(1, STEPS + 1):
                seqs = list(range(seq + 1, seq + per_step + 1))
                seq = seqs[-1]
                with conn.transaction():
                    conn.execute(
                        "UPDATE floor_runs SET status = %s, snapshot = %s, last_seq = %s, "
                        "updated_at = %s WHERE run_id = %s",
                        (
                            "success" if step == STEPS else "running",
                            snapshot[: len(snapshot) * step // STEPS],
                            seq,
                            time.time_ns() // 1_000_000,
                            run_id,
                        ),
                    )
                    conn.execute(
                        "INSERT INTO floor_events (run_id, seq, chunk) "
                        "SELECT %s, s, c FROM unnest(%s::bigint[], %s::text[]) AS t(s, c)",
                        (run_id, seqs, [chunk] * per_step),
                    )
                    conn.execute("SELECT pg_notify('floor_events', %s)", (run_id,))


def floor_child(argv: list[str]) -> None:
    """`--floor-child`: write runs slot, slot+of, ... with `threads` connections."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--floor-child", action="store_true")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--of", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    row = _pgbench.query(args.dsn, "SELECT snapshot, chunk, chunks_per_step FROM floor_template")[0]
    template = (str(row[0]), str(row[1]), int(row[2]))
    mine = list(range(args.slot, args.runs, args.of))
    shares = [mine[t :: args.threads] for t in range(args.threads)]
    threads = [
        threading.Thread(target=floor_thread, args=(args.dsn, share, template))
        for share in shares
        if share
    ]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("done", flush=True)


def measure_floor(server: str, k: int, n_runs: int, samples: dict[str, Any]) -> float:
    """Seconds for K floor processes to write N runs' worth of step transactions."""
    with _pgbench.fresh_database(server) as dsn:
        prepare_floor(dsn, n_runs, samples)
        with _pgbench.children() as procs:
            for slot in range(k):
                procs.append(
                    _pgbench.Child(
                        [
                            __file__,
                            "--floor-child",
                            "--dsn",
                            dsn,
                            "--slot",
                            str(slot),
                            "--of",
                            str(k),
                            "--runs",
                            str(n_runs),
                            "--threads",
                            str(FLOOR_THREADS),
                        ]
                    )
                )
            for proc in procs:
                proc.expect("ready")
            t0 = time.perf_counter()
            for proc in procs:
                proc.send("go")
            for proc in procs:
                proc.expect("done", TIMEOUT)
            elapsed = time.perf_counter() - t0
            for proc in procs:
                proc.finish()
        done = _pgbench.query(dsn, "SELECT count(*) FROM floor_runs WHERE status = 'success'")
        if done[0][0] != n_runs:
            raise RuntimeError(f"floor: {done[0][0]} of {n_runs} runs written")
    return elapsed


def measure(server: str, quick: bool) -> list[dict[str, Any]]:
    n_runs = QUICK_RUNS if quick else RUNS
    version = _pgbench.server_version(server)
    rows = []
    for k in WORKER_COUNTS:
        engine = measure_engine(server, k, n_runs)
        floor_s = measure_floor(server, k, n_runs, engine["samples"])
        runs_per_s = n_runs / engine["elapsed_s"]
        floor_runs_per_s = n_runs / floor_s
        rows.append(
            _harness.report(
                f"pg-workers-{k}",
                {
                    "workers": k,
                    "runs": n_runs,
                    "steps_per_run": STEPS,
                    "runs_per_s": runs_per_s,
                    "steps_per_s": runs_per_s * STEPS,
                    "elapsed_s": engine["elapsed_s"],
                    "floor_runs_per_s": floor_runs_per_s,
                    "floor_steps_per_s": floor_runs_per_s * STEPS,
                    "ratio_to_floor": floor_runs_per_s / runs_per_s,
                    "goal_runs_per_s": GOAL_RUNS_PER_S.get(k),
                    "db_transactions_per_run": engine["db_transactions_per_run"],
                    "floor_transactions_per_run": STEPS,
                    "runs_per_worker": engine["runs_per_worker"],
                    "worker_capacity": CAPACITY,
                    "pool_size": 8,
                    "floor_threads_per_process": FLOOR_THREADS,
                    "snapshot_bytes": len(engine["samples"]["snapshot"]),
                    "chunks_per_run": engine["samples"]["chunks_per_run"],
                    "postgres_version": version,
                    **_pgbench.machine(),
                    "peak_rss_mb": _harness.peak_rss_mb(),
                },
            )
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    return _pgbench.run_with_server(SCENARIOS, lambda server: measure(server, quick))


def transactions_row(server: str, quick: bool = False) -> list[dict[str, Any]]:
    return [_harness.report("pg-run-transactions", _pg_transactions.measure(server, quick))]


if __name__ == "__main__":
    if "--floor-child" in sys.argv[1:]:
        floor_child(sys.argv[1:])
    elif "--transactions" in sys.argv[1:]:
        quick = "--quick" in sys.argv[1:]
        _pgbench.run_with_server(
            ["pg-run-transactions"], lambda server: transactions_row(server, quick)
        )
    else:
        _harness.cli(globals())
