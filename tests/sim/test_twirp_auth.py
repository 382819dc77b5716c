"""Authentication and wire-level answers (statuses, bodies, exact Content-Type headers), as
livekit-server answers them."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import jwt
import pytest
from google.protobuf import json_format
from livekit import api
from livekit.protocol import agent_dispatch

from livekit_sim import LiveKitSim
from tests.sim.conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.integration

CREATE_DISPATCH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def admin_token(room: str, *, key: str = API_KEY, secret: str = API_SECRET) -> str:
    grants = api.VideoGrants(room_admin=True, room=room)
    return api.AccessToken(key, secret).with_grants(grants).to_jwt()


async def test_token_for_another_room_is_unauthenticated(sim: LiveKitSim) -> None:
    async with api.LiveKitAPI(sim.url, token=admin_token("room-a")) as lk:
        with pytest.raises(api.ServerError) as err:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="room-b"))
    assert (err.value.code, err.value.status, err.value.message) == (
        "unauthenticated",
        401,
        "permissions denied",
    )
    assert "room-b" not in sim.rooms


async def test_token_for_the_right_room_is_accepted(sim: LiveKitSim) -> None:
    async with api.LiveKitAPI(sim.url, token=admin_token("room-a")) as lk:
        dispatch = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(room="room-a")
        )
    assert dispatch.room == "room-a"


@pytest.mark.parametrize("call", ["create_room", "delete_room", "list_rooms"])
async def test_room_admin_grant_does_not_allow_room_create_or_list(
    sim: LiveKitSim, call: str
) -> None:
    calls = {
        "create_room": lambda lk: lk.room.create_room(api.CreateRoomRequest(name="room-a")),
        "delete_room": lambda lk: lk.room.delete_room(api.DeleteRoomRequest(room="room-a")),
        "list_rooms": lambda lk: lk.room.list_rooms(api.ListRoomsRequest()),
    }
    async with api.LiveKitAPI(sim.url, token=admin_token("room-a")) as lk:
        with pytest.raises(api.ServerError) as err:
            await calls[call](lk)
    assert (err.value.code, err.value.status, err.value.message) == (
        "unauthenticated",
        401,
        "permissions denied",
    )


async def test_room_create_grant_does_not_allow_dispatch(sim: LiveKitSim) -> None:
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_create=True))
    async with api.LiveKitAPI(sim.url, token=token.to_jwt()) as lk:
        with pytest.raises(api.ServerError) as err:
            await lk.agent_dispatch.list_dispatch("room-a")
    assert (err.value.code, err.value.status) == ("unauthenticated", 401)


@pytest.mark.parametrize(
    ("key", "secret"),
    [(API_KEY, "another-secret-0123456789-abcdefghijk"), ("unknown-key", API_SECRET)],
)
async def test_bad_signature_or_unknown_key_is_a_plain_401(
    sim: LiveKitSim, key: str, secret: str
) -> None:
    async with api.LiveKitAPI(sim.url, key, secret) as lk:
        with pytest.raises(api.ServerError) as err:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="room-a"))
    assert (err.value.code, err.value.status, err.value.message) == ("unknown", 401, "")
    assert [c.code for c in sim.calls] == ["http_401"]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
    """Status, the exact Content-Type header (parameters included) and body of the answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=io.BytesIO(body), headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def _bearer(room_name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + admin_token(room_name)}


async def test_no_token_is_unauthenticated_twirp_json(sim: LiveKitSim) -> None:
    body = agent_dispatch.CreateAgentDispatchRequest(room="room-a").SerializeToString()
    status, ctype, text = await _post(
        sim.url + CREATE_DISPATCH, body, {"Content-Type": "application/protobuf"}
    )
    assert (status, ctype) == (401, "application/json")
    assert json.loads(text) == {"code": "unauthenticated", "msg": "permissions denied"}


async def test_authorization_without_bearer_is_a_plain_401(sim: LiveKitSim) -> None:
    status, ctype, text = await _post(
        sim.url + CREATE_DISPATCH,
        b"",
        {"Content-Type": "application/protobuf", "Authorization": admin_token("room-a")},
    )
    assert (status, ctype) == (401, "text/plain; charset=utf-8")
    assert text == "invalid authorization header. Must start with Bearer "


