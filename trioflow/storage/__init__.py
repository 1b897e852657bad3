"""Storage backends and the protocol they implement."""

from .._core._errors import LeaseLostError as LeaseLostError
from ._protocol import Storage as Storage
from .memory import MemoryStorage as MemoryStorage
from .postgres import PostgresStorage as PostgresStorage
from .sqlite import SqliteStorage as SqliteStorage

from .._fixup import fixup_module_metadata as _fixup_module_metadata  # isort: skip

_fixup_module_metadata(__name__, globals())
