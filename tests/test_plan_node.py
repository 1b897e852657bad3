"""The node rules of the planner (_core/_plan/_node.py), synchronously and exhaustively."""

from __future__ import annotations

import itertools

import pytest

from trioflow._core._plan._node import (
    consumes_resume,
    interrupted_resume,
    settles_when_cancelled,
)
from trioflow._core._plan._values import NodeResume

RESUMED = NodeResume(data={"ok": True}, tail=[], stored={"status": "suspended"})
CONTINUED = NodeResume(data=None, tail=[], stored={"status": "running"}, restarting=True)


@pytest.mark.parametrize(
    ("resume", "foreach_index", "expected"),
    [
        (None, None, False),  # a fresh node
        (RESUMED, None, True),  # the resumed node spends the resume
        (RESUMED, 2, False),  # a foreach item: its container tracks the resume per item
        (CONTINUED, None, False),  # a restart continuing a nested workflow: no resume
    ],
)
def test_which_settled_node_spends_the_pending_resume(
    resume: NodeResume | None, foreach_index: int | None, expected: bool
) -> None:
    assert consumes_resume(resume, foreach_index) is expected


def test_a_resume_is_interrupted_only_by_the_runtime_while_it_is_pending() -> None:
    for resume, cancel_requested, pending in itertools.product(
        (None, RESUMED, CONTINUED), (False, True), (None, {"path": ["a"]})
    ):
        got = interrupted_resume(resume, cancel_requested=cancel_requested, pending_resume=pending)
        expected = resume is RESUMED and not cancel_requested and pending is not None
        assert got is expected, (resume, cancel_requested, pending)


def test_an_interrupted_node_is_settled_canceled_unless_its_resume_was_interrupted() -> None:
    table = {
        (True, False): True,  # a node of this level, cancelled: canceled
        (True, True): False,  # its resume interrupted by the runtime: stays suspended
        (False, False): False,  # a foreach item: its container settles it
        (False, True): False,
    }
    for (record, interrupted), expected in table.items():
        got = settles_when_cancelled(record=record, resume_interrupted=interrupted)
        assert got is expected
