"""The package's shape, held by tests (SPEC §0 "Shape", issue 15 part 5).

- Exports (trio's ``test_exports`` style): every public name is re-exported ``X as X`` and
  says where users import it from (``tf.Run.__module__ == "trioflow"``).
- Size and complexity: no module over 600 lines, no function over cyclomatic complexity 15
  (ruff's C901), except the allowlisted ones of today.
- The import graph: no cycle through any kind of import (module-level, function-level,
  ``TYPE_CHECKING``), except the allowlisted ones of today, and the arrows of SPEC §0.

Every allowlist here only shrinks: a test fails when a new violation appears and also when
an allowlisted one is gone (then delete its line).
"""

from __future__ import annotations

import ast
import importlib
import pickle
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "trioflow"

PUBLIC_NAMESPACES = [
    "trioflow",
    "trioflow.storage",
    "trioflow.testing",
    "trioflow.tracing",
    "trioflow.bridge",
]

# Namespaces whose __init__.py does not call the __module__ fix-up yet: {name: reason}.
FIXUP_PENDING = {
    "trioflow.bridge": (
        "bridge/__init__.py is being split by the browser issue: add "
        "`_fixup_module_metadata(__name__, globals())` (from .._fixup) at its end"
    ),
}

# --------------------------------------------------------------------------- exports


def _init_path(namespace: str) -> Path:
    return ROOT.joinpath(*namespace.split("."), "__init__.py")


def _public_objects(namespace: str) -> Iterator[tuple[str, object]]:
    module = importlib.import_module(namespace)
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        yield name, obj


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_public_names_are_reexported_as_themselves(namespace: str) -> None:
    """``from ._x import Name as Name`` (mypy's explicit re-export), never a rename; a
    helper imported for the module's own use has a leading underscore."""
    tree = ast.parse(_init_path(namespace).read_text())
    bad = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                if alias.asname is None or (
                    alias.asname != alias.name and not alias.asname.startswith("_")
                ):
                    bad.append(f"from {'.' * node.level}{node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            bad.extend(
                f"import {a.name}"
                for a in node.names
                if a.asname is None or not a.asname.startswith("_")
            )
    assert bad == [], f"{namespace}: not re-exported `X as X` nor private: {bad}"


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_public_objects_have_public_names(namespace: str) -> None:
    for name, obj in _public_objects(namespace):
        if isinstance(obj, (type, types.FunctionType)):
            assert obj.__name__ == name, f"{namespace}.{name} is named {obj.__name__!r}"
            assert not obj.__name__.startswith("_"), f"{namespace}.{name}"


def _ours(obj: object) -> bool:
    return isinstance(obj, (type, types.FunctionType)) and obj.__module__.split(".")[0] == (
        "trioflow"
    )


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_module_metadata_names_a_public_namespace(namespace: str) -> None:
    """``__module__`` is a public namespace that exports the object under its qualname:
    reprs, tracebacks and the API reference say ``trioflow.Run``, and pickling by
    reference finds the object there."""
    wrong = []
    for name, obj in _public_objects(namespace):
        if not _ours(obj):
            continue
        module_name: str = obj.__module__  # type: ignore[attr-defined]
        if module_name not in PUBLIC_NAMESPACES:
            wrong.append(f"{name}: {module_name}")
            continue
        found = getattr(importlib.import_module(module_name), obj.__qualname__, None)  # type: ignore[attr-defined]
        assert found is obj, f"{namespace}.{name}: {module_name}.{obj.__qualname__}"  # type: ignore[attr-defined]
    if namespace in FIXUP_PENDING:
        assert wrong, f"{namespace} is fixed up now: remove it from FIXUP_PENDING"
    else:
        assert wrong == [], f"{namespace}: __module__ is a private module: {wrong}"


