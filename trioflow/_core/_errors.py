"""Every exception trioflow raises on purpose.

All inherit :class:`TrioflowError`, except :class:`ValidationError`, which is also a
:class:`ValueError` so that plain ``except ValueError`` keeps working for bad input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class TrioflowError(Exception):
    """Base class of every trioflow error."""


class ValidationError(TrioflowError, ValueError):
    """Data failed its schema.

    ``errors`` holds one ``(path, message)`` pair per failing field, e.g.
    ``("items[2].x", "expected int")``; the message lists them all, one per line, under a
    prefix that says which data it was (``Invalid resume data:`` …).
    """

    def __init__(self, prefix: str, errors: Sequence[tuple[str, str]]) -> None:
        self.prefix = prefix
        self.errors: list[tuple[str, str]] = list(errors)
        lines = "".join(f"\n- {path or '(root)'}: {message}" for path, message in self.errors)
        super().__init__(f"{prefix}{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.prefix, self.errors))


class NotJsonError(ValidationError):
    """A value a step produced (its output, suspend payload, bail value or state update)
    is not strict JSON, so it cannot be stored or sent: the step fails with this error and
    the run ends ``failed``.

    ``what`` names the value (``"Step output"``), ``path`` where it breaks the policy
    (``items[2]``; ``""`` is the value itself) and ``reason`` how; the message is one line,
    e.g. ``Step output is not valid JSON: items[2]: a value of type bytes is not JSON``.
    A :class:`ValidationError` (so also a ``ValueError``), with ``errors`` =
    ``[(path, reason)]``.
    """

    def __init__(self, what: str, path: str, reason: str) -> None:
        self.what = what
        self.path = path
        self.reason = reason
        super().__init__(f"{what} is not valid JSON:", [(path, reason)])
        self.args = (f"{what} is not valid JSON: {path or '(root)'}: {reason}",)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.path, self.reason))


class EmptyWorkflowError(TrioflowError):
    """``create_run()`` on a workflow without any entry."""


class WorkflowNotCommittedError(TrioflowError):
    """``create_run()`` on a workflow whose graph changed since the last ``commit()``."""


class NoRuntimeError(TrioflowError):
    """A run was requested outside ``open_runtime()``."""


class RuntimeClosedError(TrioflowError):
    """The runtime stopped while a caller was waiting for one of its executions."""


class RunAlreadyStartedError(TrioflowError):
    """``start``/``stream`` on a run that already started."""


class NotSuspendedError(TrioflowError):
    """Resume of a run that is not suspended."""

    def __init__(self, message: str = "This workflow run was not suspended") -> None:
        super().__init__(message)


class StepNotSuspendedError(TrioflowError):
    """Resume names a step that is not suspended."""

    def __init__(self, step: str, suspended: Sequence[Sequence[str]]) -> None:
        self.step = step
        self.suspended = [list(p) for p in suspended]
        available = ", ".join(".".join(p) for p in self.suspended)
        super().__init__(
            f'This workflow step "{step}" was not suspended. '
            f"Available suspended steps: [{available}]"
        )


class MultipleSuspendedStepsError(TrioflowError):
    """Resume without a step while several paths are suspended."""

    def __init__(self, suspended: Sequence[Sequence[str]]) -> None:
        self.suspended = [list(p) for p in suspended]
        listed = ", ".join("[" + ", ".join(p) + "]" for p in self.suspended)
        super().__init__(
            f"Multiple suspended steps found: {listed}. "
            'Please specify which step to resume using the "step" parameter.'
        )


class ResumeAlreadyClaimedError(TrioflowError):
    """Another resume of the same suspension won the claim."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"The suspension of run {run_id} was already claimed by another resume")


class SnapshotNotFoundError(TrioflowError):
    """No stored run with that id."""

    def __init__(self, workflow_id: str | None, run_id: str) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        who = f"{workflow_id} {run_id}" if workflow_id else run_id
        super().__init__(f"No snapshot found for this workflow run: {who}")


class RunNotActiveError(TrioflowError):
    """``restart()`` of a run that was never started, or is suspended/canceled/paused."""

    def __init__(self, message: str = "This workflow run was not active") -> None:
        super().__init__(message)


class NonRetryableError(TrioflowError):
    """Raise from a step to fail it without using its remaining retries."""


class StepTimeoutError(TrioflowError):
    """A step attempt took longer than its ``timeout``."""

    def __init__(self, step_id: str, timeout: float) -> None:
        self.step_id = step_id
        self.timeout = timeout
        super().__init__(f"Step {step_id!r} timed out after {timeout:g} s")


class TripwireError(TrioflowError):
    """Raise from a step to end the run with status ``tripwire`` (a guardrail fired)."""

    def __init__(
        self, reason: str, retry: bool = False, metadata: Mapping[str, Any] | None = None
    ) -> None:
        self.reason = reason
        self.retry = retry
        self.metadata = dict(metadata) if metadata is not None else None
        super().__init__(reason)


class StorageError(TrioflowError):
    """The storage backend cannot be used (corrupt or foreign file, unsupported schema)."""


class LeaseLostError(StorageError):
    """This process no longer holds the run's lease: another process claimed the run
    (after this one's lease expired). Nothing was written; the other process continues
    the run (PostgreSQL storage)."""
