"""Every program in docs/guides.md runs and prints exactly the output the page shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "docs" / "guides.md"

_EXAMPLE = re.compile(
    r'```python title="(?P<name>[\w.]+)"\n(?P<code>.*?)```\s*\n'
    r'It prints:\n\n```text title="(?P=name) output"\n(?P<output>.*?)```',
    re.DOTALL,
)


def _examples() -> list[tuple[str, str, str]]:
    text = GUIDES.read_text(encoding="utf-8")
    found = [(m["name"], m["code"], m["output"]) for m in _EXAMPLE.finditer(text)]
    assert len(found) == text.count('```python title="'), "an example without its output block"
    return found


def test_every_guide_topic_has_a_checked_example() -> None:
    names = {name for name, _, _ in _examples()}
    assert {
        "guide_branch.py",
        "guide_loops.py",
        "guide_nested.py",
        "guide_nested_resume.py",
        "guide_retries.py",
        "guide_tracing.py",
    } <= names


@pytest.mark.parametrize(
    ("name", "code", "output"), [pytest.param(*example, id=example[0]) for example in _examples()]
)
def test_guide_example_prints_what_the_page_says(
    tmp_path: Path, name: str, code: str, output: str
) -> None:
    (tmp_path / name).write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == output
