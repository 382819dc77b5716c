"""The /agent worker protocol, driven by a hand-written websocket client."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from google.protobuf import json_format
from livekit import api
from livekit.protocol import agent, models

from livekit_sim import ids
from livekit_sim.server import LiveKitSim
from livekit_sim.workers import TerminationReason
from tests.support.sim import API_KEY, API_SECRET, MakeSim
from tests.support.waiting import eventually as wait_for

pytestmark = pytest.mark.integration

OTHER_KEY = "protocol-other-key"
OTHER_SECRET = "protocol-other-secret-of-at-least-32-bytes"


def worker_token(key: str = API_KEY, secret: str = API_SECRET, *, agent_grant: bool = True) -> str:
    grants = (
        api.VideoGrants(agent=True) if agent_grant else api.VideoGrants(room_admin=True, room="r")
    )
    return api.AccessToken(key, secret).with_identity("w").with_grants(grants).to_jwt()


class AlwaysZero(random.Random):
    def random(self) -> float:
        return 0.0


class RawWorker:
    """A minimal worker: sends WorkerMessages, reads ServerMessages."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.id = ""

    async def send(self, **message: object) -> None:
        await self.ws.send_bytes(agent.WorkerMessage(**message).SerializeToString())  # type: ignore[arg-type]

    async def recv(self, timeout_s: float = 5.0) -> agent.ServerMessage:
        msg = await self.ws.receive(timeout=timeout_s)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return agent.ServerMessage.FromString(msg.data)

    async def register(self, **fields: object) -> agent.RegisterWorkerResponse:
        await self.send(register=agent.RegisterWorkerRequest(**fields))  # type: ignore[arg-type]
        reply = await self.recv()
        assert reply.WhichOneof("message") == "register"
        self.id = reply.register.worker_id
        return reply.register

    async def closed(self, timeout_s: float = 5.0) -> bool:
        msg = await self.ws.receive(timeout=timeout_s)
        return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    async def aclose(self) -> None:
        await self.ws.close()
        await self.session.close()


@pytest.fixture
async def sim(make_sim: MakeSim) -> LiveKitSim:
    server = await make_sim(extra_keys={OTHER_KEY: OTHER_SECRET})
    server.workers.availability_timeout_s = 0.5
    return server


@pytest.fixture
async def connect(sim: LiveKitSim) -> AsyncIterator[object]:
    opened: list[RawWorker] = []

    async def open_worker(token: str | None = None) -> RawWorker:
        session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {token or worker_token()}"}
        ws = await session.ws_connect(f"{sim.ws_url}/agent", headers=headers)
        opened.append(RawWorker(session, ws))
        return opened[-1]

    yield open_worker
    for worker in opened:
        await worker.aclose()


async def registered(connect: object, **fields: object) -> RawWorker:
    worker: RawWorker = await connect()  # type: ignore[operator]
    await worker.register(**fields)
    return worker


def load_of(sim: LiveKitSim) -> float:
    return float(sim.workers.snapshot()[0]["load"])  # type: ignore[arg-type]


def make_job(agent_name: str = "", room: str = "proto-room", **fields: object) -> agent.Job:
    return agent.Job(
        id=ids.new_id(ids.JOB),
        dispatch_id=ids.new_id(ids.DISPATCH),
        room=models.Room(sid=ids.new_id(ids.ROOM), name=room),
        agent_name=agent_name,
        metadata="secret-ish metadata",
        **fields,  # type: ignore[arg-type]
    )


async def answer(worker: RawWorker, **fields: object) -> agent.Job:
    """Read the AvailabilityRequest and answer it; the offered job."""
    request = await worker.recv()
    assert request.WhichOneof("message") == "availability"
    job = request.availability.job
    await worker.send(availability=agent.AvailabilityResponse(job_id=job.id, **fields))  # type: ignore[arg-type]
    return job


