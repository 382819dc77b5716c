"""The wire contract: validation with reasons, JSON jobs, idempotent enqueue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from arq import ArqRedis
from pydantic import ValidationError

from orchestrator.local_redis import LocalRedis
from tasks import (
    QUEUE_NAME,
    DispatchRequest,
    EndSessionRequest,
    SessionReport,
    create_redis,
    enqueue_dispatch,
    job_deserializer,
    job_serializer,
)
from tasks.keys import DISPATCH_AGENT, REJECT_MALFORMED_JOB, dispatch_job_id
from tasks.models import MAX_METADATA_BYTES, JobMetadata, session_id_for


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"room": ""}, "room: Value error, must not be empty"),
        ({"room": "r" * 257}, "256-byte room name limit"),
        ({"metadata": ["not", "an", "object"]}, "metadata: Input should be a valid dictionary"),
        ({"metadata": {"blob": "x" * MAX_METADATA_BYTES}}, "over LiveKit's 64000-byte limit"),
        ({"agent_name": "support agent!"}, "is not a valid agent name"),
        ({"event_id": "has space"}, "event_id: Value error, may hold only"),
        ({"expires_at": "2026-01-01T00:00:00"}, "must carry a timezone"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_dispatch_requests_say_what_is_wrong(
    fields: dict[str, object], reason: str
) -> None:
    base: dict[str, object] = {"event_id": "evt-1", "room": "support-42"}
    with pytest.raises(ValidationError) as info:
        DispatchRequest.model_validate({**base, **fields})
    assert reason in _reasons(info.value)


def test_job_metadata_carries_session_and_event_ids() -> None:
    request = DispatchRequest(event_id="evt-1", room="r", metadata={"user_id": "u1"})
    meta = json.loads(
        JobMetadata(
            session_id=session_id_for(request.event_id), event_id="evt-1", metadata=request.metadata
        ).to_json()
    )
    assert meta["session_id"] == session_id_for("evt-1")
    assert meta["event_id"] == "evt-1"
    assert meta["metadata"] == {"user_id": "u1"}
    assert session_id_for("evt-1") != session_id_for("evt-1", generation=1)


@pytest.mark.parametrize("generation", [0, 1])
def test_the_job_metadata_a_request_gives_is_its_sessions(generation: int) -> None:
    """The size check's job metadata is reused for the first session; a replay's session
    (a later generation) gets its own."""
    request = DispatchRequest.model_validate(
        {"event_id": "evt-2", "room": "r", "metadata": {"name": "Zoë", "n": [1, 2.5]}}
    )
    session_id = session_id_for("evt-2", generation)
    expected = JobMetadata(session_id=session_id, event_id="evt-2", metadata=request.metadata)
    assert request.job_metadata(session_id) == expected.to_json()


def test_end_session_needs_exactly_one_target() -> None:
    with pytest.raises(ValidationError, match="exactly one of session_id and room"):
        EndSessionRequest()
    with pytest.raises(ValidationError, match="exactly one of session_id and room"):
        EndSessionRequest(session_id="S_1", room="r")
    assert EndSessionRequest(room="r").delete_room is False


def test_failed_report_needs_a_reason() -> None:
    with pytest.raises(ValidationError, match="a failed report needs an error"):
        SessionReport(session_id="S", event_id="e", room="r", status="failed")


def test_serializer_is_json_and_round_trips() -> None:
    now = datetime.now(UTC)
    raw = job_serializer({"t": 1, "f": "x", "a": [{"at": now}], "k": {}, "et": 5})
    assert json.loads(raw)["a"][0]["at"] == now.isoformat()
    assert job_deserializer(raw)["f"] == "x"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x80\x04\x95pickle", "not valid UTF-8 JSON"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"f": "dispatch_agent", "a": {}, "k": {}, "et": 1}', "'a' must be a array"),
        (b'{"a": [], "k": {}, "et": 1}', "missing field 'f'"),
    ],
)
def test_malformed_job_becomes_a_rejection(raw: bytes, reason: str) -> None:
    job = job_deserializer(raw)
    assert job["f"] == REJECT_MALFORMED_JOB
    assert reason in job["k"]["reason"]
    assert job["k"]["raw_bytes"] == len(raw)


@pytest.fixture
async def arq_redis(redis_server: LocalRedis) -> ArqRedis:
    pool = await create_redis(redis_server.url)
    await pool.flushall()
    yield pool  # type: ignore[misc]
    await pool.aclose()


async def test_same_event_twice_is_one_job(arq_redis: ArqRedis) -> None:
    request = DispatchRequest(event_id="evt-9", room="support-42", metadata={"a": 1})
    first = await enqueue_dispatch(arq_redis, request)
    second = await enqueue_dispatch(arq_redis, request)
    assert first.job_id == second.job_id == dispatch_job_id("evt-9")
    assert await arq_redis.zcard(QUEUE_NAME) == 1
    stored = json.loads(await arq_redis.get(f"arq:job:{first.job_id}"))
    assert stored["f"] == DISPATCH_AGENT
    assert stored["a"] == [
        {
            "type": "dispatch",
            "version": 1,
            "event_id": "evt-9",
            "room": "support-42",
            "metadata": {"a": 1},
        }
    ]


async def test_not_before_defers_the_job(arq_redis: ArqRedis) -> None:
    at = datetime.now(UTC) + timedelta(minutes=5)
    job = await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id="evt-late", room="r", not_before=at)
    )
    score = await arq_redis.zscore(QUEUE_NAME, job.job_id)
    assert score == pytest.approx(at.timestamp() * 1000, abs=1)
