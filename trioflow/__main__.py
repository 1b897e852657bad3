"""``python -m trioflow`` and the ``trioflow`` console script (see :mod:`trioflow.cli`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trioflow`` command; returns its exit status."""
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "rich":
            raise
        from ._install import install_hint

        print(
            f"trioflow: error: the command line needs the 'cli' extra: {install_hint('cli')}",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
