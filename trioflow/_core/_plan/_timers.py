"""map and sleep entries: their durations and results (pure).

The trio driver (``_driver/_timers.py``) calls the user's functions and sleeps; this module
decides what the entry settles with. Time is passed in (``now``: epoch ms; the wall clock
as an aware ``datetime`` for ``sleep_until``).

Rules:

- **map.** Its output (a function's return, or the mapping's resolved sources) must be
  strict JSON (``NotJsonError`` naming ``Step output`` otherwise); any failure of the
  function (not a cancellation) fails the entry; it is never retried. Its chunks carry
  a ``stepCallId`` (as Mastra 1.71's do).
- **sleep.** ``seconds`` (a number, a ``timedelta``, or a function returning one) must be
  finite and >= 0 (a bool is not a number); ``until`` (a datetime, or a function returning
  one) must be timezone-aware, and a time in the past sleeps 0 s. A bad value fails the
  entry (``ValueError`` saying what was expected) before anything is published. The entry
  announces itself with a ``workflow-step-waiting`` chunk, the top level stores the run as
  ``waiting``, and it settles ``success`` with its input as its output. Its chunks carry no
  ``stepCallId``.
- **Cancellation.** A map or sleep interrupted by cancellation settles ``canceled`` (its
  chunk published when the level emits step events). A cancellation while a sleep's
  duration function runs settles nothing (the run's cancel records the entry).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import attrs

from .._chunks import StepWaitingPayload
from .._model import StepResult
from .._serde import to_jsonable
from .._status import StepStatus
from ._records import not_json
from ._step import Settle
from ._values import StepRun

_S = StepStatus


# --- sleep durations -------------------------------------------------------------------


def sleep_seconds(seconds: Any) -> float:
    """``sleep(seconds)``'s value as seconds, or ValueError saying what was expected."""
    if isinstance(seconds, _dt.timedelta):
        seconds = seconds.total_seconds()
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (seconds >= 0 and math.isfinite(seconds))
    ):
        raise ValueError(f"sleep needs a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def sleep_until_seconds(when: Any, now: _dt.datetime) -> float:
    """Seconds from ``now`` to ``sleep_until(when)`` (0 when past), or ValueError."""
    if not isinstance(when, _dt.datetime) or when.tzinfo is None:
        raise ValueError(f"sleep_until needs an aware datetime, got {when!r}")
    return max(0.0, (when - now).total_seconds())


def sleep_duration(when: Any, *, until: bool, now: _dt.datetime) -> float:
    """A sleep entry's seconds: ``when`` is its ``until`` datetime (``until``) or its
    seconds, as given or as its function returned them."""
    return sleep_until_seconds(when, now) if until else sleep_seconds(when)


# --- the plan --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Wait:
    """Sleep ``seconds``; first publish ``waiting`` (when not None) and, when ``persist``,
    store the run as ``waiting``."""

    seconds: float
    waiting: StepWaitingPayload | None
    persist: bool


class TimerPlan:
    """One map or sleep entry: its results, given what happened."""

    __slots__ = ("chunk_id", "emit", "is_root", "started_at", "value")

    def __init__(
        self, *, value: Any, chunk_id: str, started_at: int, emit: bool, is_root: bool
    ) -> None:
        self.value = value
        self.chunk_id = chunk_id
        self.started_at = started_at
        self.emit = emit
        self.is_root = is_root

    def _settle(self, status: StepStatus, now: int, **fields: Any) -> Settle:
        result = StepResult(
            status=status, payload=self.value, started_at=self.started_at, ended_at=now, **fields
        )
        return Settle(run=StepRun(result=result), emit=self.emit)

    def mapped(self, output: Any, now: int) -> Settle:
        """The map's function (or mapping) produced ``output``."""
        problem = not_json("Step output", output)
        if problem is not None:
            return self.failed(problem, now)
        return self._settle(_S.SUCCESS, now, output=output)

    def failed(self, error: BaseException, now: int) -> Settle:
        """The map's function, or a sleep's duration, raised ``error`` (not a
        cancellation)."""
        return self._settle(_S.FAILED, now, error=error)

    def cancelled(self, now: int) -> Settle:
        return self._settle(_S.CANCELED, now)

    def wait(self, seconds: float) -> Wait:
        """A sleep whose duration is known (:func:`sleep_seconds`)."""
        waiting = None
        if self.emit:
            waiting = StepWaitingPayload(
                id=self.chunk_id,
                step_name=self.chunk_id,
                payload=to_jsonable(self.value),
                started_at=self.started_at,
            )
        return Wait(seconds=seconds, waiting=waiting, persist=self.is_root)

    def slept(self, now: int) -> Settle:
        """The sleep ended: the entry passes its input on."""
        return self._settle(_S.SUCCESS, now, output=self.value)
