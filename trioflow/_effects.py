"""What the pure core may not do: read the clock, draw random ids, call user functions.

The planner (``_core/_plan``) gets the time and the ids it needs as arguments; the driver
takes them from here.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable
from typing import Any


def now_ms() -> int:
    """Wall-clock time in milliseconds (what records and chunks carry)."""
    return int(time.time() * 1000)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async user function. A sync one is called without a checkpoint
    (a condition or callback must not cost a trip through the scheduler); the callers'
    entry loops checkpoint between entries."""
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value  # noqa: ASYNC910 (see the docstring)
