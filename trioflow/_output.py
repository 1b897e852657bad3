"""RunOutput: what ``stream()``/``resume_stream()`` return (SPEC §3.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from ._broadcast import Subscription, ends_at_any_finish
from ._core._chunks import Chunk, WorkflowFinish, WorkflowStart
from ._core._errors import RuntimeClosedError
from ._core._model import Usage, WorkflowResult
from ._core._status import TERMINAL, RunStatus
from ._driver._execution import Execution
from ._hub import RunHub


async def wait_for(execution: Execution) -> WorkflowResult:
    """The result ``execution`` ends with; its failure (or RuntimeClosedError) when it
    died without one. Cancelling it only stops waiting."""
    await execution.done.wait()
    if execution.result is not None:
        return execution.result
    if execution.failure is not None:
        raise execution.failure
    raise RuntimeClosedError(f"run {execution.run_id} did not finish")


class RunOutput:
    """What ``stream()``/``resume_stream()`` return.

    ``async for chunk in out`` replays from this stream's first chunk, then follows live,
    and ends after its ``workflow-finish``. Every iteration (and :meth:`full_stream`) is an
    independent subscriber. With ``close_on_suspend=False`` a suspension does not end the
    stream: a later resume of the same run feeds it, and :meth:`result` is the final
    outcome. The resume may happen in another process on the same durable storage: the
    stream and :meth:`result` then follow the stored log to the run's final
    ``workflow-finish`` (and the result is the one stored with it).
    """

    def __init__(
        self, hub: RunHub, workflow_id: str, execution: Execution, *, close_on_suspend: bool
    ) -> None:
        self._hub = hub
        self._workflow_id = workflow_id
        self._execution = execution
        self._start_seq = execution.log.next_seq - 1
        self.close_on_suspend = close_on_suspend
        self._subscriptions: list[Subscription] = []
        self._executions: list[Execution] = [execution]
        #: Where following the log for executions in other processes goes on from.
        self._scan_seq = self._start_seq
        #: The stored result when another process continued the run to its end.
        self._elsewhere: WorkflowResult | None = None
        self._usage_elsewhere = Usage()

    @property
    def run_id(self) -> str:
        return self._hub.run_id

    @property
    def workflow_id(self) -> str:
        return self._workflow_id

    @property
    def trace_id(self) -> str:
        return self._execution.trace_id

    @property
    def status(self) -> RunStatus:
        """The run's current status."""
        return self._hub.status

    def full_stream(self) -> Subscription:
        """A new, independent subscriber over this stream's chunks."""
        if self.close_on_suspend:
            sub = Subscription(
                self._hub.log,
                from_seq=self._start_seq,
                ends_after=ends_at_any_finish,
                abandoned=self._abandoned,
            )
        else:
            first = self._start_seq

            def skip(chunk: Chunk) -> bool:
                if isinstance(chunk, WorkflowStart):
                    return chunk.seq != first
                return isinstance(chunk, WorkflowFinish) and (
                    chunk.payload.workflow_status == "suspended"
                )

            sub = Subscription(
                self._hub.log,
                from_seq=first,
                ends_after=_ends_unless_suspended,
                skip=skip,
                abandoned=self._abandoned,
            )
        self._subscriptions.append(sub)
        return sub

    def _abandoned(self) -> BaseException | None:
        """Why this stream can get no more chunks here: the execution feeding it (with
        ``close_on_suspend=False``, the run's latest one in this process) died without
        its ``workflow-finish``, as :meth:`result` reports it; else None."""
        execution = self._execution
        if not self.close_on_suspend and self._hub.latest is not None:
            execution = self._hub.latest
        if not execution.done.is_set() or execution.result is not None:
            return None
        if execution.failure is not None:
            return execution.failure
        return RuntimeClosedError(f"run {execution.run_id} did not finish")

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self.full_stream()

    async def _final_executions(self) -> list[Execution]:
        execution = self._executions[-1]
        while True:
            await execution.done.wait()
            if execution.result is None:
                if execution.failure is not None:
                    raise execution.failure
                raise RuntimeClosedError(f"run {execution.run_id} did not finish")
            if self.close_on_suspend or execution.result.status is not RunStatus.SUSPENDED:
                return list(self._executions)
            # Suspended, and this stream stays open: the run continues here or elsewhere.
            following = await self._next_execution(execution)
            if following is None:
                return list(self._executions)
            execution = following
            self._executions.append(execution)

    async def _next_execution(self, suspended: Execution) -> Execution | None:
        """The execution in this process that continues the run after ``suspended``; None
        when the run ends without one here: canceled while suspended, or continued to its
        end by another process (this follows the stored log until its final
        ``workflow-finish``; :attr:`_elsewhere` is then the stored result)."""
        hub = self._hub
        if self._elsewhere is not None:
            await trio.lowlevel.checkpoint()
            return None
        if hub.last_ended is suspended:
            self._scan_seq = max(self._scan_seq, hub.last_end_seq)
        async with Subscription(
            hub.log, from_seq=self._scan_seq, ends_after=_ends_unless_suspended
        ) as sub:
            while True:
                latest = hub.latest
                if latest is not None and latest is not suspended:
                    return latest
                if hub.external_result is not None and hub.status in TERMINAL:
                    return None
                try:
                    chunk = await sub.__anext__()
                except StopAsyncIteration:
                    break
                self._scan_seq = chunk.seq + 1
                if isinstance(chunk, WorkflowFinish):
                    # Written by an execution in another process (one here would be latest).
                    self._usage_elsewhere = self._usage_elsewhere + chunk.payload.usage
        latest = hub.latest
        if latest is not None and latest is not suspended:
            return latest
        if hub.external_result is None:
            self._elsewhere = await hub.load_stored_result()
        return None

    async def result(self) -> WorkflowResult:
        """The WorkflowResult of this stream (see the class docstring)."""
        executions = await self._final_executions()
        last = executions[-1]
        if self._elsewhere is not None:
            return self._elsewhere
        external = self._hub.external_result
        if (
            external is not None
            and last.result is not None
            and last.result.status is RunStatus.SUSPENDED
            and external.status in TERMINAL
        ):
            return external
        assert last.result is not None
        return last.result

    async def usage(self) -> Usage:
        """Token usage summed over this stream's executions (in another process too);
        resolves when it ends."""
        executions = await self._final_executions()
        total = self._usage_elsewhere
        for execution in executions:
            total = total + execution.usage
        return total

    async def aclose(self) -> None:
        """Detach every subscriber this output created."""
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions.clear()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> RunOutput:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _ends_unless_suspended(chunk: Chunk) -> bool:
    return isinstance(chunk, WorkflowFinish) and chunk.payload.workflow_status != "suspended"
