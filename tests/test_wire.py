"""The wire format of chunks: `tf.to_wire` / `tf.from_wire`.

Contract: SPEC §3.4 (the Mastra-shaped JSON `{"type", "runId", "from", "seq", "payload"}`,
camelCased field names and never renamed user data, `None` fields left out, `DataChunk`
carries `data` at the top level, `workflow-finish` carries usage at
`payload.output.usage`, `from_wire` accepts Mastra-shaped dicts that leave out optional
fields, `from_wire(to_wire(c)) == c` for every chunk), SPEC §3.2 (chunk classes and payload
fields; chunk errors are `tf.SerializedError`). Background: mastra-behaviour.md §2.2 (the
envelope, `stepName` copies `id`) and §2.3 (the event catalogue and its example chunks).

A hypothesis strategy builds chunks of every class in `trioflow._core._chunks` (payloads
with arbitrary JSON user data, errors with extra fields and cause chains, tripwires, usage);
the chunks of real runs (then/sleep/foreach/suspend/cancel/failure/writer/custom/tripwire)
must round trip too, directly and through `json`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import cattrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._core import _chunks as chunks_mod

# --------------------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
keys = st.text(max_size=10) | st.sampled_from(["snake_case", "inner_key", "step_name", "type"])
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(keys, json_values, max_size=4)
texts = st.text(max_size=16)
opt_texts = st.none() | texts
timestamps = st.none() | st.integers(min_value=0, max_value=2**53)
counts = st.integers(min_value=0, max_value=10_000)
usages = st.builds(
    tf.Usage,
    input_tokens=counts,
    output_tokens=counts,
    total_tokens=counts,
    reasoning_tokens=counts,
    cached_input_tokens=counts,
    cache_creation_input_tokens=counts,
)
tripwires = st.builds(
    tf.TripwireInfo,
    reason=texts,
    retry=st.booleans(),
    metadata=st.none() | json_objects,
    step_id=opt_texts,
)
#: Error attributes as exceptions carry them; includes the common ``message``/``name``.
error_keys = st.sampled_from(
    ["status_code", "code", "retryable", "message", "name", "cause", "extra"]
) | st.text(min_size=1, max_size=10)
errors: st.SearchStrategy[tf.SerializedError] = st.deferred(
    lambda: st.builds(
        tf.SerializedError,
        message=texts,
        name=st.sampled_from(["Error", "ValueError", "PaymentError"]) | texts,
        extra=st.dictionaries(error_keys, json_values, max_size=3),
        cause=st.none() | errors,
    )
)

run_ids = st.uuids().map(str) | texts
origins = st.sampled_from(["WORKFLOW", "USER"])
seqs = st.integers(min_value=0, max_value=2**40)

payload_strategies: dict[str, st.SearchStrategy[Any]] = {
    "workflow-start": st.builds(
        chunks_mod.WorkflowStartPayload, workflow_id=texts, restart=st.booleans()
    ),
    "workflow-step-start": st.builds(
        chunks_mod.StepStartPayload,
        id=texts,
        step_name=texts,
        step_call_id=opt_texts,
        status=st.just("running") | texts,
        payload=json_values,
        started_at=timestamps,
        resume_payload=json_values,
        resumed_at=timestamps,
        metadata=st.none() | json_objects,
    ),
    "workflow-step-output": st.builds(
        chunks_mod.StepOutputPayload, output=json_values, step_name=texts, run_id=opt_texts
    ),
    "workflow-step-progress": st.builds(
        chunks_mod.StepProgressPayload,
        id=texts,
        step_name=texts,
        completed_count=counts,
        total_count=counts,
        current_index=counts,
        iteration_status=st.sampled_from(["success", "failed", "suspended"]),
        iteration_output=json_values,
    ),
    "workflow-step-waiting": st.builds(
        chunks_mod.StepWaitingPayload,
        id=texts,
        step_name=texts,
        payload=json_values,
        started_at=timestamps,
        status=st.just("waiting"),
    ),
    "workflow-step-suspended": st.builds(
        chunks_mod.StepSuspendedPayload,
        id=texts,
        step_name=texts,
        status=st.just("suspended"),
        suspend_payload=json_values,
        suspend_output=json_values,
        suspended_at=timestamps,
        payload=json_values,
        started_at=timestamps,
        step_call_id=opt_texts,
    ),
    "workflow-step-result": st.builds(
        chunks_mod.StepResultPayload,
        id=texts,
        step_name=texts,
        status=st.sampled_from(["success", "failed", "bailed", "canceled", "tripwire"]),
        output=json_values,
        payload=json_values,
        error=st.none() | errors,
        started_at=timestamps,
        ended_at=timestamps,
        resume_payload=json_values,
        resumed_at=timestamps,
        step_call_id=opt_texts,
        tripwire=st.none() | tripwires,
        metadata=st.none() | json_objects,
        retry_count=st.integers(min_value=0, max_value=10),
    ),
    "workflow-paused": st.builds(chunks_mod.EmptyPayload),
    "workflow-canceled": st.builds(chunks_mod.EmptyPayload),
    "workflow-finish": st.builds(
        chunks_mod.WorkflowFinishPayload,
        workflow_status=st.sampled_from(
            ["success", "failed", "suspended", "canceled", "tripwire", "paused"]
        ),
        usage=usages,
        metadata=json_objects,
        tripwire=st.none() | tripwires,
        final_workflow_result=json_values,
    ),
}

#: Every chunk class of trioflow._core._chunks (the union ``Chunk``).
ALL_CHUNK_CLASSES: tuple[type[Any], ...] = tf.Chunk.__args__  # type: ignore[attr-defined]


def chunk_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    if cls is tf.DataChunk:
        return st.builds(
            tf.DataChunk,
            type=texts.map(lambda s: "data-" + s),
            run_id=run_ids,
            from_=origins,
            seq=seqs,
            data=json_values,
        )
    return st.builds(
        cls,
        run_id=run_ids,
        from_=origins,
        seq=seqs,
        payload=payload_strategies[cls.TYPE],
    )


any_chunk = st.one_of([chunk_strategy(cls) for cls in ALL_CHUNK_CLASSES])


def test_the_strategy_covers_every_chunk_class() -> None:
    classes = {
        obj
        for obj in vars(chunks_mod).values()
        if isinstance(obj, type)
        and attrs.has(obj)
        # Chunks, not payloads (StepOutputPayload has a run_id too); not the module name
        # (the package re-exports chunk classes under its own name).
        and {"seq", "run_id"} <= set(attrs.fields_dict(obj))
    }
    assert classes == set(ALL_CHUNK_CLASSES)
    assert len(classes) == 11
    assert set(payload_strategies) == set(chunks_mod.CHUNK_CLASSES)


# --------------------------------------------------------------------------- helpers


def round_trips(chunk: Any) -> None:
    """from_wire(to_wire(c)) == c, directly and through a JSON text."""
    wire = tf.to_wire(chunk)
    assert tf.from_wire(wire) == chunk
    text = json.dumps(wire)
    assert tf.from_wire(json.loads(text)) == chunk


def walk_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = list(value)
        for item in value.values():
            found.extend(walk_keys(item))
        return found
    if isinstance(value, list):
        return [k for item in value for k in walk_keys(item)]
    return []


def step_start(**payload: Any) -> tf.WorkflowStepStart:
    return tf.WorkflowStepStart(run_id="r1", seq=2, payload=chunks_mod.StepStartPayload(**payload))


def step_result(**payload: Any) -> tf.WorkflowStepResult:
    return tf.WorkflowStepResult(
        run_id="r1", seq=3, payload=chunks_mod.StepResultPayload(**payload)
    )


def finish(**payload: Any) -> tf.WorkflowFinish:
    return tf.WorkflowFinish(
        run_id="r1", seq=9, payload=chunks_mod.WorkflowFinishPayload(**payload)
    )


USER_DATA = {"snake_case": {"inner_key": 1, "deeper_list": [{"a_b": None}]}}

# --------------------------------------------------------------------------- to_wire shape


def test_workflow_start_wire_shape() -> None:
    chunk = tf.WorkflowStart(
        run_id="r1", seq=1, payload=chunks_mod.WorkflowStartPayload(workflow_id="orders")
    )
    assert tf.to_wire(chunk) == {
        "type": "workflow-start",
        "runId": "r1",
        "from": "WORKFLOW",
        "seq": 1,
        "payload": {"workflowId": "orders"},
    }


def test_a_restarted_workflow_start_carries_restart_only_when_true() -> None:
    restarted = tf.WorkflowStart(
        run_id="r1",
        seq=7,
        payload=chunks_mod.WorkflowStartPayload(workflow_id="orders", restart=True),
    )
    assert tf.to_wire(restarted)["payload"] == {"workflowId": "orders", "restart": True}
    round_trips(restarted)
    plain = attrs.evolve(
        restarted, payload=chunks_mod.WorkflowStartPayload(workflow_id="orders", restart=False)
    )
    assert tf.to_wire(plain)["payload"] == {"workflowId": "orders"}
    round_trips(plain)
    # A log stored before the field existed loads as a start that is not a restart.
    old = {"type": "workflow-start", "runId": "r1", "seq": 1, "payload": {"workflowId": "o"}}
    assert tf.from_wire(old).payload.restart is False
    with pytest.raises(ValueError, match=r"payload\.restart: expected bool, got str"):
        tf.from_wire({**old, "payload": {"workflowId": "o", "restart": "yes"}})


def test_step_result_retry_count_is_on_the_wire_only_when_above_zero() -> None:
    retried = step_result(id="s", step_name="s", status="success", output=1, retry_count=2)
    assert tf.to_wire(retried)["payload"]["retryCount"] == 2
    round_trips(retried)
    first_time = step_result(id="s", step_name="s", status="success", output=1)
    assert "retryCount" not in tf.to_wire(first_time)["payload"]
    round_trips(first_time)
    with pytest.raises(ValueError, match=r"payload\.retryCount: expected int, got bool"):
        tf.from_wire(
            {
                **tf.to_wire(first_time),
                "payload": {"id": "s", "retryCount": True, "status": "success"},
            }
        )


def test_step_start_fields_are_camel_case_and_none_fields_are_left_out() -> None:
    wire = tf.to_wire(
        step_start(id="a", step_name="a", step_call_id="c-1", payload={"x": 1}, started_at=5)
    )
    assert wire["payload"] == {
        "id": "a",
        "stepName": "a",
        "stepCallId": "c-1",
        "status": "running",
        "payload": {"x": 1},
        "startedAt": 5,
    }


def test_resumed_step_start_uses_resume_payload_and_resumed_at() -> None:
    wire = tf.to_wire(step_start(id="a", step_name="a", resume_payload={"ok": True}, resumed_at=7))
    assert wire["payload"]["resumePayload"] == {"ok": True}
    assert wire["payload"]["resumedAt"] == 7
    assert "payload" not in wire["payload"]
    assert "startedAt" not in wire["payload"]


def test_step_result_fields_are_camel_case() -> None:
    wire = tf.to_wire(
        step_result(
            id="a",
            step_name="a",
            status="success",
            output=1,
            payload=0,
            started_at=1,
            ended_at=2,
        )
    )
    assert wire["payload"] == {
        "id": "a",
        "stepName": "a",
        "status": "success",
        "output": 1,
        "payload": 0,
        "startedAt": 1,
        "endedAt": 2,
    }


def test_progress_fields_are_camel_case() -> None:
    chunk = tf.WorkflowStepProgress(
        run_id="r1",
        seq=4,
        payload=chunks_mod.StepProgressPayload(
            id="each",
            step_name="each",
            completed_count=2,
            total_count=5,
            current_index=1,
            iteration_status="success",
            iteration_output={"item_value": 3},
        ),
    )
    assert tf.to_wire(chunk)["payload"] == {
        "id": "each",
        "stepName": "each",
        "completedCount": 2,
        "totalCount": 5,
        "currentIndex": 1,
        "iterationStatus": "success",
        "iterationOutput": {"item_value": 3},
    }


def test_suspended_fields_are_camel_case() -> None:
    chunk = tf.WorkflowStepSuspended(
        run_id="r1",
        seq=3,
        payload=chunks_mod.StepSuspendedPayload(
            id="g", step_name="g", suspend_payload={"why_not": 1}, suspended_at=9, payload=2
        ),
    )
    assert tf.to_wire(chunk)["payload"] == {
        "id": "g",
        "stepName": "g",
        "status": "suspended",
        "suspendPayload": {"why_not": 1},
        "suspendedAt": 9,
        "payload": 2,
    }


def test_waiting_fields_are_camel_case() -> None:
    chunk = tf.WorkflowStepWaiting(
        run_id="r1",
        seq=3,
        payload=chunks_mod.StepWaitingPayload(id="sleep_1", step_name="sleep_1", started_at=4),
    )
    assert tf.to_wire(chunk)["payload"] == {
        "id": "sleep_1",
        "stepName": "sleep_1",
        "startedAt": 4,
        "status": "waiting",
    }


def test_workflow_finish_carries_usage_at_payload_output_usage() -> None:
    usage = tf.Usage(input_tokens=10, output_tokens=20, total_tokens=30, reasoning_tokens=1)
    wire = tf.to_wire(finish(workflow_status="success", usage=usage))
    assert wire["payload"] == {
        "workflowStatus": "success",
        "metadata": {},
        "output": {
            "usage": {
                "inputTokens": 10,
                "outputTokens": 20,
                "totalTokens": 30,
                "reasoningTokens": 1,
                "cachedInputTokens": 0,
                "cacheCreationInputTokens": 0,
            }
        },
    }
    assert "usage" not in wire["payload"]


def test_workflow_finish_tripwire_is_camel_case() -> None:
    info = tf.TripwireInfo(reason="blocked", retry=True, metadata={"rule_id": 3}, step_id="s")
    wire = tf.to_wire(finish(workflow_status="tripwire", tripwire=info))
    assert wire["payload"]["tripwire"] == {
        "reason": "blocked",
        "retry": True,
        "metadata": {"rule_id": 3},
        "stepId": "s",
    }


def test_paused_and_canceled_have_an_empty_payload() -> None:
    for cls in (tf.WorkflowPaused, tf.WorkflowCanceled):
        wire = tf.to_wire(cls(run_id="r1", seq=5))
        assert wire == {
            "type": cls.TYPE,
            "runId": "r1",
            "from": "WORKFLOW",
            "seq": 5,
            "payload": {},
        }


def test_step_output_is_from_user() -> None:
    chunk = tf.WorkflowStepOutput(
        run_id="r1", seq=3, payload=chunks_mod.StepOutputPayload(output="x", step_name="a")
    )
    assert tf.to_wire(chunk) == {
        "type": "workflow-step-output",
        "runId": "r1",
        "from": "USER",
        "seq": 3,
        "payload": {"output": "x", "stepName": "a"},
    }


def test_data_chunk_carries_data_at_the_top_level() -> None:
    # Mastra 1.71 (fixtures/mastra_1_71/writer.json): data a step writes is from WORKFLOW.
    chunk = tf.DataChunk(type="data-progress", run_id="r1", seq=4, data={"done_pct": 50})
    assert tf.to_wire(chunk) == {
        "type": "data-progress",
        "runId": "r1",
        "from": "WORKFLOW",
        "seq": 4,
        "data": {"done_pct": 50},
    }


@pytest.mark.parametrize(
    "chunk",
    [
        step_start(id="a", step_name="a", payload=USER_DATA, resume_payload=USER_DATA),
        step_result(id="a", step_name="a", status="success", output=USER_DATA, payload=USER_DATA),
        tf.WorkflowStepOutput(
            run_id="r", payload=chunks_mod.StepOutputPayload(output=USER_DATA, step_name="a")
        ),
        tf.WorkflowStepSuspended(
            run_id="r",
            payload=chunks_mod.StepSuspendedPayload(
                id="a", step_name="a", suspend_payload=USER_DATA, suspend_output=USER_DATA
            ),
        ),
        tf.WorkflowStepProgress(
            run_id="r",
            payload=chunks_mod.StepProgressPayload(
                id="a",
                step_name="a",
                completed_count=1,
                total_count=1,
                current_index=0,
                iteration_status="success",
                iteration_output=USER_DATA,
            ),
        ),
        tf.DataChunk(type="data-x", run_id="r", data=USER_DATA),
    ],
    ids=["step-start", "step-result", "step-output", "suspended", "progress", "data"],
)
def test_user_data_is_never_renamed(chunk: Any) -> None:
    wire = tf.to_wire(chunk)
    found = walk_keys(wire)
    assert "snake_case" in found
    assert "inner_key" in found
    assert "deeper_list" in found
    assert "a_b" in found
    assert "snakeCase" not in found
    assert "innerKey" not in found
    assert tf.from_wire(wire) == chunk


def test_error_is_message_name_and_cause_with_user_fields_kept() -> None:
    error = tf.SerializedError(
        message="card declined",
        name="PaymentError",
        extra={"status_code": 402},
        cause=tf.SerializedError(message="timeout", name="TimeoutError"),
    )
    wire = tf.to_wire(step_result(id="pay", step_name="pay", status="failed", error=error))
    wire_error = wire["payload"]["error"]
    assert wire_error["message"] == "card declined"
    assert wire_error["name"] == "PaymentError"
    assert wire_error["cause"]["message"] == "timeout"
    assert "status_code" in walk_keys(wire_error)
    assert tf.from_wire(wire).payload.error == error


@given(any_chunk)
@settings(max_examples=100)
def test_no_wire_field_is_none(chunk: Any) -> None:
    wire = tf.to_wire(chunk)
    assert all(value is not None for key, value in wire.items() if key != "data")
    if "payload" in wire:
        assert None not in wire["payload"].values()


# --------------------------------------------------------------------------- from_wire: Mastra shapes


def test_mastra_workflow_start_without_seq() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-start",
            "runId": "test-run-id",
            "from": "WORKFLOW",
            "payload": {"workflowId": "w"},
        }
    )
    assert isinstance(chunk, tf.WorkflowStart)
    assert chunk.run_id == "test-run-id"
    assert chunk.payload.workflow_id == "w"
    assert isinstance(chunk.seq, int)


def test_mastra_step_start_without_step_call_id() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-step-start",
            "runId": "test-run-id",
            "from": "WORKFLOW",
            "payload": {
                "stepName": "step1",
                "id": "step1",
                "payload": {},
                "startedAt": 1700000000000,
                "status": "running",
            },
        }
    )
    assert isinstance(chunk, tf.WorkflowStepStart)
    assert chunk.payload.id == chunk.payload.step_name == "step1"
    assert chunk.payload.payload == {}
    assert chunk.payload.started_at == 1700000000000
    assert chunk.payload.step_call_id is None


def test_mastra_step_result_example() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-step-result",
            "runId": "test-run-id",
            "from": "WORKFLOW",
            "payload": {
                "stepName": "step1",
                "id": "step1",
                "output": {"result": "success1"},
                "status": "success",
                "endedAt": 1700000000001,
            },
        }
    )
    assert isinstance(chunk, tf.WorkflowStepResult)
    assert chunk.payload.output == {"result": "success1"}
    assert chunk.payload.status == "success"
    assert chunk.payload.ended_at == 1700000000001
    assert chunk.payload.error is None


def test_mastra_sleep_waiting_example() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-step-waiting",
            "runId": "test-run-id",
            "from": "WORKFLOW",
            "payload": {
                "stepName": "sleep_1",
                "id": "sleep_1",
                "status": "waiting",
                "payload": {"result": "success1"},
            },
        }
    )
    assert isinstance(chunk, tf.WorkflowStepWaiting)
    assert chunk.payload.payload == {"result": "success1"}
    assert chunk.payload.started_at is None


def test_mastra_workflow_finish_example() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-finish",
            "runId": "test-run-id",
            "from": "WORKFLOW",
            "payload": {
                "workflowStatus": "success",
                "output": {
                    "usage": {
                        "inputTokens": 0,
                        "outputTokens": 0,
                        "totalTokens": 0,
                        "reasoningTokens": 0,
                        "cachedInputTokens": 0,
                        "cacheCreationInputTokens": 0,
                    }
                },
                "metadata": {},
                "finalWorkflowResult": {"status": "success", "result": 1},
            },
        }
    )
    assert isinstance(chunk, tf.WorkflowFinish)
    assert chunk.payload.workflow_status == "success"
    assert chunk.payload.usage == tf.Usage()
    assert chunk.payload.metadata == {}


def test_mastra_workflow_finish_with_partial_or_no_usage() -> None:
    partial = tf.from_wire(
        {
            "type": "workflow-finish",
            "runId": "r",
            "payload": {"workflowStatus": "success", "output": {"usage": {"inputTokens": 5}}},
        }
    )
    assert partial.payload.usage == tf.Usage(input_tokens=5)
    bare = tf.from_wire(
        {"type": "workflow-finish", "runId": "r", "payload": {"workflowStatus": "failed"}}
    )
    assert bare.payload.usage == tf.Usage()
    assert bare.payload.workflow_status == "failed"


def test_mastra_failed_finish_keeps_error_metadata() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-finish",
            "runId": "r",
            "from": "WORKFLOW",
            "payload": {
                "workflowStatus": "failed",
                "metadata": {"error": {"message": "boom"}, "errorMessage": "boom"},
                "output": {"usage": {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}},
            },
        }
    )
    assert chunk.payload.metadata == {"error": {"message": "boom"}, "errorMessage": "boom"}


def test_mastra_step_output_with_run_id_in_the_payload() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-step-output",
            "runId": "r",
            "from": "USER",
            "payload": {
                "output": {"type": "text-delta", "text": "hi"},
                "runId": "r",
                "stepName": "agent",
            },
        }
    )
    assert isinstance(chunk, tf.WorkflowStepOutput)
    assert chunk.from_ == "USER"
    assert chunk.payload.output == {"type": "text-delta", "text": "hi"}
    assert chunk.payload.step_name == "agent"
    assert chunk.payload.run_id == "r"


def test_mastra_custom_data_chunk() -> None:
    chunk = tf.from_wire(
        {"type": "data-progress", "runId": "r", "from": "USER", "data": {"pct": 5}}
    )
    assert isinstance(chunk, tf.DataChunk)
    assert chunk.type == "data-progress"
    assert chunk.data == {"pct": 5}


def test_a_data_chunk_without_from_is_the_workflows() -> None:
    chunk = tf.from_wire({"type": "data-progress", "runId": "r", "data": {"pct": 5}})
    assert chunk.from_ == "WORKFLOW"


def test_step_output_without_run_id_still_loads() -> None:
    # Logs stored before trioflow sent ``payload.runId`` must still read.
    chunk = tf.from_wire(
        {"type": "workflow-step-output", "runId": "r", "payload": {"output": 1, "stepName": "a"}}
    )
    assert chunk.payload.run_id is None
    assert tf.from_wire(tf.to_wire(chunk)) == chunk


def test_finish_final_workflow_result_round_trips() -> None:
    payload = chunks_mod.WorkflowFinishPayload(
        workflow_status="success", final_workflow_result={"value": 20, "snake_key": [1]}
    )
    chunk = tf.WorkflowFinish(run_id="r", seq=6, payload=payload)
    wire = tf.to_wire(chunk)
    # User data inside is never renamed.
    assert wire["payload"]["finalWorkflowResult"] == {"value": 20, "snake_key": [1]}
    assert tf.from_wire(wire) == chunk
    failed = attrs.evolve(
        chunk,
        payload=attrs.evolve(payload, workflow_status="failed", final_workflow_result=None),
    )
    assert "finalWorkflowResult" not in tf.to_wire(failed)["payload"]


@pytest.mark.parametrize("kind", ["workflow-paused", "workflow-canceled"])
def test_mastra_empty_payload_chunks(kind: str) -> None:
    chunk = tf.from_wire({"type": kind, "runId": "r", "from": "WORKFLOW", "payload": {}})
    assert chunk.type == kind
    assert chunk.run_id == "r"


def test_missing_from_defaults_to_workflow() -> None:
    chunk = tf.from_wire({"type": "workflow-start", "runId": "r", "payload": {"workflowId": "w"}})
    assert chunk.from_ == "WORKFLOW"


def test_missing_step_name_is_a_copy_of_the_id() -> None:
    chunk = tf.from_wire(
        {"type": "workflow-step-result", "runId": "r", "payload": {"id": "a", "status": "success"}}
    )
    assert chunk.payload.step_name == "a"


def test_mastra_progress_without_iteration_output() -> None:
    chunk = tf.from_wire(
        {
            "type": "workflow-step-progress",
            "runId": "r",
            "from": "WORKFLOW",
            "payload": {
                "id": "each",
                "stepName": "each",
                "completedCount": 1,
                "totalCount": 3,
                "currentIndex": 0,
                "iterationStatus": "failed",
            },
        }
    )
    assert chunk.payload.completed_count == 1
    assert chunk.payload.iteration_status == "failed"
    assert chunk.payload.iteration_output is None


# --------------------------------------------------------------------------- from_wire: errors


def test_from_wire_unknown_type_names_the_type() -> None:
    with pytest.raises(ValueError, match="type") as info:
        tf.from_wire({"type": "workflow-bogus", "runId": "r", "payload": {}})
    assert "workflow-bogus" in str(info.value)


def test_from_wire_missing_type_names_the_type() -> None:
    with pytest.raises(ValueError, match="type"):
        tf.from_wire({"runId": "r", "payload": {}})


def test_from_wire_missing_run_id_names_run_id() -> None:
    with pytest.raises(ValueError, match="runId"):
        tf.from_wire({"type": "workflow-start", "payload": {"workflowId": "w"}})


@pytest.mark.parametrize("seq", ["3", 1.5, True, [1]])
def test_from_wire_non_int_seq_names_seq(seq: Any) -> None:
    data = {"type": "workflow-start", "runId": "r", "seq": seq, "payload": {"workflowId": "w"}}
    with pytest.raises(ValueError, match="seq"):
        tf.from_wire(data)


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        ("workflow-start", {}, "workflowId"),
        ("workflow-step-start", {"stepName": "a"}, "id"),
        ("workflow-step-result", {"id": "a", "stepName": "a"}, "status"),
        ("workflow-finish", {"metadata": {}}, "workflowStatus"),
        (
            "workflow-step-progress",
            {"id": "a", "totalCount": 1, "currentIndex": 0, "iterationStatus": "success"},
            "completedCount",
        ),
        ("workflow-step-suspended", {"status": "suspended"}, "id"),
    ],
)
def test_from_wire_missing_required_payload_field_names_it(
    kind: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        tf.from_wire({"type": kind, "runId": "r", "seq": 1, "payload": payload})


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        ("workflow-step-start", {"id": "a", "startedAt": "yesterday"}, "startedAt"),
        ("workflow-step-result", {"id": "a", "status": 3}, "status"),
        (
            "workflow-step-progress",
            {
                "id": "a",
                "completedCount": "1",
                "totalCount": 1,
                "currentIndex": 0,
                "iterationStatus": "success",
            },
            "completedCount",
        ),
        (
            "workflow-finish",
            {"workflowStatus": "success", "output": {"usage": {"inputTokens": "10"}}},
            "inputTokens",
        ),
    ],
)
def test_from_wire_mistyped_payload_field_names_it(
    kind: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        tf.from_wire({"type": kind, "runId": "r", "payload": payload})


def test_from_wire_checks_field_types_after_a_chunk_was_unstructured_by_cattrs() -> None:
    # Unstructuring a chunk with any cattrs converter resolves the payload classes'
    # annotations; from_wire must keep rejecting a str where an int/str field belongs.
    progress = tf.WorkflowStepProgress(
        run_id="r",
        payload=chunks_mod.StepProgressPayload(
            id="a",
            step_name="a",
            completed_count=1,
            total_count=1,
            current_index=0,
            iteration_status="success",
        ),
    )
    cattrs.Converter().unstructure(progress)
    cattrs.Converter().unstructure(step_result(id="a", step_name="a", status="success"))
    bad_progress = {
        "id": "a",
        "completedCount": "1",
        "totalCount": 1,
        "currentIndex": 0,
        "iterationStatus": "success",
    }
    with pytest.raises(ValueError, match="completedCount"):
        tf.from_wire({"type": "workflow-step-progress", "runId": "r", "payload": bad_progress})
    with pytest.raises(ValueError, match="status"):
        tf.from_wire(
            {"type": "workflow-step-result", "runId": "r", "payload": {"id": "a", "status": 3}}
        )


@pytest.mark.parametrize("data", [None, [], "workflow-start", 3])
def test_from_wire_of_a_non_object_is_a_value_error(data: Any) -> None:
    with pytest.raises(ValueError, match="object"):
        tf.from_wire(data)


# --------------------------------------------------------------------------- round trip: generated


@given(any_chunk)
@settings(max_examples=400)
def test_every_generated_chunk_round_trips(chunk: Any) -> None:
    assert tf.from_wire(tf.to_wire(chunk)) == chunk


@given(any_chunk)
@settings(max_examples=400)
def test_every_generated_chunk_round_trips_through_json(chunk: Any) -> None:
    text = json.dumps(tf.to_wire(chunk))
    assert tf.from_wire(json.loads(text)) == chunk


@pytest.mark.parametrize("cls", ALL_CHUNK_CLASSES, ids=lambda cls: cls.__name__)
@given(data=st.data())
@settings(max_examples=60)
def test_each_chunk_class_round_trips(cls: type[Any], data: st.DataObject) -> None:
    chunk = data.draw(chunk_strategy(cls))
    assert type(tf.from_wire(tf.to_wire(chunk))) is cls
    round_trips(chunk)


def test_step_output_of_none_round_trips() -> None:
    # writer.write(None) is a valid write; its chunk must survive the wire.
    chunk = tf.WorkflowStepOutput(
        run_id="r", seq=4, payload=chunks_mod.StepOutputPayload(output=None, step_name="a")
    )
    round_trips(chunk)


@pytest.mark.parametrize("key", ["message", "name", "cause"])
def test_error_whose_extra_field_is_named_like_an_error_field_round_trips(key: str) -> None:
    # Exceptions commonly keep ``self.message``; SerializedError puts it into ``extra``.
    error = tf.SerializedError(message="m", name="E", extra={key: "user value"})
    round_trips(step_result(id="a", step_name="a", status="failed", error=error))


# --------------------------------------------------------------------------- round trip: real runs


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime() as runtime:
        yield runtime


def make(step_id: str, fn: Callable[[tf.StepContext], Any]) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> Any:
        return await fn(ctx)

    return tf.create_step(id=step_id, execute=execute)


async def add_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


async def log_of(run: tf.Run) -> list[Any]:
    """The run's whole event log."""
    async with run.observe_stream(follow=False) as sub:
        return [chunk async for chunk in sub]


