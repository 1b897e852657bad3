"""Issue 12, engine findings: each test pins one finding of the adversarial pass.

- exception groups are unwrapped by one helper (``trioflow._groups``); ``open_runtime``
  gives the user their own exception;
- a step (or a condition, a map or sleep function) raising a ``BaseException`` subclass
  fails its own run, never the runtime;
- a step output that is not strict JSON fails that step, naming the path;
- cancel gives every started entry its terminal chunk (foreach with concurrency, a nested
  workflow inside a parallel);
- a slow final write completes (``SHIELDED_WRITE_GRACE`` only bounds interrupted runs).

Time only passes on pytest-trio's ``autojump_clock``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._groups import is_cancellation, is_fatal, leaves, sole_exception, unwrap_groups

# --------------------------------------------------------------------------- groups


def test_sole_exception_unwraps_nested_single_member_groups() -> None:
    inner = ValueError("x")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert sole_exception(group) is inner
    two = ExceptionGroup("two", [ValueError(), KeyError()])
    assert sole_exception(two) is two
    assert sole_exception(inner) is inner
    assert leaves(BaseExceptionGroup("g", [two, inner])) == [*two.exceptions, inner]


def _unwrapped(group: BaseExceptionGroup[BaseException], user_error: Any = None) -> BaseException:
    """What ``unwrap_groups`` raises for ``group``."""
    try:
        with unwrap_groups() as guard:
            guard.user_error = user_error
            raise group
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:
        return exc
    raise AssertionError("unwrap_groups swallowed the group")


def test_unwrap_groups_prefers_the_lone_real_exception() -> None:
    error = ValueError("mine")
    raised = _unwrapped(ExceptionGroup("g", [error]))
    assert raised is error
    # The group is not the context of the exception it contained.
    assert not isinstance(raised.__context__, BaseExceptionGroup)


def test_unwrap_groups_keeps_the_user_error_first_with_the_others_as_context() -> None:
    mine = ValueError("mine")
    other = KeyError("internal")
    raised = _unwrapped(ExceptionGroup("g", [mine, other]), user_error=mine)
    assert raised is mine
    assert isinstance(raised.__context__, BaseExceptionGroup)
    assert other in raised.__context__.exceptions


def test_unwrap_groups_keeps_a_group_of_unrelated_errors() -> None:
    group = ExceptionGroup("g", [ValueError(), KeyError()])
    assert _unwrapped(group) is group


def test_unwrap_groups_turns_an_interrupt_among_errors_into_keyboard_interrupt() -> None:
    raised = _unwrapped(BaseExceptionGroup("g", [ValueError(), KeyboardInterrupt()]))
    assert isinstance(raised, KeyboardInterrupt)
    assert isinstance(raised.__cause__, BaseExceptionGroup)


async def test_cancellation_helpers_classify_nursery_groups() -> None:
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
            raise
    assert len(caught) == 1
    assert is_cancellation(caught[0])
    assert is_fatal(caught[0])
    assert not is_cancellation(ValueError())
    assert not is_fatal(SystemExit())
    assert is_fatal(BaseExceptionGroup("g", [SystemExit(), KeyboardInterrupt()]))


async def test_open_runtime_raises_the_users_own_exception() -> None:
    with pytest.raises(ValueError, match="from the body") as info:
        async with tf.open_runtime():
            raise ValueError("from the body")
    assert type(info.value) is ValueError


async def test_open_runtime_raises_the_users_own_exception_while_runs_execute() -> None:
    async def forever(ctx: tf.StepContext) -> None:
        await trio.sleep_forever()

    wf = tf.create_workflow(id="g-forever").then(tf.create_step(id="s", execute=forever)).commit()

    async def body() -> None:
        async with tf.open_runtime() as runtime:
            run = await runtime.create_run(wf)
            await run.stream()
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")

    with pytest.raises(KeyError, match="body"):
        await body()
