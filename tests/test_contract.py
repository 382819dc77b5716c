"""The wire contract: validation with reasons, JSON jobs, idempotent enqueue."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from arq import ArqRedis
from arq import create_pool as arq_create_pool
from arq.connections import RedisSettings
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from orchestrator.demo.local_redis import LocalRedis
from tasks import (
    QUEUE_NAME,
    DispatchRequest,
    EndSessionRequest,
    SessionReport,
    create_redis,
    enqueue_dispatch,
    enqueue_end_session,
    enqueue_session_report,
    job_deserializer,
    job_serializer,
)
from tasks.keys import (
    DISPATCH_AGENT,
    END_SESSION,
    REJECT_MALFORMED_JOB,
    SESSION_REPORT,
    dispatch_job_id,
)
from tasks.models import MAX_METADATA_BYTES, JobMetadata, session_id_for

pytestmark = pytest.mark.integration


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


ET = 1_796_000_000_000  # an enqueue time (unix ms)


def test_serializer_is_json_and_round_trips() -> None:
    now = datetime.now(UTC)
    job = {"t": 1, "f": "dispatch_agent", "a": [{"at": now}], "k": {}, "et": ET}
    raw = job_serializer(job)
    assert json.loads(raw)["a"][0]["at"] == now.isoformat()
    assert job_deserializer(raw) == {**job, "a": [{"at": now.isoformat()}]}
    # A job's result, as arq writes it: a later try's number is no problem there.
    result = {**job, "t": 7, "s": True, "r": {"outcome": "dispatched"}, "st": ET, "ft": ET}
    assert job_deserializer(job_serializer(result)) == json.loads(job_serializer(result))


def _job(**fields: object) -> bytes:
    body = {"t": 1, "f": "dispatch_agent", "a": [{"event_id": "e", "room": "r"}], "k": {}}
    return json.dumps({**body, "et": ET, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x80\x04\x95pickle", "not valid UTF-8 JSON"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b"[" * 10_000 + b"]" * 10_000, "nested too deep"),
        (_job(a={}), "'a' must be an array, got an object"),
        (b'{"a": [], "k": {}, "et": 1}', "missing field 'f'"),
        (b'{"s": true, "r": 1}', "missing field 'f'"),  # not a result, then not a job
        (_job(t="1"), "'t' must be null or an integer from 0 to 1"),
        (_job(t=1000), "'t' must be null or an integer from 0 to 1"),
        (_job(et=10**20), "'et' must be the enqueue time in unix milliseconds"),
        (_job(et=True), "'et' must be an integer, got a boolean"),
        (_job(f="os.system"), "'f' names no job function (known: agent_exited, "),
        (_job(a=[]), "dispatch_agent takes 1 to 2 arguments (event, generation), got 0"),
        (_job(a=[{}, 0, 1, 2]), "dispatch_agent takes 1 to 2 arguments (event, generation), got 4"),
        (_job(k={"priority": 1}), "dispatch_agent takes no keyword argument 'priority'"),
        (_job(a=[{}, 1], k={"generation": 1}), "got 'generation' both by position and by keyword"),
        (_job(f="end_session", a=[]), "end_session takes 1 argument (request), got 0"),
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


async def test_a_not_before_long_past_means_now(arq_redis: ArqRedis) -> None:
    before = int(time.time() * 1000)
    at = datetime.now(UTC) - timedelta(days=3)  # arq would write a negative expiry
    job = await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id="evt-past", room="r", not_before=at)
    )
    score = await arq_redis.zscore(QUEUE_NAME, job.job_id)
    assert before <= score <= time.time() * 1000
    assert await arq_redis.pttl(f"arq:job:{job.job_id}") > 23 * 3600 * 1000


@pytest.mark.parametrize("client", ["arq's own pool (pickle)", "plain redis-py"])
async def test_the_producer_helpers_write_the_json_job_whatever_the_client(
    redis_server: LocalRedis, arq_redis: ArqRedis, client: str
) -> None:
    if client.startswith("arq"):
        redis: Redis = await arq_create_pool(RedisSettings.from_dsn(redis_server.url))
    else:
        redis = Redis.from_url(redis_server.url)
    try:
        dispatch = await enqueue_dispatch(redis, DispatchRequest(event_id="evt-any", room="r"))
        end = await enqueue_end_session(redis, EndSessionRequest(room="r"))
        report = await enqueue_session_report(
            redis, SessionReport(session_id="S_1", event_id="e", room="r", status="completed")
        )
    finally:
        await redis.aclose()
    for job, function in ((dispatch, DISPATCH_AGENT), (end, END_SESSION), (report, SESSION_REPORT)):
        stored = job_deserializer(await arq_redis.get(f"arq:job:{job.job_id}"))
        assert (stored["f"], stored["t"], stored["k"]) == (function, None, {})


async def test_a_redis_error_never_carries_the_job(arq_redis: ArqRedis) -> None:
    await arq_redis.set(QUEUE_NAME, "not a sorted set")  # ZADD is refused: WRONGTYPE
    phone = "+44 7700 900123"
    request = DispatchRequest(event_id="evt-err", room="r", metadata={"phone": phone})
    with pytest.raises(ResponseError) as raised:
        await enqueue_dispatch(arq_redis, request)
    assert "WRONGTYPE" in str(raised.value)
    assert phone not in str(raised.value)
    assert "evt-err" not in str(raised.value)
