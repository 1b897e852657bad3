"""What a start or a resume is checked against before anything runs or is stored: the
values (schemas, and strict JSON for what is stored: SPEC §0), the step a resume names,
the graph. Used by :mod:`trioflow._run` and, for refused requests that must store
nothing, by the websocket bridge."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._context import RequestContext, coerce_request_context
from ._core._errors import ValidationError
from ._core._graph import find_node
from ._core._json import id_text_problem
from ._core._model import RunSnapshot
from ._core._resume import ResumeTarget, check_foreach_index, resolve_target
from ._core._serde import to_stored_json, validate
from ._core._status import RunStatus
from ._workflow import Step, WorkflowGraph


def normalize_step(step: Any) -> list[str] | None:
    if step is None:
        return None
    if isinstance(step, Step | WorkflowGraph):
        return [step.id]
    if isinstance(step, str):
        if not step:
            raise ValueError("step must not be empty")
        return step.split(".")
    if isinstance(step, Sequence):
        out: list[str] = []
        for part in step:
            normalized = normalize_step(part)
            if normalized is None:
                raise TypeError(f"invalid step in path: {part!r}")
            out.extend(normalized)
        return out
    raise TypeError(f"step must be a Step, a Workflow, an id or a list of them, got {step!r}")


def node_at(workflow: WorkflowGraph, path: list[str]) -> Any:
    current: Any = workflow
    node: Any = None
    for part in path:
        if not isinstance(current, WorkflowGraph):
            return None
        node = find_node(current.entries, part)
        if node is None:
            return None
        current = node
    return node


def initial_state(workflow: WorkflowGraph, initial_state: Any) -> Any:
    schema = workflow.state_schema
    if schema is None:
        if initial_state is None:
            return {}
        if not isinstance(initial_state, Mapping):
            raise ValidationError(
                "Invalid initial state:",
                [("", f"expected object, got {type(initial_state).__name__}")],
            )
        return dict(initial_state)
    raw = {} if initial_state is None else initial_state
    if not workflow.validate_inputs:
        return raw
    return validate(raw, schema, "Invalid initial state:")


@attrs.frozen(kw_only=True)
class Admitted:
    """The values of a start that passed validation, and what is stored for each."""

    input: Any
    input_json: Any
    state: Any
    state_json: Any
    context: RequestContext
    context_json: dict[str, Any]


def admit_start(
    workflow: WorkflowGraph, input_data: Any, initial_state_value: Any, request_context: Any
) -> Admitted:
    """The values of a start of ``workflow``, validated, with what is stored for each.

    Raises (before anything is stored): WorkflowNotCommittedError/EmptyWorkflowError/
    WorkflowGraphError for the graph (a nested workflow may have changed since
    ``create_run``), ValidationError (``Invalid input data:``, ``Invalid initial state:``,
    ``Invalid request context:``) for values that fail their schema or are not strict
    JSON as stored, TypeError for a request context that is not a mapping.
    """
    workflow.check_runnable()
    if workflow.validate_inputs and workflow.input_schema is not None:
        input_value = validate(input_data, workflow.input_schema, "Invalid input data:")
    else:
        input_value = input_data
    state = initial_state(workflow, initial_state_value)
    context = coerce_request_context(request_context)
    return Admitted(
        input=input_value,
        input_json=to_stored_json(input_value, "Invalid input data:"),
        state=state,
        state_json=to_stored_json(state, "Invalid initial state:"),
        context=context,
        context_json=to_stored_json(dict(context), "Invalid request context:"),
    )


#: Beyond this (SQLite's and PostgreSQL's largest integer) no backend has rows to skip.
_MAX_ROWS = 2**63 - 1


def row_count(name: str, value: object) -> int:
    """``limit``/``offset`` of a run listing: an int >= 0 (else ValueError), capped where
    every backend has run out of rows."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return min(value, _MAX_ROWS)


