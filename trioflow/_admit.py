"""What a start or a resume is checked against before anything runs or is stored: the
values (schemas, and strict JSON for what is stored: SPEC §0), the step a resume names,
the graph. Used by :mod:`trioflow._run` and, for refused requests that must store
nothing, by the websocket bridge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._context import RequestContext, coerce_request_context
from ._core._graph import find_node
from ._errors import ValidationError
from ._serde import to_stored_json, validate
from ._workflow import Step, Workflow


def normalize_step(step: Any) -> list[str] | None:
    if step is None:
        return None
    if isinstance(step, Step | Workflow):
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


def node_at(workflow: Workflow, path: list[str]) -> Any:
    current: Any = workflow
    node: Any = None
    for part in path:
        if not isinstance(current, Workflow):
            return None
        node = find_node(current.entries, part)
        if node is None:
            return None
        current = node
    return node


def initial_state(workflow: Workflow, initial_state: Any) -> Any:
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
    workflow: Workflow, input_data: Any, initial_state_value: Any, request_context: Any
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
