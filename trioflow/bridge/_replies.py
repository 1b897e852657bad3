"""What the bridge server answers: the ``error`` of an exception, a message's frame."""

from __future__ import annotations

import logging
from typing import Any

from .._core import _errors as errors
from .._core._status import RunStatus
from .._runtime import Runtime
from . import _protocol as p
from ._checks import describe

logger = logging.getLogger("trioflow.bridge")


def error_for(exc: Exception, request_id: p.RequestId) -> dict[str, Any]:
    """The ``error`` message for an exception an operation raised."""
    if isinstance(exc, p.ProtocolError):
        return p.error(
            exc.request_id if exc.request_id is not None else request_id, exc.code, exc.message
        )
    if isinstance(exc, errors.ValidationError):
        return p.error(request_id, "validation", str(exc))
    if isinstance(exc, errors.SnapshotNotFoundError):
        return p.error(request_id, "not-found", str(exc))
    if isinstance(
        exc,
        errors.RunAlreadyStartedError
        | errors.NotSuspendedError
        | errors.ResumeAlreadyClaimedError
        | errors.StepNotSuspendedError
        | errors.MultipleSuspendedStepsError
        | errors.RunNotActiveError
        | errors.RuntimeClosedError,
    ):
        return p.error(request_id, "conflict", str(exc))
    if isinstance(exc, ValueError | TypeError | errors.TrioflowError):
        return p.error(request_id, "bad-request", str(exc))
    logger.error("trioflow bridge: request %r failed: %s", request_id, describe(exc), exc_info=exc)
    return p.error(request_id, "internal", f"internal error ({type(exc).__name__})")


async def forget_pending(runtime: Runtime, run_id: str) -> None:
    """Delete a run this request created and could not start (only while it is still
    pending: another request may have started it meanwhile)."""
    snapshot = await runtime.storage.load_snapshot(run_id)
    if snapshot is not None and snapshot.status is RunStatus.PENDING:
        try:
            await runtime.delete_run(run_id)
        except (RuntimeError, errors.StorageError) as exc:
            logger.warning("trioflow bridge: cannot delete refused run %s: %s", run_id, exc)


def frame_of(message: dict[str, Any]) -> bytes:
    """The frame of a server message: strict JSON always. A message that is not (a stored
    value an older trioflow let through) becomes an ``internal`` error for its request."""
    try:
        return p.text_frame(p.encode(message))
    except ValueError as exc:
        kind = message.get("type")
        logger.error("trioflow bridge: cannot send a %s message: %s", kind, exc)
        request_id = message.get("id")
        run_id = message.get("runId")
        fallback = p.error(
            request_id if isinstance(request_id, int | str) else None,
            "internal",
            f"the server cannot send its {kind} message: {exc}",
            run_id=run_id if isinstance(run_id, str) else None,
        )
        try:
            return p.text_frame(p.encode(fallback))
        except ValueError:  # pragma: no cover - ids and run ids are checked when parsed
            return p.text_frame(p.encode(p.error(None, "internal", "unsendable message")))