def assert_all_round_trip(chunks: Sequence[Any], *, types: set[str]) -> None:
    assert chunks
    assert types <= {c.type for c in chunks}, {c.type for c in chunks}
    for chunk in chunks:
        round_trips(chunk)


async def test_then_chain_chunks_round_trip(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="w").then(make("a", add_one)).then(make("b", add_one)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert len(chunks) == 6
    assert_all_round_trip(
        chunks, types={"workflow-start", "workflow-step-start", "workflow-step-result"}
    )


async def test_sleep_chunks_round_trip(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="w").then(make("a", add_one)).sleep(2).then(make("b", add_one))
    run = await wf.commit().create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert len(chunks) == 8
    assert_all_round_trip(chunks, types={"workflow-step-waiting", "workflow-finish"})


async def test_foreach_chunks_round_trip(rt: tf.Runtime) -> None:
    async def maybe_fail(ctx: tf.StepContext) -> Any:
        if ctx.input_data == {"bad_item": True}:
            raise ValueError("bad item")
        return {"item_out": ctx.input_data}

    wf = tf.create_workflow(id="w").foreach(make("each", maybe_fail), concurrency=2).commit()
    run = await wf.create_run()
    result = await run.start(input_data=[{"good_item": 1}, {"good_item": 2}, {"bad_item": True}])
    assert result.status == "failed"
    assert_all_round_trip(
        await log_of(run), types={"workflow-step-progress", "workflow-step-result"}
    )


async def test_suspend_and_resume_chunks_round_trip(rt: tf.Runtime) -> None:
    async def gate(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"needs_approval": True, "by_role": "admin"})
        return {"approved_by": ctx.resume_data["user_name"]}

    wf = tf.create_workflow(id="w").then(make("gate", gate)).commit()
    run = await wf.create_run()
    assert (await run.start(input_data={"order_id": 7})).status == "suspended"
    assert (await run.resume(resume_data={"user_name": "ann"})).status == "success"
    chunks = await log_of(run)
    assert_all_round_trip(chunks, types={"workflow-step-suspended", "workflow-step-start"})
    resumed = [
        c for c in chunks if isinstance(c, tf.WorkflowStepStart) and c.payload.resume_payload
    ]
    assert resumed
    assert tf.to_wire(resumed[0])["payload"]["resumePayload"] == {"user_name": "ann"}