def unstorable_id(run_id: object) -> bool:
    """An id no backend can store (so no stored run has it)."""
    return isinstance(run_id, str) and id_text_problem(run_id) is not None


def check_run_ids(run_id: object, resource_id: object) -> None:
    """ValueError unless the ids are texts every backend stores alike."""
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    if resource_id is not None and not isinstance(resource_id, str):
        raise ValueError(f"resource_id must be a str or None, got {resource_id!r}")
    for name, value in (("run_id", run_id), ("resource_id", resource_id)):
        problem = None if value is None else id_text_problem(value)
        if problem is not None:
            raise ValueError(f"{name} {value!r} {problem}")


@attrs.frozen(kw_only=True)
class StartInfo:
    """What ``on_start`` receives."""

    run_id: str
    workflow_id: str
    resource_id: str | None
    input_data: Any
    state: Any
    request_context: RequestContext

    def get_init_data(self) -> Any:
        return self.input_data


def deprecated_context(
    request_context: Any, runtime_context: Any
) -> RequestContext | Mapping[str, Any] | None:
    if runtime_context is not None:
        warnings.warn(
            "runtime_context= is deprecated; use request_context=", DeprecationWarning, stacklevel=3
        )
        if request_context is None:
            return runtime_context  # type: ignore[no-any-return]
    return request_context  # type: ignore[no-any-return]


@attrs.frozen(kw_only=True)
class AdmittedResume:
    """A resume's target, its validated data, the merged request context, and the
    snapshot that claims the suspended run for it (status ``running``, ``resume`` set)."""

    target: ResumeTarget
    data: Any
    context: RequestContext
    claimed: RunSnapshot


def admit_resume(
    workflow: WorkflowGraph,
    snapshot: RunSnapshot,
    resume_data: Any,
    *,
    path: list[str] | None,
    label: str | None,
    for_each_index: int | None,
    caller_context: RequestContext,
    trace_id: str,
    now: int,
) -> AdmittedResume:
    """The resume of the suspended ``snapshot`` that these arguments ask for; raises
    (before anything is stored) what ``resolve_target`` and ``check_foreach_index`` raise
    for a wrong target, ValidationError (``Invalid resume data:``, ``Invalid request
    context:``) for values that fail their schema or are not strict JSON."""
    target = resolve_target(
        step=path,
        label=label,
        for_each_index=for_each_index,
        suspended_paths=snapshot.suspended_paths,
        steps=snapshot.steps,
        resume_labels=snapshot.resume_labels,
    )
    check_foreach_index(target, snapshot.steps)
    node = node_at(workflow, target.path)
    data = resume_data
    schema = getattr(node, "resume_schema", None)
    if schema is not None and workflow.validate_inputs:
        data = validate(resume_data, schema, "Invalid resume data:")
    data_json = to_stored_json(data, "Invalid resume data:")
    context = RequestContext({**snapshot.request_context, **caller_context})
    to_stored_json(dict(context), "Invalid request context:")
    claimed = attrs.evolve(
        snapshot,
        status=RunStatus.RUNNING,
        request_context=context.to_dict(),
        trace_id=trace_id,
        resume={
            "path": list(target.path),
            "data": data_json,
            "foreach_index": target.foreach_index,
        },
        updated_at=now,
    )
    return AdmittedResume(target=target, data=data, context=context, claimed=claimed)


def interrupted_resume(
    workflow: WorkflowGraph, pending: Mapping[str, Any]
) -> tuple[ResumeTarget, Any]:
    """The target and validated data of the resume a stored run was executing when its
    process died (``RunSnapshot.resume``), to continue it on restart."""
    target = ResumeTarget(path=list(pending["path"]), foreach_index=pending.get("foreach_index"))
    node = node_at(workflow, target.path)
    data = pending.get("data")
    schema = getattr(node, "resume_schema", None)
    if schema is not None and workflow.validate_inputs:
        data = validate(data, schema, "Invalid resume data:")
    return target, data