async def test_http_errors(sim: LiveKitSim) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {worker_token()}"}
        async with session.get(f"{sim.url}/agent", headers=headers) as resp:
            assert resp.status == 404
        for bad in ("Bearer not-a-jwt", f"Bearer {worker_token(secret='x' * 40)}", "Basic a"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await session.ws_connect(f"{sim.ws_url}/agent", headers={"Authorization": bad})
            assert exc.value.status == 401
        no_grant = {"Authorization": f"Bearer {worker_token(agent_grant=False)}"}
        async with session.get(
            f"{sim.url}/agent",
            headers={**no_grant, "Connection": "Upgrade", "Upgrade": "websocket"},
        ) as resp:
            assert resp.status == 401
            assert resp.content_type == "text/plain"
            assert "permissions denied" in await resp.text()
        query = {"access_token": worker_token()}
        async with session.ws_connect(f"{sim.ws_url}/agent", params=query) as ws:
            await ws.send_bytes(
                agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)).SerializeToString()
            )
            pong = agent.ServerMessage.FromString((await ws.receive(timeout=5)).data)
            assert pong.pong.last_timestamp == 1


async def test_register_ping_and_json_frames(sim: LiveKitSim, connect: object) -> None:
    worker: RawWorker = await connect()  # type: ignore[operator]
    await worker.send(ping=agent.WorkerPing(timestamp=42))  # allowed before register
    pong = (await worker.recv()).pong
    assert pong.last_timestamp == 42
    assert abs(pong.timestamp - time.time() * 1000) < 5000

    reply = await worker.register(type=agent.JT_ROOM, agent_name="a", version="1.8.9")

    assert reply.worker_id.startswith("AW_")
    assert len(reply.worker_id) == 15
    info = reply.server_info
    assert info.edition == models.ServerInfo.Standard
    assert info.agent_protocol == 1
    assert info.version
    assert info.node_id

    json_worker: RawWorker = await connect()  # type: ignore[operator]
    await json_worker.ws.send_str('{"register": {"type": "JT_ROOM", "agentName": "j"}}')
    text = await json_worker.ws.receive(timeout=5)
    assert text.type == aiohttp.WSMsgType.TEXT
    assert json_format.Parse(text.data, agent.ServerMessage()).register.worker_id.startswith("AW_")
    snapshot = {w["id"]: w for w in sim.workers.snapshot()}
    assert snapshot[reply.worker_id]["agent_name"] == "a"
    assert snapshot[reply.worker_id]["version"] == "1.8.9"


@pytest.mark.parametrize(
    "first",
    [
        {"update_worker": agent.UpdateWorkerStatus(load=0.1)},
        {"register": agent.RegisterWorkerRequest(type=agent.JT_ROOM, deployment="bad_name")},
    ],
)
async def test_bad_first_message_closes(connect: object, first: dict[str, object]) -> None:
    worker: RawWorker = await connect()  # type: ignore[operator]
    await worker.send(**first)
    assert await worker.closed()


async def test_second_register_closes(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM)
    await worker.send(register=agent.RegisterWorkerRequest(type=agent.JT_ROOM))
    assert await worker.closed()
    await wait_for(lambda: not sim.workers.snapshot(), what="the worker to be forgotten")


async def test_register_timeout_closes(sim: LiveKitSim, connect: object) -> None:
    sim.workers.register_timeout_s = 0.2
    worker: RawWorker = await connect()  # type: ignore[operator]
    assert await worker.closed()


async def test_no_worker_drops_the_job_at_once(sim: LiveKitSim) -> None:
    started = time.monotonic()
    assert await sim.workers.request_job(make_job("nobody")) is None
    assert time.monotonic() - started < 0.1


