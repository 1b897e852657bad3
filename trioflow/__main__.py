"""``python -m trioflow`` / the ``trioflow`` console script."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioflow", description="trioflow workflow engine")
    parser.add_argument("--version", action="version", version=f"trioflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the bundled demo workflow")
    demo.add_argument("--db", default=None, help="SQLite file (default: ./trioflow.db)")
    args = parser.parse_args(argv)
    from ._demo import run_demo

    return run_demo(args.db)


if __name__ == "__main__":
    sys.exit(main())
