"""The JSON API against a real Redis, an in-process orchestrator worker and the LiveKit sim."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from arq import ArqRedis
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError

from livekit_sim import LiveKitSim
from orchestrator.gateway.join import Participant
from orchestrator.http.app import routes
from orchestrator.http.service import SERVICE
from orchestrator.store import queries
from tasks import DispatchRequest, EndSessionRequest, enqueue_session_report
from tests.http.conftest import Service
from tests.orchestrator.test_dispatch import CREATE
from tests.orchestrator.test_sessions import agent_report
from tests.support.fake_worker import AcceptingWorker
from tests.support.http_service import running_service
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def call(
    client: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with client.request(method, path, json=body, **kw) as resp:
        return resp.status, await resp.json()


async def session_in(client: aiohttp.ClientSession, session_id: str, *statuses: str) -> Any:
    status, body = await call(client, "GET", f"/v1/sessions/{session_id}")
    return body if status == 200 and body["status"] in statuses else None


async def test_dispatch_round_trip_is_idempotent_and_ends_with_a_report(
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    room = "team/support 1"  # a room name that needs escaping in a URL
    event = {"event_id": "evt-api-1", "room": room, "metadata": {"user_id": "u1"}}
    status, first = await call(client, "POST", "/v1/dispatches", event)
    assert status == 202, first
    assert first["job_id"] == "dispatch:evt-api-1"
    assert first["event_id"] == "evt-api-1"
    sid = first["session_id"]
    assert first["status_url"] == f"/v1/sessions/{sid}"

    session = await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    assert session["room"] == room
    assert session["agent_name"] == "support-agent"
    assert session["time_to_dispatch_ms"] >= 0

    status, again = await call(client, "POST", "/v1/dispatches", event)
    assert status == 202
    assert (again["job_id"], again["session_id"]) == (first["job_id"], sid)
    assert again["outcome"] == "dispatched"
    assert len(sim.calls_to(CREATE)) == 1

    status, by_room = await call(client, "GET", f"/v1/rooms/{quote(room, safe='')}/session")
    assert (status, by_room["session_id"]) == (200, sid)
    status, page = await call(
        client, "GET", "/v1/sessions?status=assigned&agent_name=support-agent"
    )
    assert [s["session_id"] for s in page["sessions"]] == [sid]
    status, page = await call(client, "GET", "/v1/sessions?status=completed")
    assert page["sessions"] == []
    status, page = await call(client, "GET", "/v1/sessions?since=2000-01-01T00:00:00Z&until=1")
    assert (status, page["sessions"]) == (200, [])
    status, event_view = await call(client, "GET", "/v1/events/evt-api-1")
    assert (event_view["session_id"], event_view["outcome"]) == (sid, "dispatched")

    await enqueue_session_report(arq_redis, agent_report(sid, room, event_id="evt-api-1"))
    await eventually(lambda: session_in(client, sid, "completed"), what="completed")
    status, results = await call(client, "GET", "/v1/results?count=5")
    assert status == 200
    [result] = results["results"]
    assert result["report"]["session_id"] == sid
    assert result["report"]["status"] == "completed"

    status, body = await call(client, "POST", "/v1/sessions/end", {"session_id": sid})
    assert (status, body["error"]) == (409, "already_ended")


async def test_end_session_through_the_api(
    client: aiohttp.ClientSession,
    sim: LiveKitSim,
    orchestrator: Worker,
    agent_worker: AcceptingWorker,
) -> None:
    status, accepted = await call(
        client, "POST", "/v1/dispatches", {"event_id": "evt-end", "room": "r-end"}
    )
    sid = accepted["session_id"]
    await eventually(lambda: session_in(client, sid, "assigned"), what="assigned")
    request = EndSessionRequest(room="r-end", reason="ticket closed").model_dump(mode="json")
    status, body = await call(client, "POST", "/v1/sessions/end", request)
    assert status == 202, body
    assert (body["session_id"], body["room"]) == (sid, "r-end")
    session = await eventually(lambda: session_in(client, sid, "ending"), what="ending")
    assert session["end_reason"] == "ticket closed"
    await eventually(lambda: agent_worker.terminated, what="agent job terminated")


async def test_every_invalid_field_is_named(client: aiohttp.ClientSession) -> None:
    bad = {
        "event_id": "has a space",
        "room": "",
        "agent_name": "-bad",
        "expires_at": "2026-01-01T00:00:00",
        "colour": "red",
    }
    status, body = await call(client, "POST", "/v1/dispatches", bad)
    assert status == 422
    assert body["error"] == "invalid_request"
    fields = {f["field"]: f["message"] for f in body["fields"]}
    assert set(fields) == {"event_id", "room", "agent_name", "expires_at", "colour"}
    assert "must not be empty" in fields["room"]
    assert "timezone" in fields["expires_at"]
    assert "5 invalid fields" in body["reason"]
    assert "has a space" not in str(body)  # messages, not the values sent

    status, body = await call(client, "POST", "/v1/dispatches", data=b"{not json")
    assert status == 422
    assert [f["field"] for f in body["fields"]] == ["(body)"]

    status, body = await call(client, "POST", "/v1/sessions/end", {"session_id": "S", "room": "r"})
    assert status == 422
    assert "exactly one of session_id and room" in body["fields"][0]["message"]

    status, body = await call(client, "GET", "/v1/sessions?limit=0&status=bogus&since=yesterday")
    assert status == 422
    assert {f["field"] for f in body["fields"]} == {"limit", "status", "since"}


async def test_unknown_things_are_404_with_a_reason(client: aiohttp.ClientSession) -> None:
    for method, path, body in [
        ("GET", "/v1/sessions/S_unknown", None),
        ("GET", "/v1/rooms/nobody-here/session", None),
        ("GET", "/v1/events/never-sent", None),
        ("POST", "/v1/sessions/end", {"session_id": "S_unknown"}),
        ("POST", "/v1/sessions/end", {"room": "nobody-here"}),
        ("POST", "/v1/dead-letters/1-1/replay", None),
        ("POST", "/v1/dead-letters/not-an-id/replay", None),
        ("GET", "/v1/no-such-endpoint", None),
    ]:
        status, answer = await call(client, method, path, body)
        assert status == 404, (path, answer)
        assert answer["error"] == "not_found"
        assert answer["reason"]


async def test_token_is_required_and_checked(
    service: Service, anonymous: aiohttp.ClientSession
) -> None:
    for method, path in [
        ("GET", "/v1/sessions"),
        ("GET", "/v1/overview"),
        ("POST", "/v1/dispatches"),
        ("POST", "/v1/dead-letters/1-1/replay"),
    ]:
        status, body = await call(anonymous, method, path, {"event_id": "e", "room": "r"})
        assert (status, body["error"]) == (401, "unauthorized"), path
        assert "Bearer" in body["reason"]
        status, body = await call(
            anonymous, method, path, headers={"Authorization": "Bearer wrong-token"}
        )
        assert (status, body["reason"]) == (401, "wrong bearer token"), path
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/static/app.js"):
        async with anonymous.get(path) as resp:
            assert resp.status in (200, 503), path


async def test_without_a_token_setting_the_api_is_read_only(
    settings: Any, arq_redis: ArqRedis
) -> None:
    read_only = settings.model_copy(update={"api_token": None})
    async with running_service(read_only) as (url, _), aiohttp.ClientSession(base_url=url) as anon:
        status, _ = await call(anon, "GET", "/v1/sessions")
        assert status == 200
        status, body = await call(anon, "POST", "/v1/dispatches", {"event_id": "e", "room": "r"})
        assert (status, body["error"]) == (403, "read_only")
        assert "LKD_API_TOKEN" in body["reason"]


async def test_dead_letters_are_listed_and_replayed_once(
    client: aiohttp.ClientSession, sim: LiveKitSim, orchestrator: Worker
) -> None:
    sim.faults.set(CREATE, error_rate=1.0, error_code="invalid_argument", error_msg="bad agent")
    event = DispatchRequest(event_id="evt-dead", room="r-dead", metadata={"phone": "+15550100"})
    status, accepted = await call(client, "POST", "/v1/dispatches", event.model_dump(mode="json"))
    first_sid = accepted["session_id"]
    await eventually(lambda: session_in(client, first_sid, "failed"), what="dispatch failed")

    status, page = await call(client, "GET", "/v1/dead-letters")
    [letter] = page["dead_letters"]
    assert letter["kind"] == "failed_dispatch"
    assert "bad agent" in letter["reason"]
    assert letter["replayable"] is True
    assert "payload" not in letter or letter["payload"] is None
    status, page = await call(client, "GET", "/v1/dead-letters?include_payload=true")
    assert "+15550100" in page["dead_letters"][0]["payload"]

    sim.faults.clear()
    status, replayed = await call(client, "POST", f"/v1/dead-letters/{letter['entry_id']}/replay")
    assert status == 202, replayed
    assert replayed["job_id"] == "dispatch:evt-dead:g1"
    status, again = await call(client, "POST", f"/v1/dead-letters/{letter['entry_id']}/replay")
    assert (status, again["error"]) == (409, "not_replayable")
    assert "already replayed" in again["reason"]

    async def replayed_session() -> Any:
        _, view = await call(client, "GET", "/v1/events/evt-dead")
        return view if view["session_id"] != first_sid else None

    view = await eventually(replayed_session, what="replay dispatched")
    await eventually(lambda: session_in(client, view["session_id"], "dispatched", "assigned"))


async def test_openapi_document_is_generated_from_the_routes_and_models(
    anonymous: aiohttp.ClientSession,
) -> None:
    async with anonymous.get("/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in routes()}
    assert documented == served
    schemas = doc["components"]["schemas"]
    event_fields = set(DispatchRequest.model_fields)
    assert set(schemas["DispatchBody"]["properties"]) == event_fields | {"participant"}
    assert set(schemas["Participant"]["properties"]) == set(Participant.model_fields)
    dispatch = doc["paths"]["/v1/dispatches"]["post"]
    assert dispatch["security"] == [{"bearerAuth": []}]
    assert set(dispatch["responses"]) >= {"202", "401", "403", "422"}
    query = {p["name"] for p in doc["paths"]["/v1/sessions"]["get"]["parameters"]}
    assert query == {"status", "agent_name", "since", "until", "limit"}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_failures_answer_json_without_a_stack_trace(
    service: Service, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def redis_down(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    async def bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(service.app[SERVICE].redis, "hgetall", redis_down)
    status, body = await call(client, "GET", "/v1/sessions/S_x")
    assert (status, body["error"]) == (503, "redis_unavailable")

    monkeypatch.setattr(queries, "newest_in_room", bug)
    status, body = await call(client, "GET", "/v1/rooms/r/session")
    assert status == 500
    assert body == {"error": "internal", "reason": "internal error: see the service's log"}
