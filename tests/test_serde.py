"""The cattrs serde layer (``trioflow/_serde.py``), tested synchronously.

Covers SPEC §0 ("cattrs is the one serialization layer") and SPEC §2 "Validation messages":
strict structuring without lossy coercion, every failing field reported at once with readable
paths (``a.b``, ``items[2].x``, ``m.key``), defaults and extra keys, the ``ValidationError``
message format; ``to_jsonable`` for stored values; and errors as stored data
(``serialize_error``, ``SerializedError``, ``dump_error``/``load_error``; SPEC §2
``WorkflowResult.error`` and mastra-behaviour.md §4.2: message, name, custom properties,
cause chain).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioflow as tf
from trioflow._core._model import SerializedError
from trioflow._core._serde import (
    dump_error,
    load_error,
    serialize_error,
    structure,
    to_jsonable,
    validate,
)

RESUME = "Invalid resume data:"

# --------------------------------------------------------------------------- schemas


@attrs.frozen
class Approval:
    approved: bool
    by: str = "unknown"


@attrs.frozen
class Leaf:
    c: int


@attrs.frozen
class Item:
    x: int
    label: str = ""


@attrs.frozen
class Order:
    b: Leaf
    items: list[Item]
    m: dict[str, int]
    note: str = "none"
    tags: list[str] = attrs.field(factory=list)


@attrs.frozen
class Stamped:
    at: dt.datetime
    size: float


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


def _errors(value: Any, schema: Any, prefix: str = RESUME) -> list[tuple[str, str]]:
    """The (path, message) pairs of the ValidationError that ``validate`` must raise."""
    with pytest.raises(tf.ValidationError) as info:
        validate(value, schema, prefix)
    return info.value.errors


def _paths(value: Any, schema: Any) -> list[str]:
    return [path for path, _ in _errors(value, schema)]


def _valid_order(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"b": {"c": 1}, "items": [{"x": 1}], "m": {"k": 1}}
    data.update(changes)
    return data


# --------------------------------------------------------------------------- strict scalars


@pytest.mark.parametrize(
    ("value", "schema", "message"),
    [
        ("1", int, "expected int, got str"),
        (1.5, int, "expected int, got float"),
        (True, int, "expected int, got bool"),
        (None, int, "expected int, got null"),
        ("1.0", float, "expected float, got str"),
        (False, float, "expected float, got bool"),
        (1, bool, "expected bool, got int"),
        ("true", bool, "expected bool, got str"),
        (0, str, "expected str, got int"),
        (None, str, "expected str, got null"),
    ],
)
def test_scalar_is_not_coerced(value: Any, schema: type, message: str) -> None:
    assert _errors(value, schema) == [("", message)]


def test_whole_float_is_an_int() -> None:
    result = validate(2.0, int, RESUME)
    assert result == 2
    assert type(result) is int


def test_int_is_a_float() -> None:
    result = validate(3, float, RESUME)
    assert result == 3.0
    assert type(result) is float


@pytest.mark.parametrize(("value", "schema"), [(7, int), (True, bool), ("s", str), (0.5, float)])
def test_matching_scalar_passes_unchanged(value: Any, schema: type) -> None:
    assert validate(value, schema, RESUME) == value


def test_optional_accepts_none_and_the_type_but_not_a_str() -> None:
    assert validate(None, int | None, RESUME) is None
    assert validate(4, int | None, RESUME) == 4
    with pytest.raises(tf.ValidationError):
        validate("4", int | None, RESUME)


# --------------------------------------------------------------------------- containers


def test_list_of_str_rejects_a_str() -> None:
    assert _errors("abc", list[str]) == [("", "expected list, got str")]


def test_list_reports_the_bad_index() -> None:
    assert _errors(["a", 1, "c"], list[str]) == [("[1]", "expected str, got int")]


def test_dict_rejects_a_list() -> None:
    assert _errors([1, 2], dict[str, int]) == [("", "expected object, got list")]


def test_dict_of_int_accepts_a_dict_of_ints() -> None:
    assert validate({"a": 1, "b": 2}, dict[str, int], RESUME) == {"a": 1, "b": 2}


def test_dict_value_failure_path_is_dotted_key() -> None:
    data = _valid_order(m={"ok": 1, "key": "v"})
    assert _errors(data, Order) == [("m.key", "expected int, got str")]


# --------------------------------------------------------------------------- attrs schemas


def test_attrs_schema_gives_an_instance_with_defaults_applied() -> None:
    result = validate({"approved": True}, Approval, RESUME)
    assert result == Approval(approved=True, by="unknown")


def test_attrs_schema_ignores_extra_keys() -> None:
    result = validate({"approved": False, "by": "ann", "extra": [1, 2]}, Approval, RESUME)
    assert result == Approval(approved=False, by="ann")


def test_attrs_instance_passes_through_as_is() -> None:
    approval = Approval(approved=True, by="bob")
    assert validate(approval, Approval, RESUME) is approval


def test_nested_attrs_schema_structures_every_level() -> None:
    data = _valid_order(items=[{"x": 1}, {"x": 2.0, "label": "two"}], tags=["t"])
    assert validate(data, Order, RESUME) == Order(
        b=Leaf(c=1),
        items=[Item(x=1), Item(x=2, label="two")],
        m={"k": 1},
        tags=["t"],
    )


def test_attrs_datetime_field_accepts_iso_strings() -> None:
    result = validate({"at": "2024-05-06T07:08:09+00:00", "size": 1}, Stamped, RESUME)
    assert result == Stamped(at=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC), size=1.0)


def test_attrs_schema_rejects_a_non_object() -> None:
    assert _errors([1], Approval) == [("", "expected object, got list")]
    assert _errors(None, Approval) == [("", "expected object, got null")]


def test_missing_required_field_is_reported_as_required() -> None:
    assert _errors({"by": "x"}, Approval) == [("approved", "required field missing")]


def test_missing_nested_required_field_has_its_full_path() -> None:
    assert _errors(_valid_order(b={}), Order) == [("b.c", "required field missing")]


def test_every_missing_required_field_is_reported() -> None:
    assert _errors({}, Order) == [
        ("b", "required field missing"),
        ("items", "required field missing"),
        ("m", "required field missing"),
    ]


def test_every_failing_path_is_reported_at_once() -> None:
    data = {
        "b": {"c": "1"},
        "items": [{"x": 1}, {"x": 2}, {"x": "no"}],
        "m": {"key": 1.5},
        "note": 3,
    }
    assert _errors(data, Order) == [
        ("b.c", "expected int, got str"),
        ("items[2].x", "expected int, got str"),
        ("m.key", "expected int, got float"),
        ("note", "expected str, got int"),
    ]


def test_list_item_of_wrong_kind_is_reported_at_its_index() -> None:
    assert _paths(_valid_order(items=[{"x": 1}, 5]), Order) == ["items[1]"]


def test_list_field_given_a_str_is_reported_at_the_field() -> None:
    assert _errors(_valid_order(tags="t"), Order) == [("tags", "expected list, got str")]


@given(st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=12))
def test_every_bad_list_index_is_reported(items: list[int | str]) -> None:
    bad = [f"[{i}]" for i, item in enumerate(items) if isinstance(item, str)]
    if not bad:
        assert validate(items, list[int], RESUME) == items
    else:
        assert _paths(items, list[int]) == bad


# --------------------------------------------------------------------------- schema None / Any


@pytest.mark.parametrize("schema", [None, Any])
def test_no_schema_passes_anything_through(schema: Any) -> None:
    obj = object()
    assert validate(obj, schema, RESUME) is obj
    assert structure(obj, schema) is obj


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_structure_with_no_schema_is_identity(value: Any) -> None:
    assert structure(value, None) is value


@given(json_values)
def test_to_jsonable_keeps_json_values(value: Any) -> None:
    result = to_jsonable(value)
    assert result == value
    assert json.loads(json.dumps(result)) == value


@given(st.integers())
def test_any_int_validates_as_int_and_as_float(n: int) -> None:
    assert validate(n, int, RESUME) == n
    assert validate(float(n) if abs(n) < 2**53 else n, int, RESUME) == n
    assert math.isclose(validate(n, float, RESUME), float(n))


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
def test_any_fractional_float_is_not_an_int(f: float) -> None:
    assert _errors(f, int) == [("", "expected int, got float")]


@given(st.text())
def test_no_str_is_a_number_or_bool(s: str) -> None:
    for schema, name in ((int, "int"), (float, "float"), (bool, "bool")):
        assert _errors(s, schema) == [("", f"expected {name}, got str")]


# --------------------------------------------------------------------------- ValidationError


def test_validation_error_message_format() -> None:
    with pytest.raises(tf.ValidationError) as info:
        validate({"approved": "yes"}, Approval, RESUME)
    assert str(info.value) == "Invalid resume data:\n- approved: expected bool, got str"
    assert info.value.errors == [("approved", "expected bool, got str")]


def test_validation_error_message_lists_one_line_per_failure() -> None:
    with pytest.raises(tf.ValidationError) as info:
        validate({"approved": 1, "by": 2}, Approval, "Invalid input data:")
    assert str(info.value) == (
        "Invalid input data:\n- approved: expected bool, got int\n- by: expected str, got int"
    )


def test_validation_error_at_the_root_is_labelled_root() -> None:
    with pytest.raises(tf.ValidationError) as info:
        validate("x", int, "Invalid step input:")
    assert str(info.value) == "Invalid step input:\n- (root): expected int, got str"


def test_validation_error_is_a_value_error_and_a_trioflow_error() -> None:
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the class is what is tested
        validate("x", int, RESUME)
    assert isinstance(info.value, tf.ValidationError)
    assert isinstance(info.value, tf.TrioflowError)


def test_validation_error_pickles_with_its_errors() -> None:
    err = tf.ValidationError(RESUME, [("a.b", "expected int, got str")])
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is tf.ValidationError
    assert str(copy) == str(err)
    assert copy.errors == err.errors


# --------------------------------------------------------------------------- to_jsonable


def test_to_jsonable_unstructures_attrs_recursively() -> None:
    order = Order(b=Leaf(c=1), items=[Item(x=2, label="l")], m={"k": 3})
    assert to_jsonable(order) == {
        "b": {"c": 1},
        "items": [{"x": 2, "label": "l"}],
        "m": {"k": 3},
        "note": "none",
        "tags": [],
    }


def test_to_jsonable_turns_enums_into_their_values() -> None:
    assert to_jsonable([Color.RED, Color.BLUE, tf.RunStatus.SUSPENDED]) == ["red", 2, "suspended"]
    # A str enum is already a JSON string: it serializes as its value.
    assert json.dumps(to_jsonable({"s": tf.RunStatus.SUCCESS})) == '{"s": "success"}'


def test_to_jsonable_turns_datetimes_into_iso_strings() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert to_jsonable({"when": when, "day": dt.date(2024, 1, 2)}) == {
        "when": "2024-01-02T03:04:05+00:00",
        "day": "2024-01-02",
    }
    assert to_jsonable(Stamped(at=when, size=1.5)) == {
        "at": "2024-01-02T03:04:05+00:00",
        "size": 1.5,
    }


def test_to_jsonable_converts_nested_containers() -> None:
    value = {"t": (1, (2, 3)), "s": frozenset({"only"}), 7: [Color.RED, {"d": Leaf(c=0)}]}
    assert to_jsonable(value) == {
        "t": [1, [2, 3]],
        "s": ["only"],
        "7": ["red", {"d": {"c": 0}}],
    }


def test_to_jsonable_result_survives_a_json_round_trip() -> None:
    value = {"order": Order(b=Leaf(c=1), items=[], m={}), "at": dt.datetime(2020, 1, 1)}
    result = to_jsonable(value)
    assert json.loads(json.dumps(result)) == result


def test_to_jsonable_rejects_an_arbitrary_object() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="value of type Opaque cannot be stored as JSON"):
        to_jsonable({"a": [Opaque()]})


@given(st.lists(st.integers(), max_size=5), st.text(max_size=5))
def test_to_jsonable_attrs_round_trips_through_validate(xs: list[int], label: str) -> None:
    order = Order(b=Leaf(c=len(xs)), items=[Item(x=x, label=label) for x in xs], m={label: 1})
    assert validate(to_jsonable(order), Order, RESUME) == order


# --------------------------------------------------------------------------- errors as data


class HttpError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = {"retry-after": 5}
        self._private = "hidden"
        self.handle = object()


def _raised(make: Any) -> BaseException:
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def _chained() -> BaseException:
    def make() -> None:
        try:
            raise ConnectionError("socket closed")
        except ConnectionError as exc:
            raise HttpError("upstream failed", 502) from exc

    return _raised(make)


def test_serialize_error_keeps_message_and_class_name() -> None:
    ser = serialize_error(ValueError("bad value"))
    assert isinstance(ser, SerializedError)
    assert ser.message == "bad value"
    assert ser.name == "ValueError"
    assert ser.extra == {}
    assert ser.cause is None
    assert str(ser) == "bad value"


def test_serialize_error_keeps_public_custom_attributes() -> None:
    ser = serialize_error(HttpError("nope", 404))
    assert ser.extra["status_code"] == 404
    assert ser.extra["headers"] == {"retry-after": 5}
    assert "_private" not in ser.extra
    # Not JSON-able: kept as its repr, never dropped and never raising.
    assert isinstance(ser.extra["handle"], str)
    assert ser.extra["handle"].startswith("<object object")


def test_serialized_error_exposes_extras_as_attributes() -> None:
    ser = serialize_error(HttpError("nope", 404))
    assert ser.status_code == 404
    assert ser.headers == {"retry-after": 5}
    with pytest.raises(AttributeError):
        _ = ser.not_there


def test_serialize_error_keeps_the_cause_chain() -> None:
    ser = serialize_error(_chained())
    assert (ser.name, ser.message, ser.status_code) == ("HttpError", "upstream failed", 502)
    assert ser.cause is not None
    assert (ser.cause.name, ser.cause.message) == ("ConnectionError", "socket closed")
    assert ser.cause.cause is None


def test_serialize_error_follows_an_implicit_context() -> None:
    def make_implicit() -> None:
        try:
            raise KeyError("k")
        except KeyError:
            raise RuntimeError("while handling")  # noqa: B904 - implicit context on purpose

    ser = serialize_error(_raised(make_implicit))
    assert ser.cause is not None
    assert ser.cause.name == "KeyError"


def test_serialize_error_drops_a_suppressed_context() -> None:
    def make() -> None:
        try:
            raise KeyError("k")
        except KeyError:
            raise RuntimeError("clean") from None

    assert serialize_error(_raised(make)).cause is None


def test_serialize_error_stops_a_long_chain() -> None:
    def make() -> None:
        err: BaseException = ValueError("level 0")
        for level in range(1, 30):
            try:
                raise err
            except Exception as exc:
                try:
                    raise ValueError(f"level {level}") from exc
                except ValueError as new:
                    err = new
        raise err

    ser = serialize_error(_raised(make))
    depth = 0
    node: SerializedError | None = ser
    while node is not None:
        depth += 1
        node = node.cause
    assert ser.message == "level 29"
    assert 1 < depth < 30


def test_serialize_error_of_trioflow_errors_keeps_their_fields() -> None:
    ser = serialize_error(tf.StepTimeoutError("fetch", 1.5))
    assert ser.name == "StepTimeoutError"
    assert ser.message == "Step 'fetch' timed out after 1.5 s"
    assert ser.step_id == "fetch"
    assert ser.timeout == 1.5
    trip = serialize_error(tf.TripwireError("blocked", retry=True, metadata={"k": 1}))
    assert (trip.reason, trip.retry, trip.metadata) == ("blocked", True, {"k": 1})


def test_serialize_error_of_a_serialized_error_is_itself() -> None:
    ser = serialize_error(ValueError("x"))
    assert serialize_error(ser) is ser


def test_dump_error_is_plain_json() -> None:
    dumped = dump_error(_chained())
    assert dumped is not None
    assert set(dumped) == {"message", "name", "extra", "cause"}
    assert (dumped["message"], dumped["name"]) == ("upstream failed", "HttpError")
    assert dumped["extra"]["status_code"] == 502
    assert dumped["extra"]["headers"] == {"retry-after": 5}
    assert dumped["cause"] == {"message": "socket closed", "name": "ConnectionError"}
    assert json.loads(json.dumps(dumped)) == dumped


def test_dump_error_omits_empty_extra_and_cause() -> None:
    assert dump_error(ValueError("x")) == {"message": "x", "name": "ValueError"}


def test_dump_and_load_of_none_is_none() -> None:
    assert dump_error(None) is None
    assert load_error(None) is None


def test_dump_load_round_trip_equals_the_serialized_error() -> None:
    exc = _chained()
    loaded = load_error(json.loads(json.dumps(dump_error(exc))))
    assert loaded == serialize_error(exc)
    assert loaded.status_code == 502
    assert loaded.cause.message == "socket closed"


def test_load_error_fills_defaults_for_a_minimal_record() -> None:
    loaded = load_error({"message": "only a message"})
    assert loaded == SerializedError(message="only a message", name="Error")


@given(
    st.lists(
        st.tuples(
            st.text(max_size=10),
            st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), json_values, max_size=3),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_dump_load_round_trip_for_any_serialized_chain(
    chain: list[tuple[str, dict[str, Any]]],
) -> None:
    ser: SerializedError | None = None
    for message, extra in reversed(chain):
        ser = SerializedError(message=message, name="E", extra=extra, cause=ser)
    assert ser is not None
    dumped = dump_error(ser)
    assert load_error(json.loads(json.dumps(dumped))) == ser


# --------------------------------------------------------------------------- strict JSON


class OddError(Exception):
    """An exception whose public attributes are not strict JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.ratio = float("nan")
        self.limit = float("-inf")
        self.label = "bad \ud800 text"
        loop: list[Any] = []
        loop.append(loop)
        self.loop = loop
        self.deep: Any = 1
        for _ in range(2000):
            self.deep = [self.deep]
        self.fine = {"n": 1.5}


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_serialized_errors_are_strict_json_whatever_the_exception_holds() -> None:
    from trioflow._core._json import check_strict_json

    ser = serialize_error(OddError("message \udfff with a lone surrogate"))
    dumped = dump_error(ser)
    check_strict_json(dumped)
    assert ser.message == "message \\udfff with a lone surrogate"
    assert ser.extra["fine"] == {"n": 1.5}
    assert ser.extra["ratio"] == "nan"
    assert ser.extra["limit"] == "-inf"
    assert ser.extra["label"] == "'bad \\ud800 text'"
    assert ser.extra["loop"] == "[[...]]"
    assert isinstance(ser.extra["deep"], str)
    # And on the wire, as a step result's error.
    from trioflow._core._chunks import StepResultPayload, WorkflowStepResult
    from trioflow._core._serde import to_wire

    chunk = WorkflowStepResult(
        run_id="r",
        seq=3,
        payload=StepResultPayload(id="s", step_name="s", status="failed", error=ser),
    )
    check_strict_json(to_wire(chunk))
    json.dumps(to_wire(chunk), allow_nan=False).encode("utf-8")


