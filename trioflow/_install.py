"""How to add an extra to this installation of trioflow, for the hints of error messages.

trioflow is not published on a package index: it is installed from a checkout of its
repository (``pip install -e "/path/to/trioflow[cli]"``) or from a wheel built there with
``python -m build``. A hint naming the bare project with an extra would send the user to
a package index that does not have it, so hints come from :func:`install_hint`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ._version import __version__


def checkout_root() -> Path | None:
    """The checkout this trioflow is installed from (an editable install), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "trioflow"' in pyproject else None


def install_hint(extra: str) -> str:
    """The command that adds ``extra`` (e.g. ``"bridge"``) to this installation."""
    root = checkout_root()
    if root is not None:
        return f"pip install -e {shlex.quote(f'{root}[{extra}]')}"
    wheel = f"trioflow-{__version__}-py3-none-any.whl"
    return (
        f"pip install '{wheel}[{extra}]' (the wheel built with 'python -m build' in a "
        f"trioflow checkout), or pip install -e '/path/to/trioflow[{extra}]' from the checkout"
    )
