"""Tools for testing workflows and trioflow itself.

Without extra dependencies: a scripted model for agent steps (:class:`ScriptedModel`), a
fault-injecting storage (:class:`FaultyStorage`), :func:`check_stream_invariants`, the
crash-point harness (:func:`check_crash_points`, :func:`drive_run`), workflow specs with a
reference model of their outcome, :func:`run_on_mock_clock` to call all of this from
sync tests, and :func:`local_postgres`: a throwaway private PostgreSQL server (Debian's or
``$TRIOFLOW_PG_BINDIR``'s binaries) for testing against :class:`trioflow.PostgresStorage`. The pytest plugin (``trioflow.testing._plugin``, registered as a ``pytest11``
entry point) adds fixtures: a runtime on trio's MockClock, MemoryStorage/SqliteStorage.

With hypothesis installed, :mod:`trioflow.testing.strategies` has the strategies
``workflows()``, ``inputs_for()`` and ``fault_plans()`` (and ``profile_settings()``); they
are also reachable as attributes of this package (imported on first use, so they are not
in ``__all__``: ``from trioflow.testing import *`` never needs hypothesis).

Every public name is described in ``docs/testing.md`` (with examples) and
``docs/api.md``; ``tests/test_testing_docs.py`` checks that none is left out.
"""

from typing import Any as _Any

from .._fixup import fixup_module_metadata as _fixup_module_metadata
from ._faults import FaultyStorage as FaultyStorage
from ._faults import SimulatedCrash as SimulatedCrash
from ._harness import ClockGuardStorage as ClockGuardStorage
from ._harness import CrashPoint as CrashPoint
from ._harness import CrashPointMismatch as CrashPointMismatch
from ._harness import CrashPointReport as CrashPointReport
from ._harness import Resumer as Resumer
from ._harness import RunRecord as RunRecord
from ._harness import StepCounter as StepCounter
from ._harness import check_crash_points as check_crash_points
from ._harness import compare_recovered as compare_recovered
from ._harness import crash_and_recover as crash_and_recover
from ._harness import drive_run as drive_run
from ._harness import outcome_view as outcome_view
from ._harness import resume_with as resume_with
from ._harness import run_on_mock_clock as run_on_mock_clock
from ._harness import settled_view as settled_view
from ._invariants import check_stream_invariants as check_stream_invariants
from ._model import ScriptedModel as ScriptedModel
from ._pgserver import LocalPostgres as LocalPostgres
from ._pgserver import PostgresNotFound as PostgresNotFound
from ._pgserver import local_postgres as local_postgres
from ._pgserver import start_local_postgres as start_local_postgres
from ._reference import Expected as Expected
from ._reference import ModelError as ModelError
from ._reference import ReferenceModel as ReferenceModel
from ._reference import ResumeRequest as ResumeRequest
from ._reference import chunk_signature as chunk_signature
from ._scenario import FaultPlan as FaultPlan
from ._scenario import GeneratedWorkflow as GeneratedWorkflow
from ._scenario import ModelMismatch as ModelMismatch
from ._scenario import ResumePlan as ResumePlan
from ._scenario import RunPlan as RunPlan
from ._scenario import ScenarioRecord as ScenarioRecord
from ._scenario import check_against_model as check_against_model
from ._scenario import execution_differences as execution_differences
from ._scenario import wire_problems as wire_problems
from ._spec import BranchSpec as BranchSpec
from ._spec import EntrySpec as EntrySpec
from ._spec import ForeachSpec as ForeachSpec
from ._spec import LoopSpec as LoopSpec
from ._spec import MapSpec as MapSpec
from ._spec import NodeSpec as NodeSpec
from ._spec import ParallelSpec as ParallelSpec
from ._spec import ResumeData as ResumeData
from ._spec import ScriptedStepError as ScriptedStepError
from ._spec import SleepSpec as SleepSpec
from ._spec import StepSpec as StepSpec
from ._spec import ThenSpec as ThenSpec
from ._spec import WorkflowSpec as WorkflowSpec
from ._spec import build_workflow as build_workflow
from ._spec import describe as describe
from ._spec import walk_entries as walk_entries
from ._spec import walk_steps as walk_steps

__all__ = [
    "BranchSpec",
    "ClockGuardStorage",
    "CrashPoint",
    "CrashPointMismatch",
    "CrashPointReport",
    "EntrySpec",
    "Expected",
    "FaultPlan",
    "FaultyStorage",
    "ForeachSpec",
    "GeneratedWorkflow",
    "LocalPostgres",
    "LoopSpec",
    "MapSpec",
    "ModelError",
    "ModelMismatch",
    "NodeSpec",
    "ParallelSpec",
    "PostgresNotFound",
    "ReferenceModel",
    "ResumeData",
    "ResumePlan",
    "ResumeRequest",
    "Resumer",
    "RunPlan",
    "RunRecord",
    "ScenarioRecord",
    "ScriptedModel",
    "ScriptedStepError",
    "SimulatedCrash",
    "SleepSpec",
    "StepCounter",
    "StepSpec",
    "ThenSpec",
    "WorkflowSpec",
    "build_workflow",
    "check_against_model",
    "check_crash_points",
    "check_stream_invariants",
    "chunk_signature",
    "compare_recovered",
    "crash_and_recover",
    "describe",
    "drive_run",
    "execution_differences",
    "local_postgres",
    "outcome_view",
    "resume_with",
    "run_on_mock_clock",
    "settled_view",
    "start_local_postgres",
    "walk_entries",
    "walk_steps",
    "wire_problems",
]

_fixup_module_metadata(__name__, globals())

_LAZY = ("workflows", "inputs_for", "fault_plans", "profile_settings")


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        try:
            from . import strategies
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from .._install import install_hint

            raise ImportError(
                f"trioflow.testing.{name} needs hypothesis: {install_hint('testing')}"
            ) from exc
        return getattr(strategies, name)
    raise AttributeError(f"module 'trioflow.testing' has no attribute {name!r}")
