"""Authentication and wire-level errors, as livekit-server answers them."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import aiohttp
import jwt
import pytest
from livekit import api
from livekit.protocol import agent_dispatch

from livekit_sim import LiveKitSim
from tests.sim.conftest import API_KEY, API_SECRET

CREATE_DISPATCH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


def admin_token(room: str, *, key: str = API_KEY, secret: str = API_SECRET) -> str:
    grants = api.VideoGrants(room_admin=True, room=room)
    return api.AccessToken(key, secret).with_grants(grants).to_jwt()


async def test_token_for_another_room_is_unauthenticated(sim: LiveKitSim) -> None:
    async with api.LiveKitAPI(sim.url, token=admin_token("room-a")) as lk:
        with pytest.raises(api.TwirpError) as err:
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
        with pytest.raises(api.TwirpError) as err:
            await calls[call](lk)
    assert (err.value.code, err.value.status, err.value.message) == (
        "unauthenticated",
        401,
        "permissions denied",
    )


async def test_room_create_grant_does_not_allow_dispatch(sim: LiveKitSim) -> None:
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_create=True))
    async with api.LiveKitAPI(sim.url, token=token.to_jwt()) as lk:
        with pytest.raises(api.TwirpError) as err:
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
        with pytest.raises(api.TwirpError) as err:
            await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(room="room-a"))
    assert (err.value.code, err.value.status, err.value.message) == ("unknown", 401, "")
    assert [c.code for c in sim.calls] == ["http_401"]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=io.BytesIO(body), headers=headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


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
    assert (status, ctype) == (401, "text/plain")
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
    assert (status, ctype, text) == (413, "text/plain", "request body too large")


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
        with pytest.raises(api.TwirpError) as err:
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
        with pytest.raises(api.TwirpError) as err:
            await lk.agent_dispatch.list_dispatch("room-a")
    assert (err.value.code, err.value.status) == ("unknown", 401)
    assert "room-a" not in sim.rooms
