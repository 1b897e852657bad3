"""Run every benchmark scenario in this directory and print the results as one JSON list.

    python benchmarks/run_all.py [--quick] [NAME ...]

Each `bench_*.py` script runs in its own Python process (so its peak RSS and its garbage are
its own) and prints one JSON object per scenario; this script collects them into one JSON
list on stdout. Progress and the scripts' own stderr go to stderr. `--quick` shrinks sizes
and repeats so the whole run takes a few seconds (a smoke test; the figures mean nothing
then). `NAME`s pick scripts by name (`chain` or `bench_chain`); default: all of them.
Scenarios a script prints only when asked (`bench_storage.py --big-output`,
`bench_postgres_workers.py --transactions`) are run too, see `EXTRA_RUNS`.

The PostgreSQL scripts (`bench_postgres_*.py`) start a throwaway private server, or use
`$TRIOFLOW_BENCH_POSTGRES_DSN` (creating and dropping their own databases there); without
either they print `skipped` rows, and fail under `TRIOFLOW_REQUIRE_POSTGRES=1`.

A script that fails (non-zero exit, or no JSON on stdout) is reported as
`{"scenario": "<script>", "error": ...}` and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
#: Scenarios a script prints only when asked: run_all runs the script again with these
#: arguments (after its default run).
EXTRA_RUNS: dict[str, list[list[str]]] = {
    "bench_storage": [["--big-output"]],  # sqlite-big-output
    "bench_postgres_workers": [["--transactions"]],  # pg-run-transactions
}


def discover(names: list[str]) -> list[Path]:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if not names:
        return scripts
    wanted = {name.removeprefix("bench_").removesuffix(".py") for name in names}
    chosen = [path for path in scripts if path.stem.removeprefix("bench_") in wanted]
    unknown = wanted - {path.stem.removeprefix("bench_") for path in chosen}
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return chosen


def run_script(
    path: Path, quick: bool, extra: list[str] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Run one scenario script (with ``extra`` arguments); return its JSON rows and an
    error message (or None)."""
    command = [sys.executable, str(path), *(extra or []), *(["--quick"] if quick else [])]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    rows: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                return rows, f"unparsable output line: {line[:200]}"
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return rows, f"exit status {proc.returncode}: {tail[0]}"
    if not rows:
        return rows, "printed no JSON result"
    return rows, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("names", nargs="*", help="scripts to run (default: all)")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    failed = False
    for path in discover(args.names):
        for extra in [None, *EXTRA_RUNS.get(path.stem, [])]:
            label = " ".join([path.name, *(extra or [])])
            t0 = time.perf_counter()
            rows, error = run_script(path, args.quick, extra)
            elapsed = time.perf_counter() - t0
            results.extend(rows)
            for row in rows:
                print(json.dumps(row), file=sys.stderr)
            if error is not None:
                failed = True
                results.append({"scenario": label, "error": error})
                print(f"{label}: FAILED: {error}", file=sys.stderr)
            else:
                print(f"{label}: done in {elapsed:.1f} s", file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
