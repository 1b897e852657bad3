"""One workflow level's book: results, suspended paths, resume labels, path and position,
resume targeting of its nodes, idempotency keys, map sources (pure, trio-free).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._graph import Const, FromContext, FromInit, FromStep, get_path
from .._journal import StepJournal
from .._model import (
    ResumeLabel,
    StepResult,
)
from .._resume import ResumeTarget, full_suspended_paths, nested_header
from .._serde import (
    to_jsonable,
)
from .._status import StepStatus
from ._records import dump_step_result, load_step_result
from ._values import NodeResume, StepRun, merge_state


class LevelBook:
    """What one workflow level has recorded: its results, suspended paths, resume labels,
    path and position, kept in step with the run's journal of stored records (pure: the
    trio driver's ``Level`` runs the graph on top of it)."""

    def __init__(
        self,
        *,
        stored: StepJournal,
        run_id: str,
        resume_data: Any,
        state_schema: Any,
        key_prefix: str,
        chunk_prefix: str,
        input: Any,
        state: Any,
        is_root: bool,
        header: dict[str, Any] | None = None,
        key_scope: str = "",
    ) -> None:
        self.stored = stored
        self.run_id = run_id
        self.resume_data = resume_data
        self.state_schema = state_schema
        self.key_prefix = key_prefix
        #: This level's part of its steps' idempotency keys: ``key_prefix`` with the loop
        #: iteration of every enclosing nested workflow (``body#2.``).
        self.key_scope = key_scope
        self.chunk_prefix = chunk_prefix
        self.input = input
        self.state = state
        self.is_root = is_root
        self.results: dict[str, StepResult] = {}
        self.suspended_paths: dict[str, list[int]] = {}
        self.resume_labels: dict[str, ResumeLabel] = {}
        self.execution_path: list[str] = []
        self._seen: set[str] = set()
        self.active_entry: int | None = 0
        self.active_input: Any = input
        if header is not None:
            self.load_header(header)

    # --- bookkeeping ----------------------------------------------------------------------

    def load_header(self, header: dict[str, Any]) -> None:
        self.suspended_paths = {
            k: list(v) for k, v in (header.get("suspended_paths") or {}).items()
        }
        self.resume_labels = {
            k: ResumeLabel(path=list(v["path"]), foreach_index=v.get("foreach_index"))
            for k, v in (header.get("resume_labels") or {}).items()
        }
        self.execution_path = list(header.get("execution_path") or [])
        self._seen = set(self.execution_path)
        self.active_entry = header.get("active_entry")
        self.active_input = header.get("active_input")
        prefix = self.key_prefix
        for key, stored in self.stored.items():
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if "." not in rest and "[" not in rest and not rest.startswith("@"):
                    self.results[rest] = load_step_result(stored)

    def header(self) -> dict[str, Any]:
        """This level's bookkeeping as stored in its parent step's metadata."""
        return {
            "input": to_jsonable(self.input),
            "state": to_jsonable(self.state),
            "suspended_paths": {k: list(v) for k, v in self.suspended_paths.items()},
            "suspended": self.full_suspended_paths(),
            "resume_labels": {
                k: {"path": v.path, "foreach_index": v.foreach_index}
                for k, v in self.resume_labels.items()
            },
            "execution_path": list(self.execution_path),
            "active_entry": self.active_entry,
            "active_input": to_jsonable(self.active_input),
        }

    def full_suspended_paths(self) -> list[list[str]]:
        stored = {
            k: self.stored.get(self.key_prefix + k, {}) for k in self.suspended_paths
        }
        return full_suspended_paths(self.suspended_paths, stored)

    def suspend_payloads(self) -> dict[str, Any]:
        """``{"step": payload, "nested.inner": payload}`` for every suspended path."""
        out: dict[str, Any] = {}
        for path in self.full_suspended_paths():
            key = self.key_prefix + ".".join(path)
            stored = self.stored.get(key)
            result = self.results.get(path[0])
            if stored is not None:
                out[".".join(path)] = stored.get("suspend_payload")
            elif result is not None:
                out[".".join(path)] = result.suspend_payload
        return out

    def step_output(self, step_id: str) -> Any:
        result = self.results.get(step_id)
        if result is None or result.status is not StepStatus.SUCCESS:
            return None
        return result.output

    def chunk_id(self, node_id: str) -> str:
        return self.chunk_prefix + node_id

    def settle(self, node_id: str, run: StepRun, entry_path: list[int]) -> None:
        """Record a node's result at this level (sync: atomic under trio's scheduling)."""
        result = run.result
        self.results[node_id] = result
        self.stored[self.key_prefix + node_id] = dump_step_result(result)
        if node_id not in self._seen:
            self._seen.add(node_id)
            self.execution_path.append(node_id)
        if self.resume_labels:
            for name in [k for k, v in self.resume_labels.items() if v.path[:1] == [node_id]]:
                del self.resume_labels[name]
        if result.status is StepStatus.SUSPENDED:
            self.suspended_paths[node_id] = entry_path
            for label in run.labels:
                self.resume_labels[label.name] = ResumeLabel(
                    path=[node_id, *label.path], foreach_index=label.foreach_index
                )
        else:
            self.suspended_paths.pop(node_id, None)

    def apply_state(self, update: Any, schema: Any) -> None:
        self.state = merge_state(
            self.state, update, schema if schema is not None else self.state_schema
        )

    def node_resume(self, node_id: str, target: ResumeTarget | None) -> NodeResume | None:
        if target is None or not target.path or target.path[0] != node_id:
            return None
        return NodeResume(
            data=self.resume_data,
            tail=target.path[1:],
            stored=self.stored.get(self.key_prefix + node_id),
            foreach_index=target.foreach_index,
        )

    def restart_resume(self, node_id: str) -> NodeResume | None:
        """On restart, a nested workflow continues from its own stored header."""
        stored = self.stored.get(self.key_prefix + node_id)
        if stored is None or nested_header(stored) is None:
            return None
        return NodeResume(data=None, tail=[], stored=stored, restarting=True)


    def idempotency_key(
        self, node_id: str, foreach_index: int | None, iteration: int, resumes: int
    ) -> str:
        """``ctx.idempotency_key``: the run, then the step's path with, at every depth, the
        foreach index, the loop iteration and the resume count (each only when it applies):
        ``run-1/digest[2].fetch``, ``run-1/poll#3``, ``run-1/approve@1``. Built only from
        what the stored run records, so a restart re-running the step builds it again."""
        key = f"{self.run_id}/{self.key_scope}{node_id}"
        if foreach_index is not None:
            key += f"[{foreach_index}]"
        if iteration:
            key += f"#{iteration}"
        if resumes:
            key += f"@{resumes}"
        return key


    def resolve_source(self, source: Any, context: Callable[[], Mapping[str, Any]]) -> Any:
        """A map source's value; ``context()`` gives the request context (read only for
        a ``FromContext`` source)."""
        if isinstance(source, Const):
            return source.value
        if isinstance(source, FromInit):
            return get_path(self.input, source.path)
        if isinstance(source, FromContext):
            return get_path(context(), source.path)
        if isinstance(source, FromStep):
            result = self.results.get(source.step_id)
            if result is None or result.status is not StepStatus.SUCCESS:
                raise KeyError(f"step {source.step_id!r} has no successful output to map from")
            return get_path(result.output, source.path)
        raise TypeError(f"unknown map source {source!r}")