async def test_body_over_10_mib_is_a_plain_413(sim: LiveKitSim) -> None:
    status, ctype, text = await _post(
        sim.url + CREATE_DISPATCH,
        b"\0" * (10 * 1024 * 1024 + 1),
        {
            "Content-Type": "application/protobuf",
            "Authorization": "Bearer " + admin_token("room-a"),
        },
    )
    assert (status, ctype, text) == (413, "text/plain; charset=utf-8", "request body too large")


async def test_unknown_method_is_bad_route(sim: LiveKitSim) -> None:
    status, _, text = await _post(
        sim.url + "/twirp/livekit.AgentDispatchService/CreateDispatchX",
        b"",
        {
            "Content-Type": "application/protobuf",
            "Authorization": "Bearer " + admin_token("room-a"),
        },
    )
    assert status == 404
    assert json.loads(text)["code"] == "bad_route"


async def test_json_bodies_use_proto_names_and_emit_defaults(sim: LiveKitSim) -> None:
    request = {"room": "room-j", "agent_name": "support", "not_a_field": 1}
    status, ctype, text = await _post(
        sim.url + CREATE_DISPATCH,
        json.dumps(request).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer " + admin_token("room-j")},
    )
    assert (status, ctype) == (200, "application/json")
    answer = json.loads(text)
    assert answer["room"] == "room-j"
    assert answer["agent_name"] == "support"
    assert answer["metadata"] == ""
    assert answer["state"]["jobs"] == []
    assert int(answer["state"]["created_at"]) > 0


async def test_malformed_protobuf_is_malformed(sim: LiveKitSim) -> None:
    status, _, text = await _post(
        sim.url + CREATE_DISPATCH,
        b"\xff\xff\xff",
        {
            "Content-Type": "application/protobuf",
            "Authorization": "Bearer " + admin_token("room-a"),
        },
    )
    assert status == 400
    assert json.loads(text)["code"] == "malformed"


async def test_expired_token_is_a_plain_401(sim: LiveKitSim) -> None:
    token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_grants(api.VideoGrants(room_admin=True, room="room-a"))
        .with_ttl(timedelta(minutes=-2))
    )
    async with api.LiveKitAPI(sim.url, token=token.to_jwt()) as lk:
        with pytest.raises(api.ServerError) as err:
            await lk.agent_dispatch.list_dispatch("room-a")
    assert (err.value.code, err.value.status) == ("unknown", 401)


async def test_unsigned_token_is_a_plain_401(sim: LiveKitSim) -> None:
    claims = {
        "iss": API_KEY,
        "exp": int(time.time()) + 600,
        "video": {"roomAdmin": True, "room": "room-a"},
    }
    unsigned = jwt.encode(claims, None, algorithm="none")
    async with api.LiveKitAPI(sim.url, token=unsigned) as lk:
        with pytest.raises(api.ServerError) as err:
            await lk.agent_dispatch.list_dispatch("room-a")
    assert (err.value.code, err.value.status) == ("unknown", 401)
    assert "room-a" not in sim.rooms


CREATE_ROOM_A = agent_dispatch.CreateAgentDispatchRequest(room="room-a")


@pytest.mark.parametrize(
    ("content_type", "body", "expected_type"),
    [
        ("application/json", b'{"room": "room-a"}', "application/json"),
        ("application/protobuf", CREATE_ROOM_A.SerializeToString(), "application/protobuf"),
        ("Application/JSON; charset=utf-8", b'{"room": "room-a"}', "application/json"),
    ],
)
async def test_success_answers_have_twirps_exact_content_type(
    sim: LiveKitSim, content_type: str, body: bytes, expected_type: str
) -> None:
    headers = {"Content-Type": content_type, **_bearer("room-a")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url + CREATE_DISPATCH, data=body, headers=headers) as resp,
    ):
        assert (resp.status, resp.headers["Content-Type"]) == (200, expected_type)
        answer = await resp.read()
    dispatch = agent_dispatch.AgentDispatch()
    if expected_type == "application/json":
        json_format.Parse(answer, dispatch)
    else:
        dispatch.ParseFromString(answer)
    assert dispatch.room == "room-a"