def test_the_fixup_reaches_methods_and_leaves_names_alone() -> None:
    import trioflow as tf

    assert tf.Run.__module__ == "trioflow"
    assert tf.Run.__qualname__ == "Run"
    assert tf.open_runtime.__module__ == "trioflow"
    # Names exported by both a subpackage and the top level: the top level wins.
    assert tf.SqliteStorage.__module__ == "trioflow"
    assert tf.LeaseLostError.__module__ == "trioflow"
    assert tf.TracingOptions.__module__ == "trioflow"
    assert tf.SerializedError.__module__ == "trioflow"
    method = tf.Run.__dict__["start"]
    assert method.__module__ == "trioflow"
    assert method.__qualname__ == "Run.start"
    # Instances are never touched (an enum member keeps its class's attribute).
    assert "__module__" not in vars(tf.RunStatus.SUCCESS)
    import trioflow.testing

    assert trioflow.testing.ReferenceModel.__module__ == "trioflow.testing"
    # A private name keeps its defining module.
    from trioflow._run import Run as private_run

    assert private_run is tf.Run


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_public_classes_and_functions_pickle_by_reference(namespace: str) -> None:
    for name, obj in _public_objects(namespace):
        if _ours(obj):
            assert pickle.loads(pickle.dumps(obj)) is obj, f"{namespace}.{name}"


# attrs classes whose annotations name TYPE_CHECKING-only types: {name: reason}.
UNRESOLVABLE = {
    "trioflow.Step": "execute's annotation names StepContext, imported only for type checking",
}


@pytest.mark.parametrize("namespace", PUBLIC_NAMESPACES)
def test_attrs_classes_still_resolve_their_annotations(namespace: str) -> None:
    """String annotations resolve in the globals of ``__module__``: the fix-up resolves
    them before it moves the class (typing.get_type_hints, cattrs and hypothesis)."""
    for name, obj in _public_objects(namespace):
        if f"{namespace}.{name}" in UNRESOLVABLE:
            with pytest.raises(NameError):
                typing.get_type_hints(obj)
            continue
        if _ours(obj) and isinstance(obj, type):
            if attrs.has(obj):
                for field in attrs.fields(obj):
                    assert not isinstance(field.type, str), f"{namespace}.{name}.{field.name}"
            typing.get_type_hints(obj)


def test_exceptions_pickle_with_their_arguments() -> None:
    import trioflow as tf

    err = tf.StorageError("disk full")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is tf.StorageError
    assert copy.args == err.args


# --------------------------------------------------------------------------- size and complexity

MAX_LINES = 600
MAX_COMPLEXITY = 15

# Modules over MAX_LINES today: {path: reason}.
OVERSIZED_MODULES: dict[str, str] = {}

# Functions over MAX_COMPLEXITY today (ruff C901): {path::function: reason}.
COMPLEX_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_over_600_lines() -> None:
    over = {_rel(p) for p in _modules() if len(p.read_text().splitlines()) > MAX_LINES}
    assert over - set(OVERSIZED_MODULES) == set(), "new modules over 600 lines: split them"
    assert set(OVERSIZED_MODULES) - over == set(), "now under 600 lines: drop from the list"


_C901 = re.compile(r"^(?P<path>\S+?):\d+:\d+: C901 `(?P<name>[^`]+)` is too complex")


