"""The agent as a real worker process against the LiveKit sim and a real Redis, driven through
livekit-api's CreateDispatch / DeleteDispatch. Reports are read from Redis as the orchestrator
would receive them (the enqueued `session_report` arq job).

Most sessions use the test handler's modes that do not join the room (tests/agent/handlers.py);
the default handler joins over the sim's `/rtc` and greets a simulated caller.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
from livekit import api
from livekit.protocol import agent as agent_pb
from livekit.protocol import models
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from livekit_sim.rtc import TextMessage
from livekit_sim.workers import TARGET_LOAD
from orchestrator.demo.local_redis import LocalRedis
from tasks.heartbeat import worker_records
from tasks.keys import agent_heartbeat_key
from tasks.models import JobMetadata
from tests.agent.conftest import MAX_SESSIONS, new_job, new_room
from tests.agent.reports import reports_for, wait_for_report
from tests.agent.worker_process import AgentWorker
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

PERSONAL_DATA = "Zebulon Quaxwell, +44 7700 900123"


def worker_state(sim: LiveKitSim, agent_name: str) -> dict[str, object]:
    [state] = [w for w in sim.workers.snapshot() if w["agent_name"] == agent_name]
    return state


async def create_dispatch(
    lkapi: api.LiveKitAPI, agent_name: str, room: str, metadata: str
) -> api.AgentDispatch:
    return await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
    )


async def dispatch(
    lkapi: api.LiveKitAPI, sim: LiveKitSim, agent_name: str, room: str, metadata: str
) -> api.AgentDispatch:
    """CreateDispatch once LiveKit sees the worker with room for a job: a worker reports its
    status every 2.5 s, so LiveKit's view of it lags (and LiveKit drops a job no worker has
    room for)."""

    def available() -> bool:
        state = worker_state(sim, agent_name)
        return state["status"] == "WS_AVAILABLE" and cast(float, state["load"]) < TARGET_LOAD

    await eventually(available, timeout_s=10, what="the worker to have room for a job")
    return await create_dispatch(lkapi, agent_name, room, metadata)


def assigned_job(sim: LiveKitSim, room: str, dispatch_id: str) -> agent_pb.Job | None:
    """The job the sim assigned (or ended at once) for a dispatch."""
    for d in sim.dispatches(room):
        if d.id == dispatch_id and d.state.jobs:
            return d.state.jobs[0]
    return None


async def test_completed_session_writes_one_report(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str,
) -> None:  # fmt: skip
    session_id, event_id, metadata = new_job({"mode": "finish", "customer": PERSONAL_DATA})
    room = new_room()
    created = await dispatch(lkapi, sim, agent_name, room, metadata)

    report = await wait_for_report(agent_redis, session_id)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == [report]

    job = assigned_job(sim, room, created.id)
    assert job is not None
    assert job.state.participant_identity == f"agent-{session_id}"
    assert report.status == "completed"
    assert report.error is None
    assert report.source == "agent"
    assert (report.session_id, report.event_id, report.room) == (session_id, event_id, room)
    assert (report.dispatch_id, report.job_id, report.agent_name) == (
        created.id, job.id, agent_name,
    )  # fmt: skip
    assert report.worker_id == job.state.worker_id
    assert report.end_reason == "test handler finished"
    assert report.started_at is not None
    assert report.started_at <= report.ended_at
    assert report.duration_s is not None
    assert report.duration_s >= 0
    # The handler saw the parsed metadata and its outputs reached the report.
    assert report.outputs == {"payload_keys": ["customer", "mode"], "session_id_seen": session_id}

    session_lines = [r for r in worker.lines() if r.get("session_id") == session_id]
    assert {r["message"] for r in session_lines} >= {"session started", "session report enqueued"}
    for record in session_lines:
        assert (record["room"], record["job_id"], record["worker_id"]) == (
            room, job.id, report.worker_id,
        )  # fmt: skip
    assert PERSONAL_DATA not in worker.output


async def test_agent_name_is_logged_at_start_up(worker: AgentWorker, agent_name: str) -> None:
    started = worker.find("agent worker started: it takes only jobs dispatched to this agent_name")
    assert [r["agent_name"] for r in started] == [agent_name]


async def test_invalid_metadata_fails_at_once_naming_the_problem(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str,
) -> None:  # fmt: skip
    session_id, event_id, _ = new_job({})
    cases = {
        "not json {": ("unknown", "job metadata is not valid JSON"),
        "": ("unknown", "job metadata is empty"),
        f'{{"type": "lkd.job", "version": 1, "event_id": "{event_id}"}}': (
            "unknown", "session_id: Field required",
        ),
        f'{{"type": "lkd.job", "version": 2, "session_id": "{session_id}", '
        f'"event_id": "{event_id}", "metadata": {{"name": "{PERSONAL_DATA}"}}}}': (
            session_id, "version: Input should be 1",
        ),
    }  # fmt: skip
    for metadata, (expected_session, problem) in cases.items():
        room = new_room()
        created = await dispatch(lkapi, sim, agent_name, room, metadata)
        job = await eventually(
            lambda room=room, d=created.id: assigned_job(sim, room, d),  # type: ignore[misc]
            timeout_s=15, what="the job's assignment",
        )  # fmt: skip
        reported_id = session_id if expected_session != "unknown" else f"unknown:{job.id}"
        report = await wait_for_report(agent_redis, reported_id)
        assert report.status == "failed"
        assert report.end_reason == "invalid job metadata"
        assert report.error is not None
        assert problem in report.error, report.error
        assert report.room == room
        assert report.job_id == job.id
        if "event_id" in metadata:
            assert report.event_id == event_id
    await worker.wait_idle()
    assert PERSONAL_DATA not in worker.output


async def test_doctor_probe_job_is_taken_and_ended_without_a_report(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str,
) -> None:  # fmt: skip
    probe_id = f"lkd-doctor-{new_room()}"
    metadata = JobMetadata(session_id=probe_id, event_id=probe_id, probe=True).to_json()
    room = new_room()
    created = await dispatch(lkapi, sim, agent_name, room, metadata)
    job = await eventually(
        lambda: assigned_job(sim, room, created.id), timeout_s=15, what="probe job assigned"
    )
    await worker.wait_log("doctor probe job taken; ending it unreported", job_id=job.id)
    await worker.wait_idle()
    assert await reports_for(agent_redis, probe_id) == []


async def test_handler_that_raises_gives_a_failed_report_with_the_error(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis, agent_name: str
) -> None:
    session_id, _, metadata = new_job({"mode": "raise"})
    await dispatch(lkapi, sim, agent_name, new_room(), metadata)

    report = await wait_for_report(agent_redis, session_id)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == [report]
    assert report.status == "failed"
    assert report.end_reason == "session handler failed"
    assert report.error == "RuntimeError: the test handler failed on purpose"
    assert report.outputs["session_id_seen"] == session_id  # outputs made before it raised


async def test_default_handler_greets_the_caller_and_ends_when_everyone_left(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_name: str,
) -> None:  # fmt: skip
    # The default handler joins the room over the sim's /rtc (WebRTC signalling).
    session_id, _, metadata = new_job({"mode": "greeter"})
    room = new_room()
    await dispatch(lkapi, sim, agent_name, room, metadata)
    identity = f"agent-{session_id}"

    def agent_in_room() -> models.ParticipantInfo | None:
        return next((p for p in sim.participants(room) if p.identity == identity), None)

    await worker.wait_log("joined the room", session_id=session_id, timeout_s=60)
    me = agent_in_room()
    assert me is not None
    assert me.kind == models.ParticipantInfo.Kind.AGENT
    assert me.name == agent_name
    assert me.attributes["lkd.session_id"] == session_id

    await sim.join_participant(room, "caller-1")

    def greeting() -> list[TextMessage]:
        return [t for t in sim.media.log_of(room).texts if t.topic == "lkd.greeting"]

    [sent] = await eventually(greeting, timeout_s=20, what="the greeting")
    assert (sent.sender, sent.text) == (identity, "Hello! You are connected to the agent.")
    await sim.leave_participant(room, "caller-1")

    report = await wait_for_report(agent_redis, session_id)
    await worker.wait_idle()
    assert (report.status, report.end_reason) == ("completed", "every participant left")
    [caller] = report.participants
    assert (caller.identity, caller.kind) == ("caller-1", "standard")
    assert caller.joined_at is not None
    assert caller.left_at is not None
    assert report.started_at is not None
    assert report.started_at < caller.joined_at < caller.left_at <= report.ended_at
    assert report.outputs["people_seen"] == 1
    assert "greeted_at" in report.outputs


async def test_delete_dispatch_ends_the_session_and_the_report_says_why(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis, agent_name: str
) -> None:
    session_id, _, metadata = new_job({"mode": "wait"})
    room = new_room()
    created = await dispatch(lkapi, sim, agent_name, room, metadata)
    await worker.wait_log("session started", session_id=session_id)

    await lkapi.agent_dispatch.delete_dispatch(created.id, room)

    # livekit-agents gives an entrypoint that neither joined nor returned 15 s to finish.
    report = await wait_for_report(agent_redis, session_id, timeout_s=40)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == [report]
    assert report.status == "completed"
    assert report.end_reason == "the dispatch was deleted (end_session or DeleteDispatch)"


async def test_second_dispatch_to_a_room_with_a_session_is_rejected(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    room = new_room()
    first_id, _, first = new_job({"mode": "hold", "release_file": str(release)})
    await dispatch(lkapi, sim, agent_name, room, first)
    await worker.wait_log("session started", session_id=first_id)

    second_id, _, second = new_job({"mode": "finish"})
    duplicate = await dispatch(lkapi, sim, agent_name, room, second)
    await worker.wait_log(
        "rejecting the job: this worker already runs a session in its room",
        session_id=second_id, room=room,
    )  # fmt: skip
    job = await eventually(
        lambda: assigned_job(sim, room, duplicate.id), timeout_s=10, what="the job's end"
    )
    # terminate=true: the job ends at once, no agent joins for it, no worker gets it.
    assert job.state.status == agent_pb.JS_SUCCESS
    assert job.state.participant_identity == ""
    assert await worker.active_jobs() == 1

    release.touch()
    report = await wait_for_report(agent_redis, first_id)
    await worker.wait_idle()
    assert report.status == "completed"
    assert await reports_for(agent_redis, second_id) == []
    assert not worker.find("session started", session_id=second_id)


async def test_a_full_worker_takes_no_more_jobs(
    worker: AgentWorker, lkapi: api.LiveKitAPI, agent_redis: Redis, sim: LiveKitSim,
    agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    held = []
    for _ in range(MAX_SESSIONS):
        session_id, _, metadata = new_job({"mode": "hold", "release_file": str(release)})
        await dispatch(lkapi, sim, agent_name, new_room(), metadata)
        await worker.wait_log("session started", session_id=session_id)
        held.append(session_id)

    def reported(status: str) -> bool:
        return worker_state(sim, agent_name)["status"] == status

    # Sessions alone do not make it report itself full to LiveKit (SessionLoad): it declines
    # the job itself, and LiveKit, with no other worker, drops it.
    extra_id, _, extra = new_job({"mode": "finish"})
    room = new_room()
    refused = await create_dispatch(lkapi, agent_name, room, extra)
    await sim.settle()
    await worker.wait_log("declining the job: this worker is full, LiveKit offers it to another")
    assert assigned_job(sim, room, refused.id) is None  # LiveKit dropped it: no capacity
    assert await worker.active_jobs() == MAX_SESSIONS

    release.touch()
    for session_id in held:
        assert (await wait_for_report(agent_redis, session_id)).status == "completed"
    await worker.wait_idle()
    assert not worker.find("session started", session_id=extra_id)
    await eventually(lambda: reported("WS_AVAILABLE"), timeout_s=10, what="the worker's capacity")


async def test_report_is_retried_while_redis_is_briefly_away(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_redis_server: LocalRedis, agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    session_id, _, metadata = new_job({"mode": "hold", "release_file": str(release)})
    await dispatch(lkapi, sim, agent_name, new_room(), metadata)
    await worker.wait_log("session started", session_id=session_id)

    agent_redis_server.stop()
    try:
        release.touch()
        await worker.wait_log(
            "enqueuing the session report failed; retrying", session_id=session_id
        )
    finally:
        agent_redis_server.start()

    report = await wait_for_report(agent_redis, session_id)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == [report]
    assert report.status == "completed"
    enqueued = worker.find("session report enqueued", session_id=session_id)
    assert len(enqueued) == 1
    assert enqueued[0]["attempts"] >= 2


async def test_shutdown_callback_writes_the_report_when_on_session_end_could_not(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_redis_server: LocalRedis, agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    session_id, _, metadata = new_job({"mode": "hold", "release_file": str(release)})
    await dispatch(lkapi, sim, agent_name, new_room(), metadata)
    await worker.wait_log("session started", session_id=session_id)

    agent_redis_server.stop()
    try:
        release.touch()
        # on_session_end spends its 3 s budget (AGENT_REPORT_TIMEOUT_S) and gives up.
        await worker.wait_log("session report not written", session_id=session_id)
        await worker.wait_log(
            "writing the session report from the shutdown callback", session_id=session_id
        )
    finally:
        agent_redis_server.start()

    report = await wait_for_report(agent_redis, session_id)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == [report]
    assert report.status == "completed"
    assert report.end_reason == "test handler finished"


async def test_killed_job_process_writes_no_report_and_the_room_can_be_used_again(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    room = new_room()
    session_id, _, metadata = new_job({"mode": "hold", "release_file": str(tmp_path / "never")})
    await dispatch(lkapi, sim, agent_name, room, metadata)
    started = await worker.wait_log("session started", session_id=session_id)
    # The heartbeat the orchestrator's reconciliation watches.
    await eventually(
        lambda: agent_redis.exists(agent_heartbeat_key(session_id)),
        timeout_s=10, what="the session's heartbeat",
    )  # fmt: skip

    os.kill(started["pid"], signal.SIGKILL)  # the job process, not the worker
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == []

    again_id, _, again = new_job({"mode": "finish"})
    await dispatch(lkapi, sim, agent_name, room, again)
    report = await wait_for_report(agent_redis, again_id)
    assert (report.status, report.room) == ("completed", room)
    await worker.wait_idle()
    assert await reports_for(agent_redis, session_id) == []


async def test_the_worker_record_holds_a_running_session_and_drops_it_when_its_process_dies(
    worker: AgentWorker, sim: LiveKitSim, lkapi: api.LiveKitAPI, agent_redis: Redis,
    agent_name: str, tmp_path: Path,
) -> None:  # fmt: skip
    session_id, _, metadata = new_job({"mode": "hold", "release_file": str(tmp_path / "never")})

    async def hold() -> str | None:
        records = await worker_records(agent_redis, 0)
        [record] = [r for r in records if r.agent_name == agent_name]
        return record.sessions.get(session_id)

    await dispatch(lkapi, sim, agent_name, new_room(), metadata)
    started = await worker.wait_log("session started", session_id=session_id)
    await eventually(lambda: _is(hold, "running"), what="the session held running")

    os.kill(started["pid"], signal.SIGKILL)  # no shutdown code runs; the worker sees it go
    await eventually(lambda: _is(hold, None), what="the dead session dropped")
    await worker.wait_idle()


async def _is(read: Callable[[], Awaitable[str | None]], value: str | None) -> bool:
    return await read() == value
