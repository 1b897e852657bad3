"""The ``trioflow`` command line (extra ``cli``: it uses rich).

``trioflow run MODULE:WORKFLOW --input JSON`` shows a run live; ``resume``, ``restart``,
``cancel``, ``runs``, ``show``, ``events``, ``serve``, ``watch`` and ``demo`` do the rest.
Runs are stored in SQLite (``./trioflow.db``; ``--db`` or ``TRIOFLOW_DB`` to change it).
``import trioflow`` never imports this package.
"""

from ._app import main as main

__all__ = ["main"]