def _complex_functions() -> set[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "C901",
            "--config",
            f"lint.mccabe.max-complexity={MAX_COMPLEXITY}",
            "--output-format",
            "concise",
            "--no-cache",
            "trioflow",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    found = set()
    for line in proc.stdout.splitlines():
        match = _C901.match(line)
        if match:
            found.add(f"{Path(match['path']).as_posix()}::{match['name']}")
    return found


def test_no_function_over_complexity_15() -> None:
    found = _complex_functions()
    assert found - set(COMPLEX_FUNCTIONS) == set(), "new functions over CC 15: extract helpers"
    assert set(COMPLEX_FUNCTIONS) - found == set(), "now under CC 15: drop from the list"


# --------------------------------------------------------------------------- import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in _modules()}


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> set[str]:
    """The package modules an import statement loads (its own target, not the parent
    packages Python also initialises: those would make every module depend on
    ``trioflow/__init__.py``)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join([*base, *([node.module] if node.module else [])])
        else:
            prefix = node.module or ""
        for alias in node.names:
            candidate = f"{prefix}.{alias.name}"
            names.append(candidate if candidate in MODULES else prefix)
    out = set()
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            out.add(name)
    return out


def _all_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph[module] = set()
        for node in _all_imports(path):
            graph[module] |= _targets(module, node, path.name == "__init__.py")
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


# Import cycles today: {strongly connected component: reason}.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def test_cycle_detection_sees_through_every_kind_of_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == {frozenset({"a", "b", "c"})}
    source = "import typing\nif typing.TYPE_CHECKING:\n    from . import _y\ndef f():\n    from ._z import g\n"
    tree = ast.parse(source)
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [getattr(n, "module", None) for n in nodes[1:]] == [None, "_z"]


def test_no_import_cycles_beyond_todays() -> None:
    cycles = _cycles(_import_graph())
    new = [sorted(c) for c in cycles - set(ALLOWED_CYCLES)]
    gone = [sorted(c) for c in set(ALLOWED_CYCLES) - cycles]
    assert new == [], f"new import cycles: {new}"
    assert gone == [], f"these cycles changed or are gone: update ALLOWED_CYCLES: {gone}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _external_roots(path: Path) -> set[str]:
    roots = set()
    for node in _all_imports(path):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


# Arrows against SPEC §0 today: {(importer, imported): reason}.
ALLOWED_ARROWS = {
    ("trioflow", "trioflow.bridge"): (
        "TYPE_CHECKING only, to type the lazy `tf.bridge` attribute (never imported at run time)"
    ),
}

_ENGINE_AND_ABOVE = (
    "trioflow",
    "trioflow._driver",
    "trioflow._run",
    "trioflow._runtime",
    "trioflow._worker",
    "trioflow._context",
    "trioflow._workflow",
    "trioflow._admit",
    "trioflow.bridge",
    "trioflow.cli",
    "trioflow.testing",
)


def _wrong_arrow(importer: str, imported: str) -> str | None:
    if _within(importer, "trioflow._core") and not _within(imported, "trioflow._core"):
        return "_core imports only _core"
    if _within(importer, "trioflow.storage") and any(
        imported == up or (up != "trioflow" and _within(imported, up)) for up in _ENGINE_AND_ABOVE
    ):
        return "storage never imports the engine, the run API, bridge, cli or testing"
    outside = ("trioflow.bridge", "trioflow.cli", "trioflow.testing", "trioflow.__main__")
    if not any(_within(importer, o) for o in outside) and (
        _within(imported, "trioflow.bridge") or _within(imported, "trioflow.cli")
    ):
        return "the core never imports bridge or cli"
    return None


def test_arrows_point_down() -> None:
    graph = _import_graph()
    wrong = {
        (importer, imported): why
        for importer, targets in graph.items()
        for imported in targets
        if (why := _wrong_arrow(importer, imported)) is not None
    }
    new = {k: v for k, v in wrong.items() if k not in ALLOWED_ARROWS}
    assert new == {}, f"imports against SPEC §0: {new}"
    gone = set(ALLOWED_ARROWS) - set(wrong)
    assert gone == set(), f"no longer imported: drop from ALLOWED_ARROWS: {gone}"


def test_core_never_imports_trio_time_or_randomness() -> None:
    forbidden = {"trio", "trio_websocket", "time", "random", "uuid", "secrets", "sqlite3"}
    for module, path in MODULES.items():
        if _within(module, "trioflow._core"):
            assert _external_roots(path) & forbidden == set(), module


def test_the_arrow_check_catches_each_rule() -> None:
    assert _wrong_arrow("trioflow._core._plan", "trioflow._run") is not None
    assert _wrong_arrow("trioflow.storage.postgres", "trioflow._driver._execution") is not None
    assert _wrong_arrow("trioflow.storage.sqlite", "trioflow.cli._app") is not None
    assert _wrong_arrow("trioflow._run", "trioflow.bridge._server") is not None
    assert _wrong_arrow("trioflow.storage.sqlite", "trioflow._core._serde") is None
    assert _wrong_arrow("trioflow.cli._app", "trioflow.bridge") is None
