"""The map/sleep planner alone (trioflow/_core/_plan/_timers.py): synchronous, no trio.

Sleep durations (seconds, timedelta, until: validated with the error saying what was
expected; the wall clock passed in) and the results map and sleep entries settle with.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow import NotJsonError
from trioflow._core._chunks import StepWaitingPayload
from trioflow._core._model import StepResult
from trioflow._core._plan._timers import (
    TimerPlan,
    Wait,
    sleep_duration,
    sleep_seconds,
    sleep_until_seconds,
)
from trioflow._core._status import StepStatus

_S = StepStatus
NOW = _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.UTC)


@pytest.mark.parametrize(
    ("given_", "expected"),
    [(0, 0.0), (2, 2.0), (0.25, 0.25), (_dt.timedelta(minutes=1), 60.0)],
)
def test_sleep_seconds_accepts_finite_non_negative_numbers(given_: Any, expected: float) -> None:
    assert sleep_seconds(given_) == expected
    assert type(sleep_seconds(given_)) is float


@pytest.mark.parametrize(
    "bad",
    [-1, -0.5, math.inf, math.nan, True, False, "3", None, _dt.timedelta(seconds=-1), [1]],
    ids=repr,
)
def test_sleep_seconds_rejects_what_is_not_a_duration(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"sleep needs a finite number of seconds >= 0, got "):
        sleep_seconds(bad)


def test_sleep_until_counts_from_the_given_now() -> None:
    assert sleep_until_seconds(NOW + _dt.timedelta(seconds=90), NOW) == 90.0
    # Another timezone, the same instant.
    tz = _dt.timezone(_dt.timedelta(hours=5))
    assert sleep_until_seconds((NOW + _dt.timedelta(seconds=1)).astimezone(tz), NOW) == 1.0


def test_sleep_until_in_the_past_sleeps_zero() -> None:
    assert sleep_until_seconds(NOW - _dt.timedelta(days=1), NOW) == 0.0


@pytest.mark.parametrize(
    "bad", [NOW.replace(tzinfo=None), "2026-01-01T00:00:00Z", 5, None, NOW.date()], ids=repr
)
def test_sleep_until_needs_an_aware_datetime(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"sleep_until needs an aware datetime, got "):
        sleep_until_seconds(bad, NOW)


def test_sleep_duration_picks_by_kind() -> None:
    assert sleep_duration(3, until=False, now=NOW) == 3.0
    later = NOW + _dt.timedelta(seconds=4)
    assert sleep_duration(later, until=True, now=NOW) == 4.0
    with pytest.raises(ValueError, match="aware datetime"):
        sleep_duration(3, until=True, now=NOW)
    with pytest.raises(ValueError, match="finite number"):
        sleep_duration(later, until=False, now=NOW)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_sleep_seconds_over_floats(value: float) -> None:
    if value >= 0 and math.isfinite(value):
        assert sleep_seconds(value) == value
    else:
        with pytest.raises(ValueError, match="finite number"):
            sleep_seconds(value)


def plan(emit: bool = True, is_root: bool = True) -> TimerPlan:
    return TimerPlan(value={"in": 1}, chunk_id="nap", started_at=100, emit=emit, is_root=is_root)


def test_map_output_succeeds() -> None:
    done = plan().mapped({"out": 2}, 200)
    assert done.emit is True
    assert done.run.result == StepResult(
        status=_S.SUCCESS, payload={"in": 1}, output={"out": 2}, started_at=100, ended_at=200
    )


@pytest.mark.parametrize("bad", [object(), math.nan, {"x": b"b"}], ids=repr)
def test_map_output_that_is_not_json_fails(bad: Any) -> None:
    result = plan().mapped(bad, 200).run.result
    assert result.status is _S.FAILED
    assert isinstance(result.error, NotJsonError)
    assert result.error.what == "Step output"
    assert result.output is None


def test_failed_and_cancelled_results() -> None:
    exc = KeyError("k")
    assert plan(emit=False).failed(exc, 300).run.result == StepResult(
        status=_S.FAILED, payload={"in": 1}, error=exc, started_at=100, ended_at=300
    )
    assert plan(emit=False).failed(exc, 300).emit is False
    assert plan().cancelled(400).run.result == StepResult(
        status=_S.CANCELED, payload={"in": 1}, started_at=100, ended_at=400
    )


def test_sleep_waits_announcing_itself_and_passes_its_input_on() -> None:
    p = plan()
    assert p.wait(2.5) == Wait(
        seconds=2.5,
        waiting=StepWaitingPayload(
            id="nap", step_name="nap", payload={"in": 1}, started_at=100
        ),
        persist=True,
    )
    assert p.slept(500).run.result == StepResult(
        status=_S.SUCCESS, payload={"in": 1}, output={"in": 1}, started_at=100, ended_at=500
    )


def test_sleep_below_the_top_level_does_not_persist_and_may_not_announce() -> None:
    assert plan(emit=False, is_root=False).wait(1.0) == Wait(
        seconds=1.0, waiting=None, persist=False
    )
