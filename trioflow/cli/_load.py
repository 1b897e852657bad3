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
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .._core._json import MAX_JSON_INT_DIGITS
from .._workflow import WorkflowGraph

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
        raise CliError(
            f"error while importing {path_text}: {_describe(exc)}{where(exc)}"
        ) from exc
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
        raise CliError(f"error while importing {name!r}: {_describe(exc)}{where(exc)}") from exc
    except Exception as exc:
        raise CliError(f"error while importing {name!r}: {_describe(exc)}{where(exc)}") from exc


def import_module(module: str) -> tuple[ModuleType, str]:
    """The module a reference names, and its canonical text (file paths made absolute)."""
    if not module:
        raise CliError("empty module name")
    if _is_file_ref(module):
        return _import_file(module)
    return _import_module(module), module


def workflows_in(module: ModuleType) -> dict[str, WorkflowGraph]:
    """The module-level workflows of ``module``, by attribute name."""
    return {name: value for name, value in vars(module).items() if isinstance(value, WorkflowGraph)}


def _is_factory(value: object) -> bool:
    """A function (not a class or another callable object) that may build a workflow."""
    return inspect.isroutine(value) or isinstance(value, functools.partial)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: The most frames of the user's own code shown under an error raised while importing.
MAX_FRAMES = 6
_NOT_USER = (
    str(Path(importlib.__file__).resolve().parent) + os.sep,
    str(Path(__file__).resolve().parent.parent) + os.sep,
)


def _is_user_frame(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    try:
        resolved = str(Path(filename).resolve())
    except OSError:
        return True
    return not resolved.startswith(_NOT_USER)


def where(exc: BaseException) -> str:
    """Where ``exc`` was raised in the user's own code, as traceback lines (the frames of
    trioflow and importlib left out; at most :data:`MAX_FRAMES`, the innermost), each
    line starting with a newline; ``""`` when none of the frames is the user's."""
    lines: list[str] = []
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_frame(f.filename)]
    for frame in frames[-MAX_FRAMES:]:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno is not None:
        # The error is in the text itself: no frame of the traceback points at it.
        lines.append(f'  File "{exc.filename}", line {exc.lineno}')
        if exc.text and exc.text.strip():
            lines.append(f"    {exc.text.strip()}")
    return "".join("\n" + line for line in lines)


def load_workflow(ref: str, workflow_id: str | None = None) -> tuple[WorkflowGraph, str]:
    """The workflow ``MODULE:WORKFLOW`` names, and the reference to store with its runs.

    With ``workflow_id`` (a stored run's), the attribute may also be a list of workflows
    (as ``trioflow serve MODULE:ATTR`` takes): the one with that id."""
    module_text, sep, attr = ref.rpartition(":")
    if not sep or not module_text or not attr:
        raise CliError(f"expected MODULE:WORKFLOW (e.g. myapp.flows:orders), got {ref!r}")
    module, canonical = import_module(module_text)
    value = _attribute(module, module_text, attr)
    if not isinstance(value, WorkflowGraph) and _is_factory(value):
        try:
            value = value()
        except Exception as exc:
            raise CliError(f"{ref}() raised {_describe(exc)}{where(exc)}") from exc
    if workflow_id is not None and isinstance(value, list | tuple):
        value = next((w for w in value if getattr(w, "id", None) == workflow_id), value)
    if not isinstance(value, WorkflowGraph):
        raise CliError(f"{ref} is not a workflow (it is a {type(value).__name__})")
    value.commit()
    return value, f"{canonical}:{attr}"


def _attribute(module: ModuleType, module_text: str, attr: str) -> Any:
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            found = ", ".join(sorted(workflows_in(module))) or "none"
            raise CliError(
                f"module {module_text!r} has no workflow {attr!r} (workflows there: {found})"
            ) from None
    return value


def load_module_workflows(target: str) -> list[WorkflowGraph]:
    """``MODULE`` (every module-level workflow) or ``MODULE:ATTR`` (one workflow, or a list
    of workflows), each made to store its reference with the runs it starts
    (:func:`remember_ref`), so that ``trioflow resume``/``cancel``/``restart`` find it."""
    module_text, sep, attr = target.rpartition(":")
    if not sep:
        module_text, attr = target, ""
    module, canonical = import_module(module_text)
    if not attr:
        by_id: dict[int, WorkflowGraph] = {}
        for name, workflow in workflows_in(module).items():
            if id(workflow) not in by_id:
                by_id[id(workflow)] = remember_ref(workflow.commit(), f"{canonical}:{name}")
        if not by_id:
            raise CliError(f"module {module_text!r} defines no workflow")
        return list(by_id.values())
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"module {module_text!r} has no attribute {attr!r}") from None
    ref = f"{canonical}:{attr}"
    if isinstance(value, WorkflowGraph):
        return [remember_ref(value.commit(), ref)]
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(w, WorkflowGraph) for w in value)
    ):
        return [remember_ref(w.commit(), ref) for w in value]
    if _is_factory(value):
        return [remember_ref(*load_workflow(target))]
    raise CliError(f"{target} is not a workflow or a list of workflows")


class _StoresRef:
    """A workflow's ``on_start`` that puts the reference in the run's request context
    (what ``on_start`` leaves there is stored), after the workflow's own ``on_start``."""

    def __init__(self, ref: str, inner: Callable[..., Any] | None) -> None:
        self.ref = ref
        self.inner = inner

    async def __call__(self, info: Any) -> None:  # noqa: ASYNC910 - the run API checkpoints
        if self.inner is not None:
            value = self.inner(info)
            if inspect.isawaitable(value):
                await value
        # Set even when a client sent one: the serving process knows the module, and a
        # reference from a client would make a later `trioflow resume` import its choice.
        info.request_context[WORKFLOW_REF_KEY] = self.ref


def remember_ref(workflow: WorkflowGraph, ref: str) -> WorkflowGraph:
    """Make the runs this process starts of ``workflow`` (through ``trioflow serve``'s
    bridge, or a ``trioflow worker`` starting queued runs) store ``ref`` as
    :data:`WORKFLOW_REF_KEY` in their request context, as ``trioflow run`` does. The
    workflow's own ``on_start`` still runs first; calling this again replaces the
    reference."""
    current = workflow.on_start
    inner = current.inner if isinstance(current, _StoresRef) else current
    workflow.on_start = _StoresRef(ref, inner)
    return workflow


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
        except UnicodeDecodeError as exc:
            raise CliError(
                f"cannot read {option} file {text[1:]!r}: not UTF-8 text ({exc.reason} "
                f"at byte {exc.start})"
            ) from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"invalid JSON in {option}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        # json.loads recurses once per nesting level: a deep value exhausts the stack.
        raise CliError(f"invalid JSON in {option}: nested too deeply to read") from None
    except ValueError as exc:
        # The only other ValueError of json.loads: an int past Python's int/str limit.
        raise CliError(f"invalid JSON in {option}: {_json_value_problem(exc)}") from None


def _json_value_problem(exc: ValueError) -> str:
    if "digits" in str(exc):
        return f"an integer of more than {MAX_JSON_INT_DIGITS} digits"
    return str(exc)
