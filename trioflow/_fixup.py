"""trio's ``__module__`` fix-up: a public name says where users import it from.

``tf.Run`` is defined in ``trioflow._run`` but users write ``trioflow.Run``; tracebacks,
reprs, pickles and the API reference should say the same. Each public ``__init__.py``
calls :func:`fixup_module_metadata` on its own namespace once its imports are done (the
top-level package last, so a name exported by both ``trioflow`` and a subpackage ends up as
``trioflow.X``, the shortest public path).

Unlike trio's version this never renames (``__name__``/``__qualname__`` stay as defined, and
public names are re-exported ``X as X``, so ``getattr(module, qualname)`` finds the object
and pickling works) and touches only classes and functions, never instances (a frozen attrs
instance or an enum member stored as a class attribute must stay untouched).
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Mapping

import attrs

_PACKAGE = "trioflow"


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _should_move(current: str, target: str) -> bool:
    if current == target or not current.startswith(_PACKAGE + "."):
        return False
    # A subpackage's private module, or a module below the target namespace.
    return _is_private(current) or current.startswith(target + ".")


def _members(cls: type) -> list[object]:
    out: list[object] = []
    for value in vars(cls).values():
        if isinstance(value, (staticmethod, classmethod)):
            out.append(value.__func__)
        elif isinstance(value, property):
            out.extend(f for f in (value.fget, value.fset, value.fdel) if f is not None)
        elif isinstance(value, (type, types.FunctionType)):
            out.append(value)
    return out


def _move(obj: object, origin: str, target: str, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    obj.__module__ = target
    if isinstance(obj, type):
        for member in _members(obj):
            if getattr(member, "__module__", None) == origin:
                _move(member, origin, target, seen)


def fixup_module_metadata(module_name: str, namespace: Mapping[str, object]) -> None:
    """Set ``__module__`` of every public class and function in ``namespace`` that comes
    from a private module of the package (or a module below ``module_name``) to
    ``module_name``, with the methods and nested classes defined alongside them."""
    public = [
        obj
        for name, obj in namespace.items()
        if not name.startswith("_") and isinstance(obj, (type, types.FunctionType))
    ]
    # Classes declared under `from __future__ import annotations` hold their annotations
    # as strings, evaluated (by typing.get_type_hints, cattrs, hypothesis) in the globals of
    # the module named by __module__: evaluate them while that is still the defining module.
    for obj in public:
        if isinstance(obj, type):
            _resolve_annotations(obj)
    seen: set[int] = set()
    for obj in public:
        origin = obj.__module__
        if _should_move(origin, module_name):
            _move(obj, origin, module_name, seen)


def _resolve_annotations(cls: type) -> None:
    own = inspect.get_annotations(cls)
    # An attrs subclass that adds only methods (tf.Workflow) still has its inherited
    # fields' string types to resolve.
    if not own and not attrs.has(cls):
        return
    # A class whose annotations name a TYPE_CHECKING-only type resolves nowhere, before
    # or after: it is left as it is.
    with contextlib.suppress(NameError):
        hints = typing.get_type_hints(cls, include_extras=True)
        if attrs.has(cls):
            attrs.resolve_types(cls)
        cls.__annotations__ = {name: hints[name] for name in own}
