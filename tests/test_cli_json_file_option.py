"""A ``--input @file`` that is not UTF-8 text is one error line (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_an_input_file_that_is_not_utf8_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(
        "import trioflow as tf\n"
        "async def s(ctx):\n    return ctx.input_data\n"
        "wf = tf.create_workflow(id='w').then(tf.create_step(id='s', execute=s)).commit()\n"
    )
    (tmp_path / "input.json").write_bytes(b'{"a": "\xff"}')
    proc = subprocess.run(
        [sys.executable, "-m", "trioflow", "run", "flows:wf", "--input", "@input.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr[-500:]
    assert proc.stderr.startswith("trioflow: error: cannot read --input file 'input.json'")
    assert "not UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr
