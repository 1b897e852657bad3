"""trioflow: a trio-native workflow engine.

Typed steps chained with then/parallel/branch/loops/foreach/map/sleep; runs you can stream
as typed chunk events, suspend for a human and resume later (in another process), cancel,
restart and observe from any point of their durable event log.
"""

import typing as _typing

from ._agent import ModelChunk as ModelChunk
from ._agent import agent_step as agent_step
from ._broadcast import Subscription as Subscription
from ._context import RequestContext as RequestContext
from ._context import StepContext as StepContext
from ._context import Writer as Writer
from ._core._chunks import Chunk as Chunk
from ._core._chunks import DataChunk as DataChunk
from ._core._chunks import WorkflowCanceled as WorkflowCanceled
from ._core._chunks import WorkflowFinish as WorkflowFinish
from ._core._chunks import WorkflowPaused as WorkflowPaused
from ._core._chunks import WorkflowStart as WorkflowStart
from ._core._chunks import WorkflowStepOutput as WorkflowStepOutput
from ._core._chunks import WorkflowStepProgress as WorkflowStepProgress
from ._core._chunks import WorkflowStepResult as WorkflowStepResult
from ._core._chunks import WorkflowStepStart as WorkflowStepStart
from ._core._chunks import WorkflowStepSuspended as WorkflowStepSuspended
from ._core._chunks import WorkflowStepWaiting as WorkflowStepWaiting
from ._core._errors import EmptyWorkflowError as EmptyWorkflowError
from ._core._errors import MultipleSuspendedStepsError as MultipleSuspendedStepsError
from ._core._errors import NonRetryableError as NonRetryableError
from ._core._errors import NoRuntimeError as NoRuntimeError
from ._core._errors import NotJsonError as NotJsonError
from ._core._errors import NotSuspendedError as NotSuspendedError
from ._core._errors import ResumeAlreadyClaimedError as ResumeAlreadyClaimedError
from ._core._errors import RunAlreadyStartedError as RunAlreadyStartedError
from ._core._errors import RunNotActiveError as RunNotActiveError
from ._core._errors import RuntimeClosedError as RuntimeClosedError
from ._core._errors import SnapshotNotFoundError as SnapshotNotFoundError
from ._core._errors import StepNotSuspendedError as StepNotSuspendedError
from ._core._errors import StepTimeoutError as StepTimeoutError
from ._core._errors import StorageError as StorageError
from ._core._errors import TrioflowError as TrioflowError
from ._core._errors import TripwireError as TripwireError
from ._core._errors import ValidationError as ValidationError
from ._core._errors import WorkflowNotCommittedError as WorkflowNotCommittedError
from ._core._graph import const as const
from ._core._graph import from_context as from_context
from ._core._graph import from_init as from_init
from ._core._graph import from_step as from_step
from ._core._model import RunInfo as RunInfo
from ._core._model import RunState as RunState
from ._core._model import SerializedError as SerializedError
from ._core._model import StepResult as StepResult
from ._core._model import TripwireInfo as TripwireInfo
from ._core._model import Usage as Usage
from ._core._model import WorkflowResult as WorkflowResult
from ._core._serde import from_wire as from_wire
from ._core._serde import to_wire as to_wire
from ._core._status import RunStatus as RunStatus
from ._core._status import StepStatus as StepStatus
from ._legacy import LegacyEvent as LegacyEvent
from ._legacy import LegacyRunOutput as LegacyRunOutput
from ._output import RunOutput as RunOutput
from ._run import Run as Run
from ._runnable import Workflow as Workflow
from ._runnable import create_workflow as create_workflow
from ._runtime import Runtime as Runtime
from ._runtime import open_runtime as open_runtime
from ._version import __version__ as __version__
from ._workflow import RetryConfig as RetryConfig
from ._workflow import Step as Step
from ._workflow import WorkflowGraphError as WorkflowGraphError
from ._workflow import create_step as create_step
from ._workflow import step as step
from .storage import LeaseLostError as LeaseLostError
from .storage import MemoryStorage as MemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import SqliteStorage as SqliteStorage
from .storage import Storage as Storage
from .tracing import TracingOptions as TracingOptions

from ._fixup import fixup_module_metadata as _fixup_module_metadata  # isort: skip

_fixup_module_metadata(__name__, globals())

if _typing.TYPE_CHECKING:
    from . import bridge as bridge


def __getattr__(name: str) -> _typing.Any:
    """``tf.bridge`` is :mod:`trioflow.bridge`, imported on first use (extra ``bridge``):
    the core never imports it."""
    if name == "bridge":
        import importlib

        return importlib.import_module("trioflow.bridge")
    raise AttributeError(f"module 'trioflow' has no attribute {name!r}")
