"""docs/testing.md: its code blocks, put in a fresh directory, are a user's test suite that
passes with the trioflow pytest plugin (the fixtures, a storage fixture of the user's own,
PostgreSQL from local_postgres, the crash-point harness on memory and SQLite and its
building blocks, hand-written specs and the reference model, hypothesis over the user's
workflow and over generated workflows, a scripted model). Every public name of
trioflow.testing is described both there and in docs/api.md."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import types
from pathlib import Path

import pytest

import trioflow.testing
from trioflow.testing import _plugin, strategies
from trioflow.testing._pgserver import find_postgres_bindir

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "testing.md"
API = DOCS / "api.md"


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
        "test_orders_my_storage.py",
        "test_orders_postgres.py",
        "test_orders_crash.py",
        "test_orders_one_crash.py",
        "test_orders_properties.py",
        "test_storage_properties.py",
        "test_specs.py",
        "test_agent.py",
    }


def postgres_available() -> bool:
    return importlib.util.find_spec("psycopg") is not None and find_postgres_bindir() is not None


def test_the_examples_of_the_testing_page_pass(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    for name, body in code_blocks().items():
        pytester.makepyfile(**{name.removesuffix(".py"): body})
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider")
    # Tests that use the trioflow_runtime fixture without overriding trioflow_storage run
    # on memory and SQLite (test_orders, two of test_specs, test_agent).
    if postgres_available():
        result.assert_outcomes(passed=17)
    else:
        result.assert_outcomes(passed=16, skipped=1)


def public_names() -> set[str]:
    """Every public name of trioflow.testing: ``__all__``, the strategies reachable as its
    attributes, and the plugin's fixtures and marker."""
    return (
        set(trioflow.testing.__all__)
        | set(strategies.__all__)
        | set(_plugin.FIXTURES)
        | {"trioflow_storage_kind", "trioflow_real_clock"}
    )


def test_all_lists_every_public_name_of_the_package() -> None:
    exported = {
        name
        for name, value in vars(trioflow.testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == set(trioflow.testing.__all__)
    lazy = set(trioflow.testing._LAZY)
    assert lazy <= set(strategies.__all__)
    assert all(getattr(trioflow.testing, name) is getattr(strategies, name) for name in lazy)


@pytest.mark.parametrize("page", [PAGE, API], ids=lambda p: p.name)
def test_every_public_name_is_documented(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = sorted(name for name in public_names() if f"`{name}" not in text)
    assert not missing, f"{page.name} does not describe {missing}"


def test_every_testing_name_in_the_api_reference_has_a_description() -> None:
    # Readable without a built site: a prose line naming the object before its directive.
    text = API.read_text(encoding="utf-8")
    for match in re.finditer(r"^::: trioflow\.testing\.([\w.]+)$", text, re.MULTILINE):
        name = match.group(1).rsplit(".", 1)[-1]
        before = text[: match.start()].rstrip().rsplit("\n\n", 1)[-1]
        assert before.startswith(f"`{name}`: "), f"no description before ::: {match.group(1)}"
    documented = set(re.findall(r"^::: trioflow\.testing\.(?:strategies\.)?(\w+)$", text, re.M))
    assert documented >= set(trioflow.testing.__all__) | set(trioflow.testing._LAZY)
