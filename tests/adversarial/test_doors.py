"""Every door, tried with bad input as an attacker or a careless producer would: the HTTP API
(fuzzed from its own OpenAPI document, and with requests no client library would send), the
webhook receiver, raw queue entries and job bodies, the producer helpers with any Redis
client, and the command line. The budgets and seeds are fixed: the same inputs every run.

What must hold, checked after each door and at the end: no client mistake got a 5xx; no
process exited or printed a traceback, and every line each wrote is one JSON object; every bad
job became a dead letter with a reason; the marker phone number and the API token appear in
no line of any log; good events sent afterwards are dispatched.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import requests
import schemathesis
from arq import create_pool as arq_create_pool
from arq.connections import RedisSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from livekit_sim.webhooks import sign_body
from orchestrator.http.app import TITLE, VERSION, routes
from orchestrator.http.spec import openapi
from orchestrator.store import dead_letters
from tasks import DispatchRequest, create_redis, enqueue_dispatch, keys
from tests.adversarial.conftest import API_KEY, API_SECRET, API_TOKEN, PHONE, REPO, Doors

pytestmark = pytest.mark.system

BUDGET = settings(
    max_examples=25,
    derandomize=True,  # a fixed seed: the same inputs every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
OUTCOMES = {"dispatched", "deduplicated", "duplicate_event", "expired", "failed", "rejected",
            "withdrawn", "moot", "filed", "duplicate", "not_found", "ending"}  # fmt: skip
TRIED: collections.Counter[str] = collections.Counter()
"""Inputs tried, by door, for the figures (schemathesis runs its tests on copies of fixtures)."""

schema = schemathesis.openapi.from_dict(openapi(routes(), title=TITLE, version=VERSION))


# -- the HTTP API, from its own document ---------------------------------------------------


@schema.parametrize()
@BUDGET
def test_the_api_answers_every_generated_request_without_a_5xx(case: Any, doors: Doors) -> None:
    if case.operation.method.upper() == "POST" and case.operation.path == "/v1/dispatches":
        body = case.body if isinstance(case.body, dict) else None
        if body is not None and isinstance(body.get("metadata"), dict):
            body["metadata"]["phone"] = PHONE  # the marker rides along where it can
    response = case.call(base_url=doors.url, headers=AUTH, timeout=30)
    TRIED["http api (generated)"] += 1
    assert response.status_code < 500, (case.operation.path, response.status_code, response.text)


# -- the HTTP API, with requests no library would send ------------------------------------

RAW_REQUESTS: dict[str, bytes] = {
    "token with a control byte": b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + API_TOKEN.encode() + b"\x01\r\n\r\n",
    "token not UTF-8": b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff"
    + API_TOKEN.encode() + b"\r\n\r\n",
    "20 kB request line": b"GET /v1/sessions?x=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "100 kB header": b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000
    + b"\r\nAuthorization: Bearer " + API_TOKEN.encode() + b"\r\n\r\n",
    "NUL in a header": b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Null: a\x00b "
    + PHONE.encode() + b"\r\n\r\n",
    "negative Content-Length": b"POST /v1/dispatches HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n"
    b"Authorization: Bearer " + API_TOKEN.encode() + b"\r\n\r\n{}",
    "gzip that is not": b"POST /v1/dispatches HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\nAuthorization: Bearer "
    + API_TOKEN.encode() + b"\r\n\r\n{}",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + PHONE.encode(),
    "a method nobody knows": b"BREW /v1/sessions HTTP/1.1\r\nHost: x\r\n\r\n",
    "a path with a NUL": b"GET /v1/sessions/\x00" + PHONE.encode() + b" HTTP/1.1\r\n\r\n",
}  # fmt: skip


@pytest.mark.parametrize("name", list(RAW_REQUESTS))
async def test_requests_no_client_would_send_get_a_4xx(doors: Doors, name: str) -> None:
    host, port = doors.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(RAW_REQUESTS[name] + b"Connection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    TRIED["http raw requests"] += 1
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 400
    assert 400 <= status < 500, (name, answer[:300])


# -- the webhook receiver --------------------------------------------------------------------


def _json_values(leaves: int) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=30),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=leaves,
    )


@given(
    body=st.binary(max_size=2_000)
    | st.dictionaries(st.text(max_size=20), _json_values(12), max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
    signature=st.sampled_from(["good", "other secret", "none", "garbage"]),
)
@settings(BUDGET, max_examples=100)
def test_the_webhook_receiver_answers_any_body_and_signature_without_a_5xx(
    doors: Doors, body: bytes, signature: str
) -> None:
    headers = {"Content-Type": "application/webhook+json"}
    if signature == "good":
        headers["Authorization"] = sign_body(body, API_KEY, API_SECRET)
    elif signature == "other secret":
        headers["Authorization"] = sign_body(body, API_KEY, "x" * 40)
    elif signature == "garbage":
        headers["Authorization"] = "eyJ." + PHONE
    response = requests.post(doors.url + "/livekit/webhook", data=body, headers=headers, timeout=30)
    TRIED["webhooks"] += 1
    assert response.status_code < 500, response.text


# -- raw queue entries and job bodies --------------------------------------------------------

JOB_VALUES = _json_values(10)
JOBS = st.fixed_dictionaries(
    {},
    optional={
        "t": JOB_VALUES,
        "f": st.sampled_from(["dispatch_agent", "end_session", "session_report", "exec"])
        | JOB_VALUES,
        "a": JOB_VALUES,
        "k": JOB_VALUES,
        "et": st.integers() | JOB_VALUES,
        "s": JOB_VALUES,
    },
)


@given(job=JOBS)
@settings(BUDGET, max_examples=60)
def test_any_job_body_in_the_queue_is_run_or_set_aside_with_a_reason(
    doors: Doors, job: dict[str, Any]
) -> None:
    asyncio.run(_run_or_set_aside(doors, json.dumps(job).encode()))
    TRIED["raw jobs (generated)"] += 1


async def _run_or_set_aside(doors: Doors, body: bytes) -> None:
    job_id = await _queue_raw(doors, body)
    redis = Redis.from_url(doors.redis_url)
    try:
        result = await _until(lambda: _result(redis, job_id), f"the result of {job_id}")
        assert result.get("outcome") in OUTCOMES, result
        if result["outcome"] == "rejected":
            letter = await _dead_letter(redis, job_id)
            assert letter.reason == result["reason"]
    finally:
        await redis.aclose()


BAD_BODIES = {
    "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
    "not JSON": b"{'single': 'quotes'}",
    "nested 10,000 deep": b"[" * 10_000 + b"]" * 10_000,
    "a number": b"42",
    "the try as text": json.dumps({"t": "1", "f": "dispatch_agent", "a": [{}], "k": {}}).encode(),
    "enqueued in year 3e9": json.dumps({"f": "end_session", "a": [{}], "et": 10**20}).encode(),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_job_bodies_become_dead_letters_with_a_reason(doors: Doors, name: str) -> None:
    job_id = await _queue_raw(doors, BAD_BODIES[name])
    redis = Redis.from_url(doors.redis_url)
    try:
        letter = await _dead_letter(redis, job_id)
    finally:
        await redis.aclose()
    TRIED["raw jobs (hand-made)"] += 1
    assert letter.kind == "malformed_job"
    assert letter.reason


async def test_a_queue_entry_that_is_not_utf8_is_set_aside(doors: Doors) -> None:
    redis = Redis.from_url(doors.redis_url)
    try:
        await redis.set(b"arq:job:raw:\xc3\x28", b"{}", px=60_000)
        await redis.zadd(keys.QUEUE_NAME, {b"raw:\xc3\x28": int(time.time() * 1000)})
        await _until(lambda: _gone(redis, b"raw:\xc3\x28"), "the entry set aside")
    finally:
        await redis.aclose()
    TRIED["raw jobs (hand-made)"] += 1


async def _gone(redis: Redis, member: bytes) -> bool:
    return await redis.zscore(keys.QUEUE_NAME, member) is None


async def _queue_raw(doors: Doors, body: bytes) -> str:
    """Write a job as a producer in another language could, and wait until a worker took it:
    run it to a result, or set it aside as a dead letter."""
    job_id = f"raw:{time.time_ns()}"
    redis = Redis.from_url(doors.redis_url)
    try:
        await redis.set(keys.ARQ_JOB_PREFIX + job_id, body, px=60_000)
        await redis.zadd(keys.QUEUE_NAME, {job_id: int(time.time() * 1000)})

        async def handled() -> bool:
            return not await redis.exists(keys.ARQ_JOB_PREFIX + job_id)

        await _until(handled, f"job {job_id} handled")
    finally:
        await redis.aclose()
    return job_id


async def _dead_letter(redis: Redis, job_id: str) -> dead_letters.DeadLetter:
    async def found() -> dead_letters.DeadLetter | None:
        return next((d for d in await dead_letters.recent(redis, 500) if d.job_id == job_id), None)

    letter = await _until(found, f"the dead letter of {job_id}")
    assert letter is not None
    return letter


async def _until(condition: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


# -- the producer helpers, with any client ---------------------------------------------------


@pytest.mark.parametrize("client", ["tasks.create_redis", "arq's own create_pool", "redis-py"])
async def test_the_producer_helpers_work_with_any_client(doors: Doors, client: str) -> None:
    if client == "tasks.create_redis":
        redis: Redis = await create_redis(doors.redis_url)
    elif client.startswith("arq"):
        redis = await arq_create_pool(RedisSettings.from_dsn(doors.redis_url))
    else:
        redis = Redis.from_url(doors.redis_url)
    try:
        request = DispatchRequest(
            event_id=f"any-{time.time_ns()}",
            room=f"room-{time.time_ns()}",
            metadata={"phone": PHONE},
        )
        job = await enqueue_dispatch(redis, request)
        result = await _until(lambda: _result(redis, job.job_id), "the outcome")
    finally:
        await redis.aclose()
    TRIED["producer helpers"] += 1
    assert result["outcome"] == "dispatched", result


async def _result(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """A job's outcome, once it has one; a job that failed (arq's own failure) has none."""
    raw = await redis.get(keys.ARQ_RESULT_PREFIX + job_id)
    if raw is None:
        return None
    result = json.loads(raw)
    assert result["s"], f"{job_id} failed instead of ending with an outcome: {result['r']}"
    return result["r"]  # type: ignore[no-any-return]


# -- the command line ------------------------------------------------------------------------


@given(
    args=st.sampled_from([
        ["dispatch", "--room"], ["dispatch", "--room", "r", "--metadata"],
        ["dispatch", "--room", "r", "--delay-s"], ["dispatch", "--room", "r", "--expires-in-s"],
        ["dispatch", "--event-id"], ["end", "--room"], ["session"], ["sessions", "--since"],
        ["sessions", "--status"], ["results", "--count"], ["dead-letters", "replay"],
        ["dead-letters", "--count"],
    ]),
    value=st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
        max_size=40,
    ) | st.sampled_from(["nan", "inf", "-1", "1e308", "9" * 400, "{", "[]", PHONE]),
)  # fmt: skip
@settings(BUDGET, max_examples=15)
def test_the_command_line_answers_any_value_in_one_line_without_a_traceback(
    doors: Doors, args: list[str], value: str
) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, value, "--json"],
        env=doors.env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    TRIED["command line (generated)"] += 1
    assert ran.returncode in (0, 1, 2), ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout
    said = [line for line in ran.stderr.splitlines() if not line.startswith("{")]
    assert len(said) <= 1, ran.stderr


# -- afterwards ------------------------------------------------------------------------------


async def test_afterwards_good_events_dispatch_and_no_log_holds_a_secret(doors: Doors) -> None:
    redis = await create_redis(doors.redis_url)
    try:
        jobs = [
            await enqueue_dispatch(
                redis, DispatchRequest(event_id=f"after-{i}-{time.time_ns()}", room=f"after-{i}")
            )
            for i in range(5)
        ]
        outcomes = [await _until(lambda j=j: _result(redis, j.job_id), "an outcome") for j in jobs]
    finally:
        await redis.aclose()
    assert [o["outcome"] for o in outcomes] == ["dispatched"] * 5

    doors.supervisor.check_all_alive()
    ours = [c for c in doors.supervisor.children if c.name != "livekit"]  # not the stand-in
    for child in ours:
        text = child.log_path.read_text(errors="replace")
        for line in text.splitlines():
            assert line.startswith("{"), (child.name, line[:300])
            assert isinstance(json.loads(line), dict), (child.name, line[:300])
        assert "Traceback" not in text, child.name
        assert PHONE not in text, child.name
        assert API_TOKEN not in text, child.name
    print("inputs tried by door:", json.dumps(TRIED, sort_keys=True))
