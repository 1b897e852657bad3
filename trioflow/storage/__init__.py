"""Storage backends and the protocol they implement."""

from ._protocol import Storage as Storage
from .memory import MemoryStorage as MemoryStorage
from .sqlite import SqliteStorage as SqliteStorage
