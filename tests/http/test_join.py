"""Join tokens for the people in the room: from a dispatch's answer, and later for a live
session's room; signed with our key, made out to the person, and never carrying agents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from arq import ArqRedis
from arq.jobs import Job
from arq.worker import Worker
from livekit import api

from livekit_sim import LiveKitSim
from tasks.serialization import deserialize
from tests.http.conftest import API_KEY, API_SECRET
from tests.http.test_api import call, session_in
from tests.support.fake_worker import AcceptingWorker
from tests.support.http_service import running_service
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def claims_of(token: str) -> dict[str, Any]:
    """The token's claims, its signature checked with the LiveKit key's secret."""
    api.TokenVerifier(API_KEY, API_SECRET).verify(token)  # raises on a bad signature
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_a_dispatch_with_a_participant_answers_how_that_person_joins(
    client: aiohttp.ClientSession, sim: LiveKitSim, arq_redis: ArqRedis
) -> None:
    person = {
        "identity": "caller-7",
        "name": "Ada",
        "attributes": {"ticket": "T-1"},
        "metadata": '{"lang": "en"}',
        "ttl_s": 600,
    }
    event = {"event_id": "ev-join-1", "room": "join-room", "participant": person}
    status, answer = await call(client, "POST", "/v1/dispatches", event)
    assert status == 202, answer
    join = answer["join"]
    assert join["url"] == "ws://" + sim.url.removeprefix("http://")
    assert (join["room"], join["identity"]) == ("join-room", "caller-7")

    claims = claims_of(join["token"])
    assert (claims["sub"], claims["iss"], claims["name"]) == ("caller-7", API_KEY, "Ada")
    assert claims["attributes"] == {"ticket": "T-1"}
    assert claims["metadata"] == '{"lang": "en"}'
    video = claims["video"]
    assert (video["roomJoin"], video["room"]) == (True, "join-room")
    assert (video["canPublish"], video["canSubscribe"], video["canPublishData"]) == (True,) * 3
    assert not any(video.get(g) for g in ("roomAdmin", "roomCreate", "roomList", "agent"))
    assert "roomConfig" not in claims  # a token with agents would give zero agents or two
    assert claims["exp"] - claims["nbf"] == 600
    assert datetime.fromisoformat(join["expires_at"]).timestamp() == claims["exp"]

    # The event went on the queue without the participant.
    queued = await Job(answer["job_id"], arq_redis, _deserializer=deserialize).info()
    assert queued is not None
    assert queued.args[0]["room"] == "join-room"
    assert "participant" not in queued.args[0]
    status, again = await call(client, "POST", "/v1/dispatches", {**event, "participant": None})
    assert (status, again["session_id"], again["join"]) == (202, answer["session_id"], None)


async def test_a_repeated_event_for_another_room_gets_no_token_for_it(
    client: aiohttp.ClientSession,
) -> None:
    event = {"event_id": "ev-join-6", "room": "room-a"}
    status, _ = await call(client, "POST", "/v1/dispatches", event)
    assert status == 202
    person = {"identity": "caller-6"}
    again = {**event, "room": "room-b", "participant": person}
    status, body = await call(client, "POST", "/v1/dispatches", again)
    assert (status, body["error"]) == (409, "event_conflict")
    assert "received for room 'room-a', not 'room-b'" in body["reason"]
    status, answer = await call(client, "POST", "/v1/dispatches", {**event, "participant": person})
    assert (status, answer["join"]["room"]) == (202, "room-a")


async def test_listen_only_grants_and_the_default_lifetime(client: aiohttp.ClientSession) -> None:
    person = {"identity": "listener", "grants": {"can_publish": False, "can_publish_data": False}}
    event = {"event_id": "ev-join-2", "room": "join-room-2", "participant": person}
    status, answer = await call(client, "POST", "/v1/dispatches", event)
    assert status == 202, answer
    claims = claims_of(answer["join"]["token"])
    assert claims["video"]["canPublish"] is False
    assert claims["video"]["canPublishData"] is False
    assert claims["video"]["canSubscribe"] is True
    assert claims["exp"] - claims["nbf"] == 3600


@pytest.mark.parametrize(
    ("person", "field"),
    [
        ({}, "participant.identity"),
        ({"identity": ""}, "participant.identity"),
        ({"identity": "a\nb"}, "participant.identity"),
        ({"identity": "agent-S_1234"}, "participant.identity"),  # would replace the agent
        ({"identity": "a", "ttl_s": 5}, "participant.ttl_s"),
        ({"identity": "a", "ttl_s": 10**9}, "participant.ttl_s"),
        ({"identity": "a", "attributes": {"k": 1}}, "participant.attributes.k"),
        ({"identity": "a", "metadata": "x" * 20_000}, "participant.metadata"),
        ({"identity": "a", "grants": {"room_admin": True}}, "participant.grants.room_admin"),
        ({"identity": "a", "room_config": {"agents": [{}]}}, "participant.room_config"),
    ],
)
async def test_a_wrong_participant_is_refused_and_nothing_is_queued(
    client: aiohttp.ClientSession, person: dict[str, Any], field: str
) -> None:
    event = {"event_id": "ev-join-bad", "room": "join-room-3", "participant": person}
    status, body = await call(client, "POST", "/v1/dispatches", event)
    assert (status, body["error"]) == (422, "invalid_request"), body
    assert field in [f["field"] for f in body["fields"]], body
    status, _ = await call(client, "GET", "/v1/events/ev-join-bad")
    assert status == 404


async def test_a_live_sessions_room_gets_more_tokens_an_ended_or_unknown_one_none(
    client: aiohttp.ClientSession,
    anonymous: aiohttp.ClientSession,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    status, answer = await call(
        client, "POST", "/v1/dispatches", {"event_id": "ev-join-4", "room": "join-room-4"}
    )
    assert (status, answer["join"]) == (202, None)
    sid = answer["session_id"]
    await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")

    path = f"/v1/sessions/{sid}/tokens"
    status, join = await call(client, "POST", path, {"identity": "supervisor", "name": "Sam"})
    assert status == 201, join
    claims = claims_of(join["token"])
    assert (claims["sub"], claims["video"]["room"]) == ("supervisor", "join-room-4")

    status, body = await call(anonymous, "POST", path, {"identity": "intruder"})
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = await call(client, "POST", path, {"identity": "x", "kind": "agent"})
    assert (status, body["error"]) == (422, "invalid_request")

    status, body = await call(client, "POST", "/v1/sessions/S_nope/tokens", {"identity": "a"})
    assert (status, body["error"]) == (404, "not_found")

    status, _ = await call(client, "POST", "/v1/sessions/end", {"session_id": sid})
    assert status == 202
    # The protocol-level agent sends no report: the session ends `lost` once it is gone.
    ended = await eventually(lambda: session_in(client, sid, "completed", "lost"), what="ended")
    status, body = await call(client, "POST", path, {"identity": "late"})
    assert (status, body["error"]) == (409, "already_ended")
    assert f"has ended ({ended['status']})" in body["reason"]


async def test_the_client_url_is_the_one_configured_for_clients(
    client: aiohttp.ClientSession, service: Any
) -> None:
    settings = service.settings.model_copy(update={"client_url": "wss://lk.example.com"})
    async with (
        running_service(settings) as (url, _),
        aiohttp.ClientSession(base_url=url, headers=client.headers) as other,
    ):
        event = {"event_id": "ev-join-5", "room": "r5", "participant": {"identity": "p"}}
        status, answer = await call(other, "POST", "/v1/dispatches", event)
    assert (status, answer["join"]["url"]) == (202, "wss://lk.example.com")
    assert datetime.fromisoformat(answer["join"]["expires_at"]).tzinfo == UTC