async def test_assignment_token_and_job_state(sim: LiveKitSim, connect: object) -> None:
    permissions = models.ParticipantPermission(
        can_subscribe=True, can_publish=False, can_publish_data=True, hidden=True
    )
    token = worker_token(OTHER_KEY, OTHER_SECRET)
    worker: RawWorker = await connect(token)  # type: ignore[operator]
    await worker.register(type=agent.JT_ROOM, agent_name="tok", allowed_permissions=permissions)
    job = make_job("tok")
    request = asyncio.create_task(sim.workers.request_job(job))

    offered = await answer(
        worker,
        available=True,
        participant_identity="agent-x",
        participant_name="Agent X",
        participant_metadata="pm",
        participant_attributes={"a": "1"},
    )
    assignment = (await worker.recv()).assignment
    state = await request

    assert offered.metadata == job.metadata
    assert offered.state.status == agent.JS_RUNNING
    assert offered.state.worker_id == worker.id
    assert offered.state.started_at > 0
    assert assignment.job.id == job.id
    assert not assignment.HasField("url")
    assert state is not None
    assert state.status == agent.JS_RUNNING
    assert state.participant_identity == "agent-x"
    claims = api.TokenVerifier(OTHER_KEY, OTHER_SECRET).verify(assignment.token)
    assert claims.identity == "agent-x"
    assert claims.name == "Agent X"
    assert claims.metadata == "pm"
    assert claims.kind == "agent"
    assert claims.attributes == {"a": "1", "lk.agent_name": "tok"}
    assert claims.video is not None
    assert claims.video.room == "proto-room"
    assert claims.video.room_join
    assert claims.video.agent
    assert claims.video.hidden
    assert not claims.video.can_publish
    assert claims.video.can_subscribe
    assert sim.workers.worker_of(job.id) == worker.id

    await worker.send(update_job=agent.UpdateJobStatus(job_id="AJ_unknown", status=agent.JS_FAILED))
    await worker.send(update_job=agent.UpdateJobStatus(job_id=job.id, status=agent.JS_SUCCESS))
    await wait_for(lambda: sim.workers.worker_of(job.id) is None, what="the job to end")
    assert await sim.workers.terminate_job(job.id, TerminationReason.TERMINATION_REQUESTED) is None
    await worker.send(ping=agent.WorkerPing(timestamp=7))
    assert (await worker.recv()).pong.last_timestamp == 7


async def test_default_permissions(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM)
    request = asyncio.create_task(sim.workers.request_job(make_job()))
    await answer(worker, available=True, participant_identity="p")
    token = (await worker.recv()).assignment.token
    assert await request is not None
    video = api.TokenVerifier(API_KEY, API_SECRET).verify(token).video
    assert video is not None
    assert video.can_publish
    assert video.can_subscribe
    assert video.can_publish_data
    assert video.can_update_own_metadata
    assert not video.hidden


async def test_refusals_move_on_and_terminate_stops(sim: LiveKitSim, connect: object) -> None:
    sim.faults.rng = AlwaysZero()  # the weighted selection asks the first registered first
    first = await registered(connect, type=agent.JT_ROOM, agent_name="r")
    second = await registered(connect, type=agent.JT_ROOM, agent_name="r")

    request = asyncio.create_task(sim.workers.request_job(make_job("r")))
    await answer(first, available=False)
    await answer(second, available=False)
    assert await request is None  # everyone refused: dropped, nothing retried

    request = asyncio.create_task(sim.workers.request_job(make_job("r")))
    await answer(first, available=False, terminate=True)
    state = await request
    assert state is not None
    assert state.status == agent.JS_SUCCESS
    with pytest.raises(asyncio.TimeoutError):
        await second.recv(timeout_s=0.1)  # terminate=true: the next worker is not asked


async def test_terminations(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM, agent_name="t")
    for reason, status, error in [
        (TerminationReason.TERMINATION_REQUESTED, agent.JS_SUCCESS, ""),
        (TerminationReason.AGENT_LEFT_ROOM, agent.JS_FAILED, "agent worker left the room"),
    ]:
        request = asyncio.create_task(sim.workers.request_job(make_job("t")))
        job = await answer(worker, available=True, participant_identity="i")
        assert (await worker.recv()).WhichOneof("message") == "assignment"
        assert await request is not None

        state = await sim.workers.terminate_job(job.id, reason)

        assert state is not None
        assert (state.status, state.error) == (status, error)
        assert state.ended_at > 0
        assert (await worker.recv()).termination.job_id == job.id


