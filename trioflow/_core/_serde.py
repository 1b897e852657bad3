"""The one cattrs converter: schemas, validation errors with readable paths, JSON values.

Every conversion between user values and stored/streamed data goes through this module.
Structuring is strict (no lossy coercion: ``"1"`` is not an ``int``, ``1.5`` is not an
``int``, ``1`` is not a ``bool``) and reports every failing field, never only the first.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)

from ._errors import ValidationError
from ._json import MAX_JSON_DEPTH, JsonValueError, check_strict_json, key_path
from ._wire import camel as camel
from ._wire import from_wire as from_wire
from ._wire import to_wire as to_wire
from ._wire import type_name

__all__ = ["converter", "structure", "to_jsonable", "to_stored_json", "validate"]

converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool):
        raise TypeError("expected int, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected int, got {type_name(value)}")


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected float, got {type_name(value)}")
    return float(value)


def _structure_str(value: object, cls: type[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type_name(value)}")
    # Registered for ``str`` through singledispatch, so str subclasses such as RunStatus
    # and StepStatus (StrEnum) land here too: give back the enum member, not a bare str.
    return value if cls is str else cls(value)


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type_name(value)}")
    return value


def _structure_any(value: object, _: object) -> object:
    return value


def _structure_datetime(value: object, _: type) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise TypeError(f"expected ISO datetime, got {type_name(value)}")


converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(_dt.datetime, _structure_datetime)
converter.register_unstructure_hook(_dt.datetime, lambda d: d.isoformat())
# StrEnums (statuses) are str, so cattrs would pass the member through: store the value.
converter.register_unstructure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda member: member.value
)
# A field typed as a StrEnum dispatches on ``str`` before the predicate above is asked:
# register the class itself, so that a snapshot's status is a plain str (strict JSON).
converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)


def _origin(t: Any) -> Any:
    return typing.get_origin(t)


def _is_list(t: Any) -> bool:
    return t is list or _origin(t) is list


def _is_mapping(t: Any) -> bool:
    return t is dict or _origin(t) in (dict, Mapping)


def _list_factory(t: Any) -> Callable[[Any, Any], Any]:
    inner = list_structure_factory(t, converter)

    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected list, got {type_name(value)}")
        return inner(value, type_)

    return hook


def _mapping_factory(t: Any) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(t, converter)

    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected object, got {type_name(value)}")
        return inner(value, type_)

    return hook


def _attrs_guard_factory(t: Any) -> Callable[[Any, Any], Any]:
    inner = converter.gen_structure_attrs_fromdict(t)

    def hook(value: Any, type_: Any) -> Any:
        if isinstance(value, t):
            return value
        if attrs.has(type(value)):
            value = converter.unstructure(value)
        if not isinstance(value, Mapping):
            raise TypeError(f"expected object, got {type_name(value)}")
        return inner(value, type_)

    return hook


converter.register_structure_hook_factory(_is_list, _list_factory)
converter.register_structure_hook_factory(_is_mapping, _mapping_factory)
converter.register_structure_hook_factory(attrs.has, _attrs_guard_factory)
converter.register_structure_hook(typing.Any, _structure_any)

_KEY_NOTE = re.compile(r"@ key (.+)$")


def _extend(path: str, note: object) -> str:
    if isinstance(note, AttributeValidationNote):
        return f"{path}.{note.name}" if path else note.name
    # cattrs tags a failing mapping value with an IterableValidationNote too: the note's
    # text tells them apart, and a mapping key reads as a field (``m.key``).
    match = _KEY_NOTE.search(str(note))
    if match:
        key = match.group(1).strip("'\"")
        return f"{path}.{key}" if path else key
    if isinstance(note, IterableValidationNote):
        return f"{path}[{note.index}]"
    return path


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and exc.args:
        text = str(exc)
        # cattrs and attrs say "__init__() missing 1 required ..." for missing fields.
        if "required" in text and "missing" in text:
            return "required field missing"
        return text
    return str(exc) or type(exc).__name__


def _collect(exc: BaseException, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                sub_path = _extend(path, note)
            _collect(sub, sub_path, out)
        return
    out.append((path, _message(exc)))


def errors_of(exc: BaseException) -> list[tuple[str, str]]:
    """Every ``(path, message)`` pair inside a cattrs structuring failure."""
    found: list[tuple[str, str]] = []
    _collect(exc, "", found)
    return found


def structure(value: Any, schema: Any) -> Any:
    """Structure ``value`` as ``schema`` (``None`` = any JSON-like value, unchanged).

    Raises the underlying cattrs/TypeError exceptions; see :func:`validate`.
    """
    if schema is None or schema is typing.Any:
        return value
    if (
        isinstance(schema, type)
        and not _origin(schema)
        and isinstance(value, schema)
        and (not isinstance(value, bool) or schema is bool)
    ):
        return value
    return converter.structure(value, schema)


def validate(value: Any, schema: Any, prefix: str) -> Any:
    """Structure ``value`` as ``schema`` or raise :class:`ValidationError` listing every
    failing path under ``prefix`` (e.g. ``"Invalid resume data:"``)."""
    try:
        return structure(value, schema)
    except ValidationError:
        raise
    except (ClassValidationError, IterableValidationError, TypeError, ValueError, KeyError) as exc:
        if not _overflowed(exc):
            raise ValidationError(prefix, errors_of(exc)) from None
        overflow: BaseException = exc
    except RecursionError as exc:
        overflow = exc
    # A recursive schema given a value nested past the interpreter's stack (cattrs may
    # have collected the RecursionError as a field's failure): name where it is too deep.
    problem = _locate_unconvertible(value)
    raise ValidationError(prefix, [(problem.path, problem.reason)]) from overflow


def _overflowed(exc: BaseException) -> bool:
    # Iterative: the tree of a failure found that deep is as deep as the value.
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, RecursionError):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
    return False


_PRIMITIVES = (str, int, float, bool, type(None))
_JSON_SCALARS: frozenset[type] = frozenset(_PRIMITIVES)


def to_jsonable(value: Any) -> Any:
    """A JSON-compatible copy of ``value`` (attrs instances unstructured, enums to values,
    datetimes to ISO strings). Plain JSON data is returned as is, without copying.

    On the engine's hot path: exact JSON types are recognised without any dispatch.
    """
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or type(item) not in _JSON_SCALARS:
                return _jsonable_dict(value)
        return value
    if kind is list:
        for item in value:
            if type(item) not in _JSON_SCALARS:
                return [to_jsonable(v) for v in value]
        return value
    return _jsonable_other(value, kind)


def _jsonable_other(value: Any, kind: type) -> Any:
    """:func:`to_jsonable` of anything but an exact JSON scalar, dict or list."""
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, dict):
        return _jsonable_dict(value)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if attrs.has(kind):
        return to_jsonable(converter.unstructure(value))
    if isinstance(value, set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, types.SimpleNamespace):
        return to_jsonable(vars(value))
    raise TypeError(f"value of type {type(value).__name__} cannot be stored as JSON")


def json_key(key: Any) -> str:
    """The JSON object key for the dict key ``key``: a str as it is, an int as ``json``
    writes it, an enum member by its value. Any other key (None, a bool, a float, a
    tuple, bytes, …) has no JSON key that reads back as itself: TypeError."""
    if type(key) is str:
        return key
    if isinstance(key, enum.Enum):
        return json_key(key.value)
    if isinstance(key, str):
        return "" + key
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return int.__repr__(key)
        except ValueError:  # more digits than Python converts
            pass
    raise TypeError(f"key {key!r} is not a string")


def _jsonable_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out = {json_key(k): to_jsonable(v) for k, v in value.items()}
    if len(out) != len(value):
        raise TypeError("two keys are the same in JSON")
    return out


def _key_problem(container: dict[Any, Any]) -> str | None:
    """Why ``container``'s keys are no JSON object's keys, or None."""
    seen: dict[str, Any] = {}
    for key in container:
        try:
            converted = json_key(key)
        except TypeError as exc:
            return str(exc)
        if converted in seen:
            return f"keys {seen[converted]!r} and {key!r} are both {converted!r} in JSON"
        seen[converted] = key
    return None


def _locate_unconvertible(value: Any) -> JsonValueError:
    """Where :func:`to_jsonable` fails on ``value`` (a type it cannot convert, a cycle, or
    nesting past the limit), as a :class:`JsonValueError` naming the path."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    on_path: list[int] = []
    while stack:
        item, path, depth = stack.pop()
        del on_path[depth - 1 :]
        if depth > MAX_JSON_DEPTH:
            return JsonValueError(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
        if id(item) in on_path:
            return JsonValueError(path, "the value contains itself (a cycle)")
        if attrs.has(type(item)):
            # One level at a time: unstructuring all of it may be what overflowed.
            item = attrs.asdict(item, recurse=False)
        if isinstance(item, dict):
            problem = _key_problem(item)
            if problem is not None:
                return JsonValueError(path, problem)
            on_path.append(id(item))
            stack.extend((v, key_path(path, str(k)), depth + 1) for k, v in item.items())
        elif isinstance(item, list | tuple | set | frozenset):
            on_path.append(id(item))
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        else:
            try:
                to_jsonable(item)
            except TypeError:
                return JsonValueError(path, f"a value of type {type(item).__name__} is not JSON")
    return JsonValueError("", "cannot be converted to JSON")


def to_strict_jsonable(value: Any) -> Any:
    """:func:`to_jsonable`, then the strict JSON policy (:mod:`trioflow._core._json`).

    Raises:
        JsonValueError: ``value`` is not strict JSON; its ``path`` says where.
    """
    try:
        out = to_jsonable(value)
    except (TypeError, RecursionError):
        raise _locate_unconvertible(value) from None
    check_strict_json(out)
    return out


def to_stored_json(value: Any, prefix: str) -> Any:
    """What is stored for ``value`` (:func:`to_strict_jsonable`), or a
    :class:`ValidationError` under ``prefix`` (``"Invalid input data:"``) naming the path
    where it is not strict JSON: input, state, resume data and request context are refused
    before anything is stored."""
    try:
        return to_strict_jsonable(value)
    except JsonValueError as exc:
        raise ValidationError(prefix, [(exc.path, exc.reason)]) from None


def _safe_text(text: str) -> str:
    """``text``, with any lone surrogate written as its escape (``\\ud800``) so it stays
    strict JSON."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _describe(value: Any) -> str:
    try:
        return _safe_text(repr(value))
    except Exception:  # a broken __repr__, or one nested past the stack
        return f"<unprintable {type(value).__name__}>"


_ERROR_SKIP = frozenset({"args", "with_traceback", "add_note"})


def _error_attributes(exc: Any) -> dict[str, Any]:
    """An error's public attributes as stored and sent: what is not strict JSON (NaN, a
    cycle, an object) is kept as its repr; never dropped for that, and never raising (a
    user's exception class may break ``__dict__`` or use keys that are not names)."""
    try:
        attributes = dict(vars(exc))
    except Exception:  # no __dict__, or one that raises
        return {}
    extra: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or key.startswith("_") or key in _ERROR_SKIP:
            continue
        try:
            extra[_safe_text(key)] = to_strict_jsonable(value)
        except Exception:
            extra[_safe_text(key)] = _describe(value)
    return extra


def serialize_error(exc: Any, *, _depth: int = 0) -> Any:
    """A :class:`SerializedError` for ``exc``: message, class name, JSON-able public
    attributes, and the cause chain (``__cause__``, else an unsuppressed ``__context__``)."""
    from ._model import SerializedError

    if isinstance(exc, SerializedError):
        return exc
    extra = _error_attributes(exc)
    cause_exc = exc.__cause__
    if cause_exc is None and not exc.__suppress_context__:
        cause_exc = exc.__context__
    cause = (
        serialize_error(cause_exc, _depth=_depth + 1)
        if cause_exc is not None and _depth < 8
        else None
    )
    try:
        message = _safe_text(str(exc))
    except Exception:  # a broken __str__ must not lose the error itself
        message = f"<unprintable {type(exc).__name__}>"
    return SerializedError(message=message, name=type(exc).__name__, extra=extra, cause=cause)


def dump_error(err: Any) -> dict[str, Any] | None:
    if err is None:
        return None
    ser = serialize_error(err) if isinstance(err, BaseException) else err
    out: dict[str, Any] = {"message": ser.message, "name": ser.name}
    if ser.extra:
        out["extra"] = ser.extra
    if ser.cause is not None:
        out["cause"] = dump_error(ser.cause)
    return out


def load_error(data: Any) -> Any:
    from ._model import SerializedError

    if data is None:
        return None
    return SerializedError(
        message=str(data.get("message", "")),
        name=str(data.get("name", "Error")),
        extra=dict(data.get("extra") or {}),
        cause=load_error(data.get("cause")),
    )


# --- stored snapshots --------------------------------------------------------------------


def snapshot_to_json(snapshot: Any) -> dict[str, Any]:
    """A stored run snapshot as plain JSON data (what durable backends write)."""
    data: dict[str, Any] = converter.unstructure(snapshot)
    return data


def snapshot_from_json(data: Mapping[str, Any]) -> Any:
    """The RunSnapshot that :func:`snapshot_to_json` produced; ValidationError naming the
    fields when the stored data does not fit."""
    from ._model import RunSnapshot

    return validate(dict(data), RunSnapshot, "Invalid stored snapshot:")
