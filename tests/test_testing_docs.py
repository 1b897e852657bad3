"""docs/testing.md: its code blocks, put in a fresh directory, are a user's test suite that
passes with the trioflow pytest plugin (the fixtures, the crash-point harness on memory and
SQLite, hypothesis over the user's workflow and over generated workflows)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def code_blocks() -> dict[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    return dict(re.findall(r'```python title="([^"]+)"\n(.*?)```', text, re.DOTALL))


def plugin_args() -> list[str]:
    installed = any(
        ep.value == "trioflow.testing._plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    return [] if installed else ["-p", "trioflow.testing._plugin"]


def test_the_page_has_the_workflow_and_its_tests() -> None:
    assert set(code_blocks()) == {
        "orders.py",
        "test_orders.py",
        "test_orders_crash.py",
        "test_orders_properties.py",
        "test_storage_properties.py",
    }


def test_the_examples_of_the_testing_page_pass(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    for name, body in code_blocks().items():
        pytester.makepyfile(**{name.removesuffix(".py"): body})
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider")
    # test_orders runs on memory and SQLite; the other four once each.
    result.assert_outcomes(passed=6)
