"""A node's resume and interruption (pure, trio-free): when the execution's pending resume
is spent, and whether a node interrupted by cancellation is settled ``canceled``.

Rules:

- A resumed node consumes the execution's pending resume when it settles, so that from
  the next write on a restart after a crash does not apply the resume again. Not a
  restart continuing a nested workflow from its header (no resume data), and not a
  foreach item: the foreach tracks its items' resumes one by one (their records carry the
  resume's token).
- A resume was *interrupted* when the runtime (not a cancel of the run) stopped the
  execution while a node it resumes ran, the resume still pending: the node's stored
  suspended record and path stay as they were, so restart() replays the resume as it was
  (its suspend data, its resume count). A foreach being resumed stays suspended.
- A node interrupted by cancellation is settled ``canceled`` at its level (foreach items
  are settled by their container), unless its resume was interrupted.
"""

from __future__ import annotations

from typing import Any

from ._values import NodeResume


def consumes_resume(resume: NodeResume | None, foreach_index: int | None) -> bool:
    """Whether the node that just settled has spent the execution's pending resume."""
    return resume is not None and not resume.restarting and foreach_index is None


def interrupted_resume(
    resume: NodeResume | None, *, cancel_requested: bool, pending_resume: Any
) -> bool:
    """Whether a cancellation reaching a node resumed with ``resume`` interrupts the
    resume (the runtime stopped, the resume still pending) rather than ends it."""
    return (
        resume is not None
        and not resume.restarting
        and not cancel_requested
        and pending_resume is not None
    )


def settles_when_cancelled(*, record: bool, resume_interrupted: bool) -> bool:
    """Whether a node interrupted by cancellation gets its ``canceled`` result at its
    level (``record``: not a foreach item, which its container settles)."""
    return record and not resume_interrupted