async def test_timeouts_drop_the_job(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM, agent_name="slow")
    started = time.monotonic()
    assert await sim.workers.request_job(make_job("slow")) is None  # never answered
    assert 0.4 < time.monotonic() - started < 2.0
    assert (await worker.recv()).WhichOneof("message") == "availability"

    sim.faults.workers_never_answer = True
    started = time.monotonic()
    assert await sim.workers.request_job(make_job("slow")) is None
    assert 0.4 < time.monotonic() - started < 2.0
    with pytest.raises(asyncio.TimeoutError):
        await worker.recv(timeout_s=0.1)  # no AvailabilityRequest was sent


async def test_disconnect_forgets_jobs(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM, agent_name="gone")
    request = asyncio.create_task(sim.workers.request_job(make_job("gone")))
    job = await answer(worker, available=True, participant_identity="i")
    assert await request is not None
    assert sim.workers.worker_of(job.id) == worker.id

    await worker.ws.close()

    await wait_for(lambda: not sim.workers.snapshot(), what="the worker to be forgotten")
    assert sim.workers.worker_of(job.id) is None
    assert await sim.workers.terminate_job(job.id, TerminationReason.AGENT_LEFT_ROOM) is None
    assert await sim.workers.request_job(make_job("gone")) is None


async def test_load_gate_and_selection(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM, agent_name="busy")
    await worker.send(update_worker=agent.UpdateWorkerStatus(load=0.8))
    await wait_for(lambda: load_of(sim) > 0.7, what="the load update")
    # 1 - load > 0 would let selection pick it, but the affinity gate (target 0.7) drops the job.
    assert await sim.workers.request_job(make_job("busy")) is None

    await worker.send(update_worker=agent.UpdateWorkerStatus(status=agent.WS_FULL, load=0.1))
    await wait_for(lambda: sim.workers.snapshot()[0]["status"] == "WS_FULL", what="WS_FULL")
    assert await sim.workers.request_job(make_job("busy")) is None

    # No status field: the status stays FULL and only the load changes.
    await worker.send(update_worker=agent.UpdateWorkerStatus(load=0.2))
    await wait_for(lambda: load_of(sim) < 0.3, what="the load update")
    assert sim.workers.snapshot()[0]["status"] == "WS_FULL"

    await worker.send(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE))
    await wait_for(lambda: load_of(sim) == 0.0, what="load reset to 0")
    request = asyncio.create_task(sim.workers.request_job(make_job("busy")))
    await answer(worker, available=True, participant_identity="i")
    assert await request is not None


async def test_worker_key_must_match(sim: LiveKitSim, connect: object) -> None:
    await registered(connect, type=agent.JT_PUBLISHER, agent_name="k")
    await registered(connect, type=agent.JT_ROOM, agent_name="k", deployment="blue")
    await registered(connect, type=agent.JT_ROOM, agent_name="k", namespace="ns")
    assert await sim.workers.request_job(make_job("k")) is None
    unnamed = await registered(connect, type=agent.JT_ROOM)
    request = asyncio.create_task(sim.workers.request_job(make_job("")))
    await answer(unnamed, available=True, participant_identity="i")
    assert await request is not None


async def test_aclose_closes_workers(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM)

    await asyncio.wait_for(sim.workers.aclose(), 5)

    assert await worker.closed()
    await wait_for(lambda: not sim.workers.snapshot(), what="the worker to be forgotten")


async def test_simulate_job_is_offered_to_that_worker(sim: LiveKitSim, connect: object) -> None:
    worker = await registered(connect, type=agent.JT_ROOM, agent_name="sim")
    room = models.Room(sid=ids.new_id(ids.ROOM), name="simulated")

    await worker.send(simulate_job=agent.SimulateJobRequest(type=agent.JT_ROOM, room=room))

    job = await answer(worker, available=True, participant_identity="i")
    assert job.id.startswith("AJ_")
    assert job.agent_name == "sim"
    assert job.room.name == "simulated"
    assert (await worker.recv()).assignment.job.id == job.id
