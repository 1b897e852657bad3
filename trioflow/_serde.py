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

__all__ = ["converter", "structure", "to_jsonable", "validate"]

converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool):
        raise TypeError("expected int, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected int, got {_type_name(value)}")


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected float, got {_type_name(value)}")
    return float(value)


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {_type_name(value)}")
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {_type_name(value)}")
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
    raise TypeError(f"expected ISO datetime, got {_type_name(value)}")


converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(_dt.datetime, _structure_datetime)
converter.register_unstructure_hook(_dt.datetime, lambda d: d.isoformat())


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
            raise TypeError(f"expected list, got {_type_name(value)}")
        return inner(value, type_)

    return hook


def _mapping_factory(t: Any) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(t, converter)

    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected object, got {_type_name(value)}")
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
            raise TypeError(f"expected object, got {_type_name(value)}")
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
    if isinstance(note, IterableValidationNote):
        return f"{path}[{note.index}]"
    match = _KEY_NOTE.search(str(note))
    if match:
        key = match.group(1).strip("'\"")
        return f"{path}.{key}" if path else key
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
        raise ValidationError(prefix, errors_of(exc)) from None


_PRIMITIVES = (str, int, float, bool, type(None))


def to_jsonable(value: Any) -> Any:
    """A JSON-compatible copy of ``value`` (attrs instances unstructured, enums to values,
    datetimes to ISO strings). Plain JSON data is returned as is, without copying."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, dict):
        if all(type(k) is str and isinstance(v, _PRIMITIVES) for k, v in value.items()):
            return value
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if attrs.has(type(value)):
        return to_jsonable(converter.unstructure(value))
    if isinstance(value, set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, types.SimpleNamespace):
        return to_jsonable(vars(value))
    raise TypeError(f"value of type {type(value).__name__} cannot be stored as JSON")


_ERROR_SKIP = frozenset({"args", "with_traceback", "add_note"})


def serialize_error(exc: Any, *, _depth: int = 0) -> Any:
    """A :class:`SerializedError` for ``exc``: message, class name, JSON-able public
    attributes, and the cause chain (``__cause__``, else an unsuppressed ``__context__``)."""
    from ._core._model import SerializedError

    if isinstance(exc, SerializedError):
        return exc
    extra: dict[str, Any] = {}
    for key, value in vars(exc).items() if hasattr(exc, "__dict__") else ():
        if key.startswith("_") or key in _ERROR_SKIP:
            continue
        try:
            extra[key] = to_jsonable(value)
        except TypeError:
            extra[key] = repr(value)
    cause_exc = exc.__cause__
    if cause_exc is None and not exc.__suppress_context__:
        cause_exc = exc.__context__
    cause = (
        serialize_error(cause_exc, _depth=_depth + 1)
        if cause_exc is not None and _depth < 8
        else None
    )
    return SerializedError(message=str(exc), name=type(exc).__name__, extra=extra, cause=cause)


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
    from ._core._model import SerializedError

    if data is None:
        return None
    return SerializedError(
        message=str(data.get("message", "")),
        name=str(data.get("name", "Error")),
        extra=dict(data.get("extra") or {}),
        cause=load_error(data.get("cause")),
    )
