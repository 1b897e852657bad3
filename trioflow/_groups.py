"""Exception groups, unwrapped the one way trioflow does it everywhere.

trio nurseries always raise an :class:`ExceptionGroup`, even for a single error. A user of
a context manager that opens a nursery (``open_runtime``, a bridge client) expects to see
the exception they raised, not a group around it. This module is the one place that
decides how a group is unwrapped; it follows trio-websocket's ``open_websocket``:

- a group with a single member (at any depth) becomes that member;
- a group whose members are all ``trio.Cancelled`` except one becomes that one;
- a group of only ``trio.Cancelled`` becomes the user's own exception if there was one,
  else one of the ``Cancelled`` (trio's cancel scopes catch it by type);
- a group holding a ``KeyboardInterrupt`` among several errors becomes a
  ``KeyboardInterrupt`` whose ``__cause__`` is the group;
- several real errors, one of them the user's: the user's, with a group of the others as
  its ``__context__``; otherwise the group itself.

The unwrapped exception is raised without the group as its ``__context__`` (the group
contains it: a traceback would print it twice).
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal, NoReturn

import trio

__all__ = [
    "GroupUnwrapper",
    "is_cancellation",
    "is_fatal",
    "leaves",
    "raise_without_context",
    "sole_exception",
    "unwrap_groups",
]


def sole_exception(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def leaves(exc: BaseException) -> list[BaseException]:
    """Every exception that is not a group, inside ``exc`` (``[exc]`` for a plain one)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def is_cancellation(exc: BaseException) -> bool:
    """``trio.Cancelled``, or a group of nothing but ``trio.Cancelled`` (what a nursery
    raises when the scope around it is cancelled)."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and all(
        isinstance(leaf, trio.Cancelled) for leaf in leaves(exc)
    )


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` must propagate through trioflow untouched: it is, or contains, a
    ``KeyboardInterrupt`` or a ``trio.Cancelled``. Every other exception raised by user
    code (also ``SystemExit``, ``GeneratorExit`` or any ``BaseException`` subclass) is that
    code's failure and is recorded as such."""
    return any(isinstance(leaf, KeyboardInterrupt | trio.Cancelled) for leaf in leaves(exc))


def raise_without_context(exc: BaseException) -> NoReturn:
    """Raise ``exc`` keeping its own ``__context__`` (raising it inside an ``except``
    block would set the group being handled, which contains it, as its context)."""
    __tracebackhide__ = True
    context = exc.__context__
    suppress = exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        exc.__suppress_context__ = suppress
        del exc, context


def _holds_group(group: BaseExceptionGroup[BaseException], mine: BaseExceptionGroup[BaseException]) -> bool:
    """Whether ``group`` wraps (single member after single member) ``mine`` or a copy trio
    derived from it (same message, same leaf exceptions)."""
    want = [id(leaf) for leaf in leaves(mine)]
    inner: BaseException = group.exceptions[0]
    while isinstance(inner, BaseExceptionGroup):
        if inner is mine or (
            inner.message == mine.message and [id(leaf) for leaf in leaves(inner)] == want
        ):
            return True
        if len(inner.exceptions) != 1:
            return False
        inner = inner.exceptions[0]
    return False


def _preferred(group: BaseExceptionGroup[BaseException], user_error: BaseException | None) -> (
    BaseException | None
):
    """The exception a group is unwrapped to (see the module docstring), or None to keep
    the group."""
    if len(group.exceptions) == 1:
        if isinstance(user_error, BaseExceptionGroup) and _holds_group(group, user_error):
            # The user raised a group of their own: unwrap the nursery's, not theirs.
            return user_error
        return sole_exception(group.exceptions[0])
    flat = leaves(group)
    # One exception object can be in a group twice (an execution's error, raised both by
    # its task and by the caller waiting for it): count it once.
    real = list({id(leaf): leaf for leaf in flat if not isinstance(leaf, trio.Cancelled)}.values())
    if not real:
        return user_error if user_error is not None else flat[0]
    if len(real) == 1:
        return real[0]
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in real):
        interrupt = KeyboardInterrupt()
        interrupt.__cause__ = group
        return interrupt
    if user_error is not None and any(leaf is user_error for leaf in real):
        others = [leaf for leaf in real if leaf is not user_error]
        if user_error.__context__ is not None and not user_error.__suppress_context__:
            others.append(user_error.__context__)
        user_error.__context__ = BaseExceptionGroup(
            "other exceptions raised while the user's exception propagated", others
        )
        user_error.__suppress_context__ = False
        return user_error
    return None


class GroupUnwrapper:
    """A context manager that re-raises the exception a group stands for (see the module
    docstring). Record the exception of the user's own code in :attr:`user_error` (it is
    preferred over trioflow's own); get one from :func:`unwrap_groups`."""

    __slots__ = ("user_error",)

    def __init__(self) -> None:
        #: The exception the user's code raised inside the block, if any.
        self.user_error: BaseException | None = None

    def __enter__(self) -> GroupUnwrapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if not isinstance(exc, BaseExceptionGroup):
            return False
        preferred = _preferred(exc, self.user_error)
        if preferred is None or preferred is exc:
            return False
        if preferred.__cause__ is exc:
            # The new KeyboardInterrupt: its cause says where it came from.
            raise preferred
        raise_without_context(preferred)


def unwrap_groups() -> GroupUnwrapper:
    """``with unwrap_groups() as guard:`` around a nursery: an exception group leaving the
    block is re-raised as the single exception it stands for. Inside, set
    ``guard.user_error`` to the exception the user's code raised, so it wins over
    trioflow's own exceptions."""
    return GroupUnwrapper()
