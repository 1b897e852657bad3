"""The live view of ``trioflow`` in a real (pseudo-)terminal: it draws with escape codes,
shows foreach progress counts as they change, and still prints the resume command of the
demo on one line."""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rich", reason="the CLI needs the 'cli' extra (rich)")
pty = pytest.importorskip("pty")
fcntl = pytest.importorskip("fcntl")
termios = pytest.importorskip("termios")

ROOT = Path(__file__).resolve().parent.parent


def run_in_terminal(args: list[str], cwd: Path, *, timeout: float = 30) -> tuple[int, str]:
    """Run ``python -m trioflow ARGS`` on a 120x40 pseudo-terminal; its exit status and
    everything it wrote to the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.pop("TRIOFLOW_DB", None)
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
    output = bytearray()
    with subprocess.Popen(
        [sys.executable, "-m", "trioflow", *args],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    ) as proc:
        os.close(slave)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the terminal's other end closed
                        break
                    if not data:
                        break
                    output += data
                elif proc.poll() is not None:
                    break
            code = proc.wait(timeout=10)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, output.decode("utf-8", errors="replace")


def test_the_live_view_draws_foreach_progress_in_a_terminal(tmp_path: Path) -> None:
    code, screen = run_in_terminal(["demo", "--db", str(tmp_path / "demo.db")], tmp_path)
    assert code == 3, screen
    assert "\x1b[" in screen  # colours and cursor movement: a live view, not plain lines
    assert "[progress]" not in screen  # ... and not the plain format
    counts = {int(m) for m in re.findall(r"(\d)/8", screen)}
    assert 8 in counts  # the finished bar
    assert counts & {1, 2, 3, 4, 5, 6, 7}  # at least one frame drawn while packing
    assert "━" in screen  # the bar itself
    assert "data-note" in screen  # custom output scrolls above the board
    # The command that finishes the demo is printed whole, on one line.
    assert re.search(r"trioflow resume [0-9a-f-]{36} --db \S+ --data '\{\"approved\": true", screen)
