"""Storage backends and the protocol they implement."""

from ._protocol import Storage as Storage
from .memory import MemoryStorage as MemoryStorage
from .postgres import LeaseLostError as LeaseLostError
from .postgres import PostgresStorage as PostgresStorage
from .sqlite import SqliteStorage as SqliteStorage
