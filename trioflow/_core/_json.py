"""Strict JSON (RFC 8259): the one policy every stored or sent value obeys.

Whatever trioflow stores (snapshots, the event log) or sends (the websocket bridge) is
strict JSON, the same on every backend:

- no ``NaN``, ``Infinity`` or ``-Infinity`` (Python's ``json`` writes them; PostgreSQL and
  most JSON parsers refuse them);
- no lone surrogates in strings or keys (``"\\ud800"`` cannot be encoded as UTF-8);
- object keys are strings;
- integers of at most :data:`MAX_JSON_INT_DIGITS` digits (Python refuses to write or read
  longer ones: ``sys.get_int_max_str_digits()``);
- at most :data:`MAX_JSON_DEPTH` nested containers (a deeper value would overflow the
  recursion of the encoders and decoders on the way);
- nothing but ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``
  (``tuple`` is accepted as a list).

Pure: no trio, no storage. The walk is iterative, so a value nested deeper than Python's
recursion limit is refused with a path rather than crashing.
"""

from __future__ import annotations

import math
from typing import Any

#: The deepest nesting of containers (objects and arrays) a stored or sent value may have.
MAX_JSON_DEPTH = 100

#: The most decimal digits an integer may have: Python's default limit on int/str
#: conversion (``sys.int_info.default_max_str_digits``), which json.dumps and json.loads
#: obey, so a longer one could be neither stored nor read back.
MAX_JSON_INT_DIGITS = 4300

# Magnitude bound of those integers: one comparison instead of a str() per int.
_INT_BOUND: int = 10**MAX_JSON_INT_DIGITS
_LONG_INT = f"an integer of more than {MAX_JSON_INT_DIGITS} digits is not storable JSON"


#: How deep :func:`plainly_json` looks before leaving a value to the full walk.
QUICK_DEPTH = 8


def plainly_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is certainly strict JSON: plain dicts and lists at most
    :data:`QUICK_DEPTH` deep of ASCII strings, ints of at most :data:`MAX_JSON_INT_DIGITS`
    digits, bools, None and finite floats. For hot paths: no paths are built. False
    means "walk it properly" (:func:`check_strict_json` names the path, finds cycles)."""
    kind = type(value)
    if kind is str:
        text: str = value
        return text.isascii()
    if kind is int:
        number: int = value
        return -_INT_BOUND < number < _INT_BOUND
    if kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= QUICK_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not plainly_json(item, depth + 1):
                return False
        return True
    if kind is list:
        return all(plainly_json(item, depth + 1) for item in value)
    return False


class JsonValueError(ValueError):
    """A value that is not strict JSON; ``path`` says where (``a.b[2]``; ``""`` = the root)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path or '(root)'}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


def key_path(path: str, key: str) -> str:
    """``path`` extended by the object key ``key`` (``a.b``, or ``a['x y']``)."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (it cannot be UTF-8, so not JSON text)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def id_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be an id that every backend stores (a lone surrogate is no
    UTF-8; PostgreSQL text refuses NUL), or None."""
    if "\x00" in text:
        return "must not contain a NUL character"
    if has_lone_surrogate(text):
        return "must not contain a lone surrogate (it is not valid Unicode text)"
    return None


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return "string with a lone surrogate is not valid JSON" if has_lone_surrogate(value) else None
    if kind is float:
        return None if math.isfinite(value) else f"{value!r} is not valid JSON (only finite numbers)"
    if kind is int:
        return None if -_INT_BOUND < value < _INT_BOUND else _LONG_INT
    if value is None or kind is bool:
        return None
    return f"a value of type {kind.__name__} is not JSON"


_EXIT = object()

_Children = list[tuple[Any, str, int]]


def _scan(
    pairs: Any, child_path: Any, depth: int, children: _Children
) -> None:
    """Check the scalars among ``pairs`` (``(key, item)``) and collect the containers in
    ``children``. Paths are built only for a container or a problem: most items of a
    large value are plain scalars."""
    for key, item in pairs:
        kind = type(item)
        if kind is str:
            if item.isascii() or not has_lone_surrogate(item):
                continue
        elif kind is int:
            if -_INT_BOUND < item < _INT_BOUND:
                continue
        elif kind is bool or item is None:
            continue
        elif kind is float:
            if math.isfinite(item):
                continue
        elif kind is dict or kind is list or kind is tuple:
            children.append((item, child_path(key), depth + 1))
            continue
        raise JsonValueError(child_path(key), _scalar_problem(item) or "not JSON")


def _check_keys(container: dict[Any, Any], path: str) -> None:
    for key in container:
        if type(key) is not str:
            raise JsonValueError(path, f"key {key!r} is not a string")
        if not key.isascii() and has_lone_surrogate(key):
            raise JsonValueError(path, "key with a lone surrogate is not valid JSON")


def check_strict_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonValueError` naming the first path where ``value`` is not strict
    JSON (see the module docstring); return ``None`` when it is.

    A value shared twice (not a cycle) is fine; a container inside itself is refused.
    """
    kind = type(value)
    if kind is not dict and kind is not list and kind is not tuple:
        problem = _scalar_problem(value)
        if problem is not None:
            raise JsonValueError("", problem)
        return
    # Depth-first; ``(_EXIT, id)`` marks where a container's subtree ends, so ``open_ids``
    # holds exactly the containers on the path from the root to the current one.
    stack: _Children = [(value, "", 1)]
    open_ids: set[int] = set()
    while stack:
        container, path, depth = stack.pop()
        if container is _EXIT:
            open_ids.discard(depth)
            continue
        if depth > max_depth:
            raise JsonValueError(path, f"nested deeper than {max_depth} levels")
        if id(container) in open_ids:
            raise JsonValueError(path, "the value contains itself (a cycle)")
        open_ids.add(id(container))
        stack.append((_EXIT, "", id(container)))
        children: _Children = []
        if type(container) is dict:
            _check_keys(container, path)
            _scan(container.items(), lambda key, p=path: key_path(p, key), depth, children)
        else:
            _scan(enumerate(container), lambda i, p=path: f"{p}[{i}]", depth, children)
        children.reverse()
        stack.extend(children)
