"""The LiveKit webhook receiver: signatures as the real server makes them, and sessions ended
promptly when LiveKit says the room closed or the agent left."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import structlog
from arq import ArqRedis
from arq.worker import Worker
from livekit import api
from livekit.protocol import models, webhook

from livekit_sim import LiveKitSim
from livekit_sim.webhooks import encode_event, sign_body
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.http import webhooks
from orchestrator.http.webhooks import is_session_agent, why_not
from orchestrator.settings import Settings
from orchestrator.store.record import Session, SessionStatus
from tasks import enqueue_session_report, recent_results
from tests.http.conftest import API_KEY, API_SECRET, make_settings
from tests.http.test_api import call, session_in
from tests.http.test_observe import scrape
from tests.orchestrator.conftest import RunWorker
from tests.orchestrator.test_sessions import agent_report
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

HOOK = "/livekit/webhook"


def room_finished(room: str, created_at: int | None = None) -> bytes:
    event = webhook.WebhookEvent(
        event="room_finished",
        room=models.Room(name=room, sid="RM_x"),
        id="EV_test",
        created_at=int(time.time()) if created_at is None else created_at,
    )
    return encode_event(event)


async def post_hook(
    anonymous: aiohttp.ClientSession, body: bytes, authorization: str | None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/webhook+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with anonymous.post(HOOK, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def hooks_counted(client: aiohttp.ClientSession, event: str, outcome: str) -> float:
    """How many webhooks `event` this service process has handled with `outcome`."""
    found = await scrape(client)
    return found.get(("lkd_webhooks_received_total", (("event", event), ("outcome", outcome))), 0)


async def counted_once_more(client: aiohttp.ClientSession, event: str, outcome: str) -> Any:
    """Wait for one more webhook `event` handled with `outcome` than now."""
    before = await hooks_counted(client, event, outcome)

    async def more() -> bool:
        return await hooks_counted(client, event, outcome) > before

    return more


async def test_signature_is_verified(anonymous: aiohttp.ClientSession) -> None:
    body = room_finished("r-sig")
    status, answer = await post_hook(anonymous, body, sign_body(body, API_KEY, API_SECRET))
    assert (status, answer["outcome"]) == (200, "no_live_session")

    tampered = body.replace(b"r-sig", b"r-sag")
    status, answer = await post_hook(anonymous, tampered, sign_body(body, API_KEY, API_SECRET))
    assert status == 401
    assert "does not match the signed sha256" in answer["reason"]

    status, answer = await post_hook(anonymous, body, None)
    assert (status, answer["error"]) == (401, "unsigned")

    other_secret = sign_body(body, API_KEY, "another-secret-of-at-least-32-bytes-long")
    status, answer = await post_hook(anonymous, body, other_secret)
    assert status == 401
    assert "LIVEKIT_API_SECRET" in answer["reason"]

    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    expired = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_ttl(timedelta(seconds=-120))
        .with_sha256(digest)
        .to_jwt()
    )
    status, answer = await post_hook(anonymous, body, expired)
    assert (status, answer["reason"]) == (401, "webhook rejected: its token has expired")

    no_hash = api.AccessToken(API_KEY, API_SECRET).to_jwt()
    status, _ = await post_hook(anonymous, body, no_hash)
    assert status == 401

    status, _ = await post_hook(anonymous, body, "not-a-jwt")
    assert status == 401

    garbage = b"not json"
    status, _ = await post_hook(anonymous, garbage, sign_body(garbage, API_KEY, API_SECRET))
    assert status == 400


async def test_room_finished_from_livekit_ends_the_session_promptly(
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    _, accepted = await call(
        client, "POST", "/v1/dispatches", {"event_id": "evt-hook", "room": "r-hook"}
    )
    sid = accepted["session_id"]
    await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    handled = await counted_once_more(client, "room_finished", "ending")
    await sim.close_room("r-hook")  # the sim posts a signed room_finished to the service
    await eventually(handled, what="room_finished acted on")
    session = await eventually(lambda: session_in(client, sid, "ending", "lost"), what="ending")
    assert session.get("gone_since")  # the report grace runs from LiveKit's word
    await eventually(lambda: session_in(client, sid, "lost"), what="lost")
    [entry] = await recent_results(arq_redis)
    assert (entry.report.status, entry.report.source) == ("lost", "orchestrator")
    assert sim.webhooks.failed == 0


async def test_the_agents_own_report_wins(
    client: aiohttp.ClientSession,
    redis_server: LocalRedis,
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
) -> None:
    await run_worker(make_settings(redis_server, sim, report_grace_s=30))
    _, accepted = await call(
        client, "POST", "/v1/dispatches", {"event_id": "evt-win", "room": "r-win"}
    )
    sid = accepted["session_id"]
    await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    await sim.close_room("r-win")
    await eventually(lambda: session_in(client, sid, "ending"), what="ending")
    report = agent_report(sid, "r-win", event_id="evt-win", end_reason="room closed")
    await enqueue_session_report(arq_redis, report)
    session = await eventually(lambda: session_in(client, sid, "completed"), what="completed")
    assert session["report_source"] == "agent"


async def test_the_agent_leaving_marks_it_gone_but_a_caller_leaving_does_not(
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
    settings: Settings,
) -> None:
    _, accepted = await call(
        client, "POST", "/v1/dispatches", {"event_id": "evt-left", "room": "r-left"}
    )
    sid = accepted["session_id"]
    session = await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    agent_identity = f"agent-{session['job_id']}"
    await sim.join_participant("r-left", "caller")
    await sim.join_participant("r-left", agent_identity, kind="agent")
    ignored = await counted_once_more(client, "participant_left", "not_the_agent")
    await sim.leave_participant("r-left", "caller")
    await eventually(ignored, what="caller's leave ignored")
    assert await session_in(client, sid, "assigned")

    # The agent left with nobody in the room and sends no report: after the report grace,
    # lost (with people still in, it would be replaced: tests/http/test_failover.py).
    handled = await counted_once_more(client, "participant_left", "agent_gone")
    await sim.leave_participant("r-left", agent_identity)
    await eventually(handled, what="agent's leave acted on")
    await eventually(lambda: session_in(client, sid, "lost"), what="lost")
    assert [d for d in sim.dispatches("r-left") if d.agent_name] == []


def participant(identity: str, kind: int = models.ParticipantInfo.Kind.STANDARD) -> Any:
    return models.ParticipantInfo(identity=identity, kind=kind)  # type: ignore[arg-type]


AGENT = models.ParticipantInfo.Kind.AGENT


def held(status: SessionStatus = SessionStatus.ASSIGNED, **fields: Any) -> Session:
    return Session(session_id="S_1", status=status, **fields)


@pytest.mark.parametrize(
    ("session", "who", "expected"),
    [
        (held(job_id="AJ_1"), participant("agent-S_1", AGENT), True),  # ours: agent-<session>
        (held(job_id="AJ_1"), participant("agent-AJ_1"), True),
        (held(job_id="AJ_1"), participant("agent-AJ_1", AGENT), True),
        (held(job_id="AJ_1"), participant("agent-AJ_2", AGENT), False),  # another job's agent
        (held(job_id="AJ_1"), participant("my-bot", AGENT), True),  # custom identity
        (held(), participant("agent-AJ_9", AGENT), True),  # job not confirmed yet
        (held(), participant("caller"), False),
    ],
)
def test_which_participant_is_the_sessions_agent(
    session: Session, who: Any, expected: bool
) -> None:
    assert is_session_agent(session, who) is expected


def test_a_room_that_closed_before_the_dispatch_does_not_end_it() -> None:
    now_s = int(time.time())
    event = webhook.WebhookEvent(event="room_finished", created_at=now_s)
    dispatched = SessionStatus.DISPATCHED
    assert why_not(held(dispatched, dispatched_at=(now_s + 5) * 1000), event) == (
        "room_closed_before_dispatch"
    )
    assert why_not(held(dispatched, dispatched_at=(now_s - 5) * 1000), event) is None
    assert why_not(held(SessionStatus.CLAIMED), event) == "not_dispatched_yet"
    assert why_not(held(SessionStatus.LOST, dispatched_at=1), event) == "no_live_session"


STRAY = "an agent nobody dispatched through lk-dispatch joined"


async def test_an_agent_nobody_dispatched_through_us_is_told_once_with_the_fix(
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with structlog.testing.capture_logs() as said:
        # The module's logger, bound afresh under the capture (structlog caches bound loggers).
        monkeypatch.setattr(webhooks, "log", structlog.get_logger("orchestrator.webhooks"))
        # A room we hold no session in: an unnamed worker's automatic dispatch, twice.
        for n in (1, 2):
            told = await counted_once_more(client, "participant_joined", "stray_agent")
            await sim.join_participant(
                "r-auto", f"agent-AJ_auto{n}", kind="agent", attributes={"lk.agent.name": ""}
            )
            await eventually(told, what=f"stray agent {n} noticed")

        # Our session's agent, then a token's agent beside it.
        _, accepted = await call(
            client, "POST", "/v1/dispatches", {"event_id": "evt-mixed", "room": "r-mixed"}
        )
        sid = accepted["session_id"]
        session = await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
        ours = await counted_once_more(client, "participant_joined", "session_agent")
        await sim.join_participant("r-mixed", f"agent-{session['job_id']}", kind="agent")
        await eventually(ours, what="our agent recognised")
        told = await counted_once_more(client, "participant_joined", "stray_agent")
        await sim.join_participant(
            "r-mixed", "agent-AJ_token", kind="agent", attributes={"lk.agent_name": "billing"}
        )
        await eventually(told, what="the token's agent noticed")

    said = [entry for entry in said if entry["event"] == STRAY]
    assert [(e["room"], e["agent_name"], e["log_level"]) for e in said] == [
        ("r-auto", "", "warning"),
        ("r-mixed", "billing", "warning"),
    ]
    assert "automatic dispatch" in said[0]["fix"]
    assert said[0]["beside_session"] is None
    assert "room configuration naming agents" in said[1]["fix"]
    assert said[1]["beside_session"] == sid
    assert await session_in(client, sid, "assigned")  # our session goes on
