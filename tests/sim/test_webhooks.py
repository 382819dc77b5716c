"""Webhooks: delivered to a receiver, signed so that livekit-api's WebhookReceiver verifies them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from livekit import api

from livekit_sim import LiveKitSim
from tests.sim.conftest import API_KEY, API_SECRET
from tests.support.sim import MakeSim
from tests.support.waiting import eventually as wait_for

pytestmark = pytest.mark.integration


@dataclass
class Received:
    body: str
    headers: dict[str, str]


@dataclass
class Receiver:
    url: str = ""
    hooks: list[Received] = field(default_factory=list)
    fail_first: int = 0  # answer this many requests with 503 first

    def events(self) -> list[str]:
        return [json.loads(h.body)["event"] for h in self.hooks]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def handle(request: web.Request) -> web.Response:
        if state.fail_first > 0:
            state.fail_first -= 1
            return web.Response(status=503)
        state.hooks.append(Received(await request.text(), dict(request.headers)))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


@pytest.fixture
async def hooked_sim(receiver: Receiver, make_sim: MakeSim) -> LiveKitSim:
    return await make_sim(webhook_urls=[receiver.url])


def verify(hook: Received) -> api.WebhookEvent:
    return api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET)).receive(
        hook.body, hook.headers["Authorization"]
    )


async def test_room_and_participant_events_are_delivered_and_verify(
    hooked_sim: LiveKitSim, receiver: Receiver
) -> None:
    await hooked_sim.join_participant("w1", "caller", name="Caller")
    await wait_for(lambda: len(receiver.hooks) == 2, what="room_started + participant_joined")
    await hooked_sim.leave_participant("w1", "caller")
    async with api.LiveKitAPI(hooked_sim.url, API_KEY, API_SECRET) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="w1"))
    await wait_for(lambda: len(receiver.hooks) == 4, what="participant_left + room_finished")

    events = [verify(h) for h in receiver.hooks]
    assert sorted(e.event for e in events[:2]) == ["participant_joined", "room_started"]
    assert sorted(e.event for e in events[2:]) == ["participant_left", "room_finished"]
    for event in events:
        assert event.id.startswith("EV_")
        assert abs(event.created_at - time.time()) < 60
        assert event.room.name == "w1"
    joined = next(e for e in events if e.event == "participant_joined")
    assert (joined.participant.identity, joined.participant.name) == ("caller", "Caller")
    for hook in receiver.hooks:
        assert hook.headers["Content-Type"] == "application/webhook+json"
        assert hook.headers["User-Agent"] == "LiveKit"
        assert not hook.headers["Authorization"].startswith("Bearer")


async def test_body_is_lower_camel_case_protojson(
    hooked_sim: LiveKitSim, receiver: Receiver
) -> None:
    await hooked_sim.join_participant("w2", "caller")
    await wait_for(lambda: "participant_joined" in receiver.events(), what="participant_joined")
    body = json.loads(next(h.body for h in receiver.hooks if "participant_joined" in h.body))
    assert "createdAt" in body
    assert "joinedAt" in body["participant"]
    assert "created_at" not in body
    assert "metadata" not in body["participant"]  # unpopulated fields are omitted


async def test_tampered_body_fails_verification(hooked_sim: LiveKitSim, receiver: Receiver) -> None:
    await hooked_sim.join_participant("w3", "caller")
    await wait_for(lambda: receiver.hooks, what="a webhook")
    hook = receiver.hooks[0]
    tampered = Received(hook.body.replace("w3", "w4"), hook.headers)
    with pytest.raises(Exception, match="hash mismatch"):
        verify(tampered)
    wrong_secret = api.WebhookReceiver(
        api.TokenVerifier(API_KEY, "some-other-secret-0123456789-abcdef")
    )
    with pytest.raises(Exception, match="Signature"):
        wrong_secret.receive(hook.body, hook.headers["Authorization"])


async def test_failed_delivery_is_retried(hooked_sim: LiveKitSim, receiver: Receiver) -> None:
    receiver.fail_first = 1
    await hooked_sim.join_participant("w5", "caller")
    await wait_for(lambda: len(receiver.hooks) == 2, what="both events despite one 503")
    assert sorted(receiver.events()) == ["participant_joined", "room_started"]
    await hooked_sim.settle()  # the sim counts a delivery once it has read the answer
    assert hooked_sim.counters()["webhooks_delivered"] == 2
