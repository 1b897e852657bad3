"""What the pure core may not do: read the clock, draw random ids, call user functions.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async user function."""
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value

