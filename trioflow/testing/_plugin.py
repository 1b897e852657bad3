"""The trioflow pytest plugin (entry point ``pytest11``: ``trioflow``).

Fixtures (async ones need pytest-trio, with ``trio_mode = true`` or ``@pytest.mark.trio``):

* ``trioflow_runtime``: an open :class:`trioflow.Runtime` on the ``trioflow_storage``
  fixture, closed after the test;
* ``trioflow_storage``: parametrized, so a test using it runs twice: on
  :class:`trioflow.MemoryStorage` (``[memory]``) and on a fresh
  :class:`trioflow.SqliteStorage` file in ``tmp_path`` (``[sqlite]``), the latter wrapped
  in :class:`~trioflow.testing.ClockGuardStorage`;
* ``trioflow_memory_storage``/``trioflow_sqlite_storage``: one backend only;
* ``trioflow_clock``: the test's :class:`trio.testing.MockClock`.

A test that uses any of these fixtures runs on an autojumping ``MockClock``
(``autojump_threshold=0``): ``await trio.sleep(3600)`` and ``.sleep(3600)`` entries take no
real time. Ask for pytest-trio's ``mock_clock`` (manual) or ``autojump_clock`` to choose
the clock yourself.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf

from ._harness import ClockGuardStorage

FIXTURES = frozenset(
    {
        "trioflow_runtime",
        "trioflow_storage",
        "trioflow_memory_storage",
        "trioflow_sqlite_storage",
        "trioflow_clock",
    }
)


def run_on_autojump_clock(
    fn: Callable[..., Any], *args: Any, clock: Any = None, **kwargs: Any
) -> Any:
    """A ``trio.run`` for pytest-trio's ``trio(run=...)`` marker: a fresh autojumping
    MockClock unless the test asked for a clock fixture."""
    if clock is None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(fn, *args, clock=clock, **kwargs)


def _is_async_test(item: pytest.Item) -> bool:
    obj = getattr(item, "obj", None)
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", None)
    return inspect.iscoroutinefunction(inner if inner is not None else obj)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "trioflow_real_clock: run a test that uses trioflow fixtures on trio's real clock",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = set(getattr(item, "fixturenames", ()))
        if not fixturenames & FIXTURES or not _is_async_test(item):
            continue
        if item.get_closest_marker("trioflow_real_clock") is not None:
            continue
        # First in the list, so it wins over pytest-trio's trio_mode marker.
        item.add_marker(pytest.mark.trio(run=run_on_autojump_clock), append=False)


@pytest.fixture
async def trioflow_clock() -> trio.abc.Clock:
    """The clock the test runs on (a MockClock unless the test chose another)."""
    await trio.lowlevel.checkpoint()
    return trio.lowlevel.current_clock()


@pytest.fixture
async def trioflow_memory_storage() -> AsyncIterator[tf.MemoryStorage]:
    storage = tf.MemoryStorage()
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


@pytest.fixture
async def trioflow_sqlite_storage(tmp_path: Path) -> AsyncIterator[ClockGuardStorage]:
    storage = ClockGuardStorage(tf.SqliteStorage(tmp_path / "trioflow.db"))
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


@pytest.fixture(params=["memory", "sqlite"])
def trioflow_storage_kind(request: pytest.FixtureRequest) -> str:
    """Which backend ``trioflow_storage`` gives (``memory`` or ``sqlite``)."""
    kind: str = request.param
    return kind


@pytest.fixture
async def trioflow_storage(trioflow_storage_kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    """MemoryStorage, then SqliteStorage (the test runs once per backend)."""
    if trioflow_storage_kind == "memory":
        storage: Any = tf.MemoryStorage()
    else:
        storage = ClockGuardStorage(tf.SqliteStorage(tmp_path / "trioflow.db"))
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


@pytest.fixture
async def trioflow_runtime(trioflow_storage: Any) -> AsyncIterator[tf.Runtime]:
    """An open runtime on ``trioflow_storage`` (``wf.create_run()`` finds it)."""
    async with tf.open_runtime(storage=trioflow_storage) as runtime:
        yield runtime
