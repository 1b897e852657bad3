"""Finding workflows from ``MODULE:WORKFLOW`` references, and reading JSON arguments.

A reference names a module and an attribute in it. The module is a dotted module name,
imported with the current directory on ``sys.path`` (as ``python -m`` does), or a path to a
``.py`` file. The attribute is a :class:`~trioflow.Workflow`, or a function that takes no
argument and returns one (a factory).

The reference a run was started from is stored with the run, in its request context under
:data:`WORKFLOW_REF_KEY`, so that ``trioflow resume``/``restart``/``cancel`` in another
process can find the workflow again. A file path is stored absolute, so the run can be
continued from any directory.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .._workflow import Workflow

#: The request-context key that holds the ``MODULE:WORKFLOW`` reference a run was started
#: from (reserved, in the spirit of Mastra's ``mastra__resourceId``).
WORKFLOW_REF_KEY = "trioflow__workflowRef"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _is_file_ref(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path_text: str) -> tuple[ModuleType, str]:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise CliError(f"no such file: {path_text}")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing, str(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {path_text}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CliError(f"error while importing {path_text}: {_describe(exc)}") from exc
    return module, str(path)


def _import_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise CliError(
                f"cannot import module {name!r}: no module named {missing!r} "
                f"(looked in {cwd} and the installed packages)"
            ) from exc
        raise CliError(f"error while importing {name!r}: {_describe(exc)}") from exc
    except Exception as exc:
        raise CliError(f"error while importing {name!r}: {_describe(exc)}") from exc


def import_module(module: str) -> tuple[ModuleType, str]:
    """The module a reference names, and its canonical text (file paths made absolute)."""
    if not module:
        raise CliError("empty module name")
    if _is_file_ref(module):
        return _import_file(module)
    return _import_module(module), module


def workflows_in(module: ModuleType) -> dict[str, Workflow]:
    """The module-level workflows of ``module``, by attribute name."""
    return {name: value for name, value in vars(module).items() if isinstance(value, Workflow)}


def _is_factory(value: object) -> bool:
    """A function (not a class or another callable object) that may build a workflow."""
    return inspect.isroutine(value) or isinstance(value, functools.partial)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_workflow(ref: str) -> tuple[Workflow, str]:
    """The workflow ``MODULE:WORKFLOW`` names, and the reference to store with its runs."""
    module_text, sep, attr = ref.rpartition(":")
    if not sep or not module_text or not attr:
        raise CliError(f"expected MODULE:WORKFLOW (e.g. myapp.flows:orders), got {ref!r}")
    module, canonical = import_module(module_text)
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            found = ", ".join(sorted(workflows_in(module))) or "none"
            raise CliError(
                f"module {module_text!r} has no workflow {attr!r} (workflows there: {found})"
            ) from None
    if not isinstance(value, Workflow) and _is_factory(value):
        try:
            value = value()
        except Exception as exc:
            raise CliError(f"{ref}() raised {_describe(exc)}") from exc
    if not isinstance(value, Workflow):
        raise CliError(f"{ref} is not a workflow (it is a {type(value).__name__})")
    value.commit()
    return value, f"{canonical}:{attr}"


def load_module_workflows(target: str) -> list[Workflow]:
    """``MODULE`` (every module-level workflow) or ``MODULE:ATTR`` (one workflow, or a list
    of workflows)."""
    module_text, sep, attr = target.rpartition(":")
    if not sep:
        module_text, attr = target, ""
    module, _ = import_module(module_text)
    if not attr:
        found = list({id(w): w for w in workflows_in(module).values()}.values())
        if not found:
            raise CliError(f"module {module_text!r} defines no workflow")
        return [w.commit() for w in found]
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"module {module_text!r} has no attribute {attr!r}") from None
    if isinstance(value, Workflow):
        return [value.commit()]
    if isinstance(value, list | tuple) and value and all(isinstance(w, Workflow) for w in value):
        return [w.commit() for w in value]
    if _is_factory(value):
        return [load_workflow(target)[0]]
    raise CliError(f"{target} is not a workflow or a list of workflows")


def parse_json(text: str | None, option: str) -> Any:
    """The JSON value of an option; ``@path`` reads it from a file."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {option} file {text[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"invalid JSON in {option}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
