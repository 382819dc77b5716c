"""No log line of any process carries job metadata values, the LiveKit API secret, the API
token or a join token, and every step of a session can be found in the logs by its session_id.

A full run, every part a real process: the LiveKit sim, the HTTP service, an orchestrator
worker, an agent worker, and the command line; events in through the HTTP API, through the
Python producer, as an invalid event and as a malformed job, all carrying a phone number.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from orchestrator.demo.local_redis import LocalRedis, free_port
from orchestrator.demo.processes import Supervisor
from orchestrator.settings import child_environment
from tasks import DispatchRequest, create_redis, enqueue_dispatch, keys, session_id_for
from tests.cli.conftest import REPO, run_cli
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

PHONE = "+15550100"
SECRET = f"redaction-SECRET-{uuid.uuid4().hex}"
TOKEN = f"redaction-TOKEN-{uuid.uuid4().hex}"
AGENT = "redaction-agent"


class Flow:
    def __init__(self, supervisor: Supervisor, env: dict[str, str], http: str, sim: str) -> None:
        self.supervisor = supervisor
        self.env = env
        self.http = http
        self.sim = sim

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.http + path, json=body, headers=headers) as r,
        ):
            return r.status, await r.json()

    async def sim_call(self, method: str, path: str, body: Any = None) -> None:
        async with aiohttp.ClientSession() as s, s.request(method, self.sim + path, json=body) as r:
            r.raise_for_status()

    def logs(self) -> dict[str, str]:
        return {
            p.name: p.read_text(errors="replace") for p in self.supervisor.log_dir.glob("*.log")
        }


async def _answers(url: str) -> bool:
    try:
        timeout = aiohttp.ClientTimeout(2)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
            return r.status < 500
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


@pytest.fixture
async def flow(redis_server: LocalRedis, redis: Redis, tmp_path: Path) -> AsyncIterator[Flow]:
    sim_port, http_port = free_port(), free_port()
    sim, http = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{http_port}"
    env = {
        "REDIS_URL": redis_server.url,
        "LIVEKIT_URL": sim,
        "LIVEKIT_API_KEY": "redaction-key",
        "LIVEKIT_API_SECRET": SECRET,
        "AGENT_NAME": AGENT,
        "LKD_API_TOKEN": TOKEN,
        "LKD_HTTP_PORT": str(http_port),
        "LKD_ASSIGNMENT_CHECK_DELAY_S": "0.5",
        "LKD_RECONCILE_INTERVAL_S": "2",
        "AGENT_SESSION_HANDLER": "orchestrator.demo.handler:demo_session",
        "AGENT_HEALTH_HOST": "127.0.0.1",
        "AGENT_HEALTH_PORT": "0",
        "AGENT_NUM_IDLE_PROCESSES": "1",
        "AGENT_COUNT_CPU_LOAD": "false",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    full_env = child_environment(env)
    supervisor = Supervisor(tmp_path)
    py = sys.executable
    try:
        supervisor.start(
            "livekit",
            [py, "-m", "livekit_sim", "--port", str(sim_port), "--keys", f"redaction-key: {SECRET}",
             "--webhook-url", f"{http}/livekit/webhook", "--departure-timeout-s", "1"],
            full_env,
        )  # fmt: skip
        await eventually(lambda: _answers(sim + "/_sim/state"), timeout_s=30, what="the sim")
        supervisor.start("worker", [py, "-m", "arq", "orchestrator.WorkerSettings"], full_env)
        supervisor.start("http", [py, "-m", "orchestrator", "serve"], full_env)
        supervisor.start("agent", [py, "-m", "agent", "start", "--log-level", "INFO"], full_env)
        await eventually(lambda: _answers(http + "/readyz"), timeout_s=60, what="the HTTP service")

        async def agent_registered() -> bool:
            supervisor.check_all_alive()
            async with aiohttp.ClientSession() as s, s.get(sim + "/_sim/state") as r:
                workers = (await r.json()).get("workers") or []
            return any(w["agent_name"] == AGENT for w in workers)

        await eventually(agent_registered, timeout_s=120, what="the agent worker")
        yield Flow(supervisor, env, http, sim)
    finally:
        await supervisor.stop_all([["agent", "http"], ["worker"]])


async def test_no_metadata_secret_or_token_in_any_log_line(flow: Flow) -> None:
    payload = {"user_name": "Ada", "user_phone": PHONE, "demo": {"wait_for_caller": True}}
    caller = {"identity": "caller", "metadata": json.dumps({"phone": PHONE})}
    status, accepted = await flow.post(
        "/v1/dispatches",
        {
            "event_id": "redact-1",
            "room": "redact-room-1",
            "metadata": payload,
            "participant": caller,
        },
    )
    assert status == 202, accepted
    caller_session = accepted["session_id"]
    join_tokens = [accepted["join"]["token"]]
    producer = await create_redis(flow.env["REDIS_URL"])
    await enqueue_dispatch(
        producer,
        DispatchRequest(
            event_id="redact-2", room="redact-room-2",
            metadata={"user_phone": PHONE, "demo": {"talk_s": 30}},
        ),
    )  # fmt: skip
    talk_session = session_id_for("redact-2")
    status, _ = await flow.post(
        "/v1/dispatches", {"event_id": "redact 3", "room": "", "metadata": {"user_phone": PHONE}}
    )
    assert status == 422
    await producer.enqueue_job(
        "dispatch_agent", {"event_id": "redact-4", "metadata": {"user_phone": PHONE}}
    )
    await producer.set("arq:job:malformed-1", f'{{"user_phone": "{PHONE}"'.encode(), px=60_000)
    await producer.zadd(keys.QUEUE_NAME, {"malformed-1": int(time.time() * 1000)})

    async def status_of(session_id: str) -> str:
        return (await producer.hget(keys.session_key(session_id), "status") or b"").decode()

    await eventually(
        lambda: _is(status_of(caller_session), "assigned"), timeout_s=60, what="assigned"
    )
    await flow.sim_call("POST", "/_sim/rooms/redact-room-1/participants", {"identity": "caller"})
    await asyncio.sleep(1.0)  # the caller stays a moment, as a person would
    await flow.sim_call("DELETE", "/_sim/rooms/redact-room-1/participants/caller")
    await eventually(
        lambda: _is(status_of(talk_session), "assigned"), timeout_s=60, what="assigned"
    )
    status, join = await flow.post(
        f"/v1/sessions/{talk_session}/tokens", {"identity": "nurse", "attributes": {"tel": PHONE}}
    )
    assert status == 201, join
    join_tokens.append(join["token"])
    status, ended = await flow.post("/v1/sessions/end", {"session_id": talk_session})
    assert status == 202, ended

    async def both_reported() -> bool:
        return {await status_of(caller_session), await status_of(talk_session)} <= {"completed"}

    await eventually(both_reported, timeout_s=60, what="both sessions reported")
    await eventually(
        lambda: producer.xlen(keys.DEAD_LETTER_STREAM), what="the rejected jobs' dead letters"
    )
    cli_output = []
    for args in (["sessions"], ["session", caller_session], ["results"], ["doctor", "--json"]):
        ran = await run_cli(child_environment(flow.env), *args)
        cli_output.append(ran.out + ran.err)
    ran = await run_cli(
        child_environment(flow.env), "token", "--room", "redact-room-2", "--identity", "cli-caller",
        "--metadata", PHONE, "--json",
    )  # fmt: skip
    join_tokens.append(json.loads(ran.out)["token"])  # the answer: on stdout, logged nowhere
    cli_output.append(ran.err)
    await producer.aclose()
    await flow.supervisor.stop_all([["agent", "http"], ["worker"]])

    logs = flow.logs()
    logs["cli"] = "\n".join(cli_output)
    assert set(logs) >= {"worker.log", "http.log", "agent.log", "livekit.log", "cli"}
    for name, text in logs.items():
        for needle in (PHONE, PHONE[1:], SECRET, TOKEN, *join_tokens):
            assert needle not in text, f"{needle!r} appears in {name}"

    # The paths that hold the phone number in their input did run.
    assert '"event": "malformed job rejected"' in logs["worker.log"]
    assert '"event": "input rejected"' in logs["worker.log"]
    assert '"status": 422' in logs["http.log"]

    # Every step of a session is in the logs under its session_id.
    worker_steps = _events(logs["worker.log"], caller_session)
    for step in ("dispatched", "assignment confirmed", "session report filed"):
        assert step in worker_steps, (step, worker_steps)
    assert _events(logs["agent.log"], caller_session), "the agent logged nothing for the session"
    assert "session end requested" in _events(logs["worker.log"], talk_session)


async def _is(value: Any, expected: str) -> bool:
    return await value == expected


def _events(text: str, session_id: str) -> list[str]:
    """The `event` (or `message`) of every JSON log line bound to `session_id`."""
    found = []
    for line in text.splitlines():
        if session_id in line and line.startswith("{"):
            record = json.loads(line)
            if record.get("session_id") == session_id:
                found.append(str(record.get("event") or record.get("message")))
    return found
