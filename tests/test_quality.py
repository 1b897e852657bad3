"""The project's own static checks run as part of the suite, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ruff", "check", "trioflow", "tests", "benchmarks"], id="ruff"),
        pytest.param(["flake8", "trioflow", "tests", "benchmarks"], id="flake8-async"),
        pytest.param(["mypy"], id="mypy-strict"),
    ],
)
def test_static_check_is_clean(command: list[str]) -> None:
    exe = shutil.which(command[0], path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip(f"{command[0]} is not installed (install the dev extra)")
    proc = _run(exe, *command[1:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