async def test_cancel_chunks_round_trip(rt: tf.Runtime) -> None:
    async def forever(ctx: tf.StepContext) -> None:
        await trio.sleep_forever()

    wf = tf.create_workflow(id="w").then(make("slow", forever)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    await trio.testing.wait_all_tasks_blocked()
    await run.cancel()
    assert (await out.result()).status == "canceled"
    assert_all_round_trip([c async for c in out], types={"workflow-canceled", "workflow-finish"})


class PaymentError(Exception):
    def __init__(self, text: str, status_code: int) -> None:
        super().__init__(text)
        self.status_code = status_code
        self.details = {"card_last4": "4242"}


async def test_failure_chunks_with_error_extras_and_cause_round_trip(rt: tf.Runtime) -> None:
    async def pay(ctx: tf.StepContext) -> None:
        try:
            raise KeyError("gateway_timeout")
        except KeyError as exc:
            raise PaymentError("card declined", 402) from exc

    wf = tf.create_workflow(id="w").then(make("pay", pay)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert (await out.result()).status == "failed"
    assert_all_round_trip(chunks, types={"workflow-step-result", "workflow-finish"})
    failed = next(c for c in chunks if isinstance(c, tf.WorkflowStepResult))
    error = failed.payload.error
    assert error is not None
    assert error.name == "PaymentError"
    assert error.cause is not None
    assert error.cause.name == "KeyError"
    assert tf.from_wire(json.loads(json.dumps(tf.to_wire(failed)))).payload.error.status_code == 402


class MessageError(Exception):
    """The common pattern of an exception that keeps its message as an attribute."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def test_failure_chunk_of_an_exception_with_a_message_attribute_round_trips(
    rt: tf.Runtime,
) -> None:
    async def explode(ctx: tf.StepContext) -> None:
        raise MessageError("out of stock")

    wf = tf.create_workflow(id="w").then(make("explode", explode)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert (await out.result()).status == "failed"
    assert_all_round_trip(chunks, types={"workflow-step-result"})


async def test_writer_and_custom_chunks_round_trip(rt: tf.Runtime) -> None:
    async def chatty(ctx: tf.StepContext) -> int:
        await ctx.writer.write({"partial_text": "he", "token_ids": [1, 2]})
        await ctx.writer.write("plain string")
        await ctx.writer.write([1, 2.5, None, True])
        await ctx.writer.custom("data-progress", {"done_pct": 50, "eta_ms": None})
        await ctx.writer.custom("data-empty", None)
        return 1

    wf = tf.create_workflow(id="w").then(make("chatty", chatty)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert_all_round_trip(chunks, types={"workflow-step-output", "data-progress", "data-empty"})
    data = [c for c in chunks if isinstance(c, tf.DataChunk)]
    assert tf.to_wire(data[0])["data"] == {"done_pct": 50, "eta_ms": None}


async def test_writer_output_of_none_round_trips(rt: tf.Runtime) -> None:
    async def writes_none(ctx: tf.StepContext) -> int:
        await ctx.writer.write(None)
        return 1

    wf = tf.create_workflow(id="w").then(make("w1", writes_none)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    assert_all_round_trip([c async for c in out], types={"workflow-step-output"})


async def test_tripwire_chunks_round_trip(rt: tf.Runtime) -> None:
    async def guard(ctx: tf.StepContext) -> None:
        raise tf.TripwireError("blocked content", retry=True, metadata={"rule_id": "r-1"})

    wf = tf.create_workflow(id="w").then(make("guard", guard)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = [c async for c in out]
    assert (await out.result()).status == "tripwire"
    assert_all_round_trip(chunks, types={"workflow-finish"})
    assert finish_chunk(chunks).payload.tripwire is not None


def finish_chunk(chunks: Sequence[Any]) -> tf.WorkflowFinish:
    return [c for c in chunks if isinstance(c, tf.WorkflowFinish)][-1]


async def test_parallel_nested_and_paused_chunks_round_trip(rt: tf.Runtime) -> None:
    inner = tf.create_workflow(id="inner").then(make("x", add_one)).commit()
    wf = (
        tf.create_workflow(id="outer")
        .parallel([make("p", add_one), make("q", add_one)])
        .map(lambda ctx: ctx.input_data["p"])
        .then(inner)
        .commit()
    )
    run = await wf.create_run()
    assert (await run.start(input_data=1, per_step=True)).status == "paused"
    chunks = await log_of(run)
    assert_all_round_trip(chunks, types={"workflow-paused"})
    run2 = await wf.create_run()
    out = await run2.stream(input_data=1)
    chunks2 = [c async for c in out]
    assert any(c.type == "workflow-step-result" and c.payload.id == "inner.x" for c in chunks2)
    assert_all_round_trip(chunks2, types={"workflow-step-start"})
