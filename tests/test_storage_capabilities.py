"""Storage capabilities are runtime_checkable protocols (trioflow/storage/_protocol.py):
each backend has exactly the capabilities it implements, and a wrapper that forwards
through ``__getattr__`` has those of what it wraps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import trioflow as tf
from trioflow.storage._protocol import (
    AttemptCountingStorage,
    EventWatchingStorage,
    LeasingStorage,
    QueueStorage,
    Storage,
)
from trioflow.testing import ClockGuardStorage, FaultyStorage

CAPABILITIES = (EventWatchingStorage, LeasingStorage, QueueStorage, AttemptCountingStorage)


def _capabilities(storage: object) -> set[str]:
    return {p.__name__ for p in CAPABILITIES if isinstance(storage, p)}


async def test_memory_storage_is_a_plain_storage() -> None:
    storage = tf.MemoryStorage()
    assert isinstance(storage, Storage)
    assert _capabilities(storage) == set()
    assert storage.durable is False


async def test_sqlite_storage_is_a_durable_plain_storage(tmp_path: Path) -> None:
    async with tf.SqliteStorage(tmp_path / "runs.db") as storage:
        assert isinstance(storage, Storage)
        assert _capabilities(storage) == set()
        assert storage.durable is True


def test_postgres_storage_has_every_capability() -> None:
    # The constructor does no I/O: no server is needed to ask what it can do.
    storage = tf.PostgresStorage("dbname=never_connected")
    assert isinstance(storage, Storage)
    assert _capabilities(storage) == {p.__name__ for p in CAPABILITIES}
    assert storage.durable is True


def test_faulty_storage_has_no_capability() -> None:
    storage = FaultyStorage(tf.PostgresStorage("dbname=never_connected"), crash_at=None)
    assert isinstance(storage, Storage)
    assert _capabilities(storage) == set()


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="Python 3.12 checks protocols with getattr_static: __getattr__ is not seen",
)
def test_a_forwarding_wrapper_has_the_capabilities_of_what_it_wraps() -> None:
    wrapped = ClockGuardStorage(tf.PostgresStorage("dbname=never_connected"))
    assert _capabilities(wrapped) == {p.__name__ for p in CAPABILITIES}
    assert _capabilities(ClockGuardStorage(tf.MemoryStorage())) == set()


def test_a_queue_implies_leases() -> None:
    assert issubclass(QueueStorage, LeasingStorage)

    class OnlyWatches:
        def watch_events(self, run_id: str, event: object) -> object:
            return lambda: None

    assert _capabilities(OnlyWatches()) == {"EventWatchingStorage"}


async def test_open_runtime_names_what_a_storage_lacks() -> None:
    class HalfStorage:
        durable = False

        async def load_snapshot(self, run_id: str) -> None:
            return None

    with pytest.raises(TypeError, match=r"HalfStorage lacks .*append_events.*save_snapshot"):
        async with tf.open_runtime(storage=HalfStorage()):  # type: ignore[arg-type]
            pass
