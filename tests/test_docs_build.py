"""The documentation site builds with warnings as errors (``mkdocs build --strict``: broken
links, missing pages, API reference entries that do not resolve), and the tutorial's code
does what the tutorial says."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRIOFLOW_DB", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2.0 (not a build warning)
    return env


def test_docs_build_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip(
            "mkdocs is not installed (the dev extra installs mkdocs-material and "
            "mkdocstrings[python])"
        )
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("create_workflow", "open_runtime", "resume_stream", "observe_stream"):
        assert name in api, name
    assert ":class:" not in api  # Sphinx roles are rendered as code
    mastra = (site / "mastra" / "index.html").read_text(encoding="utf-8")
    for pair in (("createRun", "create_run"), ("resumeStreamVNext", "resume_stream")):
        assert all(name in mastra for name in pair), pair
    for page in ("tutorial", "concepts", "cli", "performance"):
        assert (site / page / "index.html").is_file(), page


def _code_block(markdown: str, title: str) -> str:
    match = re.search(rf'```python title="{re.escape(title)}"\n(.*?)```', markdown, re.DOTALL)
    assert match is not None, f"no code block titled {title} in the tutorial"
    return match.group(1)


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )


def test_the_tutorial_runs_suspends_and_resumes_in_another_process(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="the CLI needs the 'cli' extra (rich)")
    tutorial = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    for name in ("orders.py", "start.py", "finish.py"):
        (tmp_path / name).write_text(_code_block(tutorial, name), encoding="utf-8")

    order = '{"id": "o-1", "items": ["mug", "tea", "teapot"]}'
    started = _run(tmp_path, "-m", "trioflow", "run", "orders:orders", "--input", order)
    assert started.returncode == 3, started.stdout + started.stderr
    assert '[suspended] approve {"question": "ship for 44?"}' in started.stdout
    listed = _run(tmp_path, "-m", "trioflow", "runs", "--json")
    (row,) = json.loads(listed.stdout)
    data = '{"approved": true, "by": "ana"}'
    resumed = _run(tmp_path, "-m", "trioflow", "resume", row["runId"], "--data", data)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'result: {"approved": true, "by": "ana"}' in resumed.stdout

    first = _run(tmp_path, "start.py")
    assert "suspended {'approve': {'question': 'ship for 14?'}}" in first.stdout, first.stderr
    run_id = first.stdout.split("run id:")[1].strip()
    second = _run(tmp_path, "finish.py", run_id)
    assert second.stdout.strip() == "success {'approved': True, 'by': 'ana'}", second.stderr