def test_serialize_error_of_an_unprintable_exception_does_not_raise() -> None:
    ser = serialize_error(UnprintableError())
    assert ser.name == "UnprintableError"
    assert "unprintable" in ser.message


def test_snapshot_json_is_strict_json_with_plain_status_strings() -> None:
    from trioflow._core._json import check_strict_json
    from trioflow._core._model import RunSnapshot
    from trioflow._core._serde import snapshot_from_json, snapshot_to_json
    from trioflow._core._status import RunStatus

    snapshot = RunSnapshot(
        run_id="r",
        workflow_id="w",
        status=RunStatus.SUSPENDED,
        steps={"s": {"status": "suspended", "output": None}},
        error=serialize_error(OddError("x")),
    )
    data = snapshot_to_json(snapshot)
    assert type(data["status"]) is str
    check_strict_json(data)
    back = snapshot_from_json(json.loads(json.dumps(data, allow_nan=False)))
    assert back.status is RunStatus.SUSPENDED


def test_check_strict_json_names_the_path_of_each_kind_of_problem() -> None:
    from trioflow._core._json import MAX_JSON_DEPTH, JsonValueError, check_strict_json

    shared = [1, 2]
    check_strict_json({"a": shared, "b": shared, "t": (1, "x"), "e": [], "o": {}})
    cyclic: dict[str, Any] = {"a": []}
    cyclic["a"].append(cyclic)
    deep: Any = 0
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = [deep]
    check_strict_json([deep])  # exactly MAX_JSON_DEPTH containers
    cases: list[tuple[Any, str, str]] = [
        ({"a": {"b c": [0, math.nan]}}, "a['b c'][1]", "finite"),
        ([{"x": -math.inf}], "[0].x", "finite"),
        ({"s": "ok\udc80"}, "s", "surrogate"),
        ({1: "x"}, "", "not a string"),
        ({"k": {"\ud800": 1}}, "k", "surrogate"),
        ({"o": [object()]}, "o[0]", "type object"),
        (cyclic, "a[0]", "cycle"),
        ([[deep]], "[0]" * MAX_JSON_DEPTH, f"deeper than {MAX_JSON_DEPTH}"),
        (math.nan, "", "finite"),
    ]
    for value, path, words in cases:
        with pytest.raises(JsonValueError) as info:
            check_strict_json(value)
        assert info.value.path == path
        assert words in info.value.reason


@attrs.frozen
class Tree:
    children: list[Tree] = attrs.field(factory=list)


def test_validate_of_a_value_nested_past_the_stack_is_a_validation_error() -> None:
    from trioflow._core._json import MAX_JSON_DEPTH

    value: dict[str, Any] = {"children": []}
    for _ in range(3000):
        value = {"children": [value]}
    with pytest.raises(tf.ValidationError) as info:
        validate(value, Tree, "Invalid input data:")
    ((path, message),) = info.value.errors
    assert path.startswith("children[0].children[0]")
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message
    # A shallow tree is fine.
    assert validate({"children": [{"children": []}]}, Tree, "x") == Tree([Tree([])])