async def test_error_answers_are_exactly_application_json(
    sim: LiveKitSim, lkapi: api.LiveKitAPI
) -> None:
    """LiveKit's Node SDK parses a Twirp error body only for this exact type."""
    sim.faults.set("RoomService/ListRooms", error_rate=1.0, error_code="internal", error_msg="é")
    sim.faults.set("AgentDispatchService/DeleteDispatch", lost_answer_rate=1.0)
    created = await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(room="room-x")
    )
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True))
    delete = sim.url + "/twirp/livekit.AgentDispatchService/DeleteDispatch"
    answers = [
        await _post(  # the handler's own error
            delete,
            b'{"room": "room-y", "dispatch_id": "AD_none"}',
            {"Content-Type": "application/json", **_bearer("room-y")},
        ),
        await _post(  # an injected error
            sim.url + "/twirp/livekit.RoomService/ListRooms",
            b"",
            {"Content-Type": "application/protobuf", "Authorization": f"Bearer {token.to_jwt()}"},
        ),
        await _post(  # a lost answer: the dispatch is deleted, the answer is an error
            delete,
            json.dumps({"room": "room-x", "dispatch_id": created.id}).encode(),
            {"Content-Type": "application/json", **_bearer("room-x")},
        ),
    ]

    assert [(status, ctype) for status, ctype, _ in answers] == [
        (503, "application/json"),
        (500, "application/json"),
        (503, "application/json"),
    ]
    assert [text for _, _, text in answers] == [
        '{"code":"unavailable","msg":"no response from servers"}',
        '{"code":"internal","msg":"é"}',
        '{"code":"unavailable","msg":"injected fault"}',
    ]
    assert created.id not in [d.id for d in sim.dispatches("room-x")]


async def test_bad_routes_carry_twirps_meta_and_quoting(sim: LiveKitSim) -> None:
    url = sim.url + CREATE_DISPATCH
    async with aiohttp.ClientSession() as session, session.get(url, headers=_bearer("r")) as resp:
        wrong_method = (resp.status, resp.headers["Content-Type"], await resp.json())
    wrong_type = await _post(url, b"x=1", {"Content-Type": "text/plain", **_bearer("r")})
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers=_bearer("r"), skip_auto_headers=["Content-Type"]) as resp,
    ):
        no_type = await resp.json()

    assert wrong_method == (
        404,
        "application/json",
        {
            "code": "bad_route",
            "msg": 'unsupported method "GET" (only POST is allowed)',
            "meta": {"twirp_invalid_route": f"GET {CREATE_DISPATCH}"},
        },
    )
    assert wrong_type[:2] == (404, "application/json")
    assert json.loads(wrong_type[2])["msg"] == 'unexpected Content-Type: "text/plain"'
    assert no_type == {
        "code": "bad_route",
        "msg": 'unexpected Content-Type: ""',
        "meta": {"twirp_invalid_route": f"POST {CREATE_DISPATCH}"},
    }


async def test_declared_oversized_body_is_refused_before_authentication(sim: LiveKitSim) -> None:
    status, ctype, text = await _post(
        sim.url + CREATE_DISPATCH,
        b"\0" * (10 * 1024 * 1024 + 1),
        {"Content-Type": "application/protobuf", "Authorization": "Bearer not-a-jwt"},
    )
    assert (status, ctype, text) == (413, "text/plain; charset=utf-8", "request body too large")
    assert [c.code for c in sim.calls] == ["http_413"]


async def test_chunked_oversized_body_fails_twirps_read(sim: LiveKitSim) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"\0" * (1024 * 1024)

    headers = {"Content-Type": "application/protobuf", **_bearer("room-a")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url + CREATE_DISPATCH, data=chunks(), headers=headers) as resp,
    ):
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert (resp.status, resp.headers["Content-Type"]) == (400, "application/json")
        assert await resp.json() == {"code": "malformed", "msg": "failed to read request body"}
