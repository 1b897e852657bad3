"""The runtime's tracer behind a guard: a tracer that raises cannot break a run."""

from __future__ import annotations

import logging
from typing import Any

import trio

logger = logging.getLogger("trioflow")


class GuardedTracer:
    """The runtime's tracer, called so that it cannot break a run: spans are telemetry,
    and an exporter that raises (network down, a bug) is logged, once per kind of
    error, while the runs go on. Only ``KeyboardInterrupt`` (and trio's ``Cancelled``)
    passes."""

    __slots__ = ("_reported", "tracer")

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self._reported: set[type[BaseException]] = set()

    def span_started(self, span: Any) -> None:
        try:
            self.tracer.span_started(span)
        except (KeyboardInterrupt, trio.Cancelled):
            raise
        except BaseException as exc:
            self._report("span_started", exc)

    def span_ended(self, span: Any) -> None:
        try:
            self.tracer.span_ended(span)
        except (KeyboardInterrupt, trio.Cancelled):
            raise
        except BaseException as exc:
            self._report("span_ended", exc)

    def _report(self, method: str, exc: BaseException) -> None:
        if type(exc) not in self._reported:
            self._reported.add(type(exc))
            logger.error(
                "tracer %r: %s raised %r (ignored: runs go on without that span)",
                self.tracer,
                method,
                exc,
                exc_info=exc,
            )
