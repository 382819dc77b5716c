"""dispatch_agent against a real Redis and the LiveKit stand-in, in one worker process."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis
from arq.worker import Worker
from livekit.protocol.agent_dispatch import JRP_NEVER, JRP_ON_FAILURE
from redis.asyncio import Redis

from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.jobs import dispatch
from orchestrator.settings import Settings
from orchestrator.store import dead_letters
from orchestrator.store.record import Session
from orchestrator.store.sessions import Claim, SessionStore
from tasks import DispatchRequest, enqueue_dispatch, recent_results, session_id_for
from tasks.heartbeat import AgentJob, beat
from tasks.keys import ARQ_RESULT_PREFIX, DEAD_LETTER_STREAM, QUEUE_NAME, dispatch_job_id
from tasks.producer import ENQUEUE_SCRIPT
from tests.orchestrator.conftest import RunWorker, make_settings
from tests.support.fake_worker import AcceptingWorker
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CREATE = "AgentDispatchService/CreateDispatch"


def store(redis: ArqRedis) -> SessionStore:
    return SessionStore(redis, retention_s=3600, event_retention_s=3600)


async def job_result(redis: ArqRedis, job_id: str) -> dict[str, Any]:
    async def done() -> Any:
        raw = await redis.get(ARQ_RESULT_PREFIX + job_id)
        return json.loads(raw) if raw else None

    result: dict[str, Any] = await eventually(done, what=f"result of {job_id}")
    assert result["s"], result
    return result["r"]  # type: ignore[no-any-return]


async def test_event_becomes_one_dispatch_with_its_metadata(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    job = await enqueue_dispatch(
        arq_redis,
        DispatchRequest(
            event_id="evt-123",
            room="support-42",
            metadata={"user_id": "u1", "user_name": "Ada", "user_phone": "+15550100"},
        ),
    )
    result = await job_result(arq_redis, job.job_id)
    assert result["outcome"] == "dispatched"
    # The auto-created room also holds LiveKit's default dispatch (agent_name ""), as on a
    # real server; ours is the named one.
    [dispatch] = [d for d in sim.dispatches("support-42") if d.agent_name]
    assert dispatch.id == result["dispatch_id"]
    assert dispatch.agent_name == "support-agent"  # the configured default
    meta = json.loads(dispatch.metadata)
    assert meta["session_id"] == session_id_for("evt-123") == result["session_id"]
    assert meta["event_id"] == "evt-123"
    assert meta["metadata"] == {"user_id": "u1", "user_name": "Ada", "user_phone": "+15550100"}
    session = await store(arq_redis).get(result["session_id"])
    assert session is not None
    assert session.status == "dispatched"
    assert session.dispatch_id == dispatch.id
    assert await store(arq_redis).room_holder("support-42") == result["session_id"]


async def test_second_event_for_a_live_room_is_deduplicated(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    first = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e1", room="r1"))
    first_result = await job_result(arq_redis, first.job_id)
    second = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e2", room="r1"))
    second_result = await job_result(arq_redis, second.job_id)
    assert second_result == {"outcome": "deduplicated", "session_id": first_result["session_id"]}
    assert len(sim.calls_to(CREATE)) == 1


async def test_same_event_again_and_after_its_result_expired_is_one_dispatch(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    request = DispatchRequest(event_id="evt-replayed", room="r-replay")
    job = await enqueue_dispatch(arq_redis, request)
    await enqueue_dispatch(arq_redis, request)
    await job_result(arq_redis, job.job_id)
    # arq forgets the job id once its result expires; the event record does not.
    await arq_redis.delete(ARQ_RESULT_PREFIX + job.job_id)
    again = await enqueue_dispatch(arq_redis, request)
    assert (await job_result(arq_redis, again.job_id))["outcome"] == "duplicate_event"
    assert len(sim.calls_to(CREATE)) == 1


async def test_expired_event_is_not_dispatched(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    job = await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id="late", room="r-late", expires_at=past)
    )
    assert (await job_result(arq_redis, job.job_id))["outcome"] == "expired"
    assert sim.calls_to(CREATE) == []
    assert await store(arq_redis).room_holder("r-late") is None


async def test_deferred_event_waits_for_not_before(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.6)
    job = await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id="deferred", room="r-deferred", not_before=at)
    )
    await job_result(arq_redis, job.job_id)
    [call] = sim.calls_to(CREATE)
    assert call.at_ns / 1e9 >= at.timestamp()


def readme_script() -> str:
    """The Lua script the README gives producers in other languages."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return text.split("```lua\n", 1)[1].split("```", 1)[0]


async def test_plain_redis_commands_enqueue_a_dispatch(
    sim: LiveKitSim, arq_redis: ArqRedis, redis_server: LocalRedis, orchestrator: Worker
) -> None:
    """What a non-Python producer does (README: "Producing events from other languages"),
    on a plain client, twice: one job. Queued due now, its not_before a moment ahead is held
    by the worker all the same (a producer may get the score wrong)."""
    not_before = datetime.now(UTC) + timedelta(seconds=0.8)
    event = {"event_id": "evt-go-1", "room": "from-go", "metadata": {"ticket": 7},
             "not_before": not_before.isoformat()}  # fmt: skip
    job_id = "dispatch:evt-go-1"
    now = int(time.time() * 1000)
    body = json.dumps({"t": 1, "f": "dispatch_agent", "a": [event], "k": {}, "et": now})
    plain = Redis.from_url(redis_server.url)
    script = readme_script()
    assert script == ENQUEUE_SCRIPT
    keys = [f"arq:job:{job_id}", f"arq:result:{job_id}", "arq:queue"]
    try:
        first = await plain.eval(script, 3, *keys, body, now, 86_400_000, job_id)  # type: ignore[misc]
        again = await plain.eval(script, 3, *keys, body, now, 86_400_000, job_id)  # type: ignore[misc]
    finally:
        await plain.aclose()
    assert (first, again) == (1, 0)
    result = await job_result(arq_redis, job_id)
    assert result["outcome"] == "dispatched"
    [dispatch] = [d for d in sim.dispatches("from-go") if d.id == result["dispatch_id"]]
    assert json.loads(dispatch.metadata)["metadata"] == {"ticket": 7}
    [call] = sim.calls_to(CREATE)
    assert call.at_ns / 1e9 >= not_before.timestamp()


async def test_invalid_events_are_rejected_with_reasons_and_nothing_else_is_lost(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    bad_events = {
        "no-room": {"event_id": "bad-1"},
        "not-object": {"event_id": "bad-2", "room": "r", "metadata": ["x"]},
        "too-large": {"event_id": "bad-3", "room": "r", "metadata": {"b": "x" * 70_000}},
        "agent-name": {"event_id": "bad-4", "room": "r", "agent_name": "no spaces allowed"},
    }
    for name, event in bad_events.items():
        await arq_redis.enqueue_job("dispatch_agent", event, _job_id=f"bad:{name}")
    await arq_redis.set("arq:job:handwritten", b"\x80\x04not json at all", px=60_000)
    await arq_redis.zadd(QUEUE_NAME, {"handwritten": int(time.time() * 1000)})
    good = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="good", room="r-good"))

    assert (await job_result(arq_redis, good.job_id))["outcome"] == "dispatched"
    letters = await eventually(lambda: _letters_when(arq_redis, 5), what="five dead letters")
    reasons = {letter.job_id: letter.reason for letter in letters}
    assert "room: Field required" in reasons["bad:no-room"]
    assert "metadata: Input should be a valid dictionary" in reasons["bad:not-object"]
    assert "over LiveKit's 64000-byte limit" in reasons["bad:too-large"]
    assert "is not a valid agent name" in reasons["bad:agent-name"]
    assert "not valid UTF-8 JSON" in reasons["handwritten"]
    kinds = {letter.job_id: letter.kind for letter in letters}
    assert kinds["handwritten"] == "malformed_job"
    assert all(not letter.replayable for letter in letters)
    assert [c.room for c in sim.calls_to(CREATE)] == ["r-good"]


async def _letters_when(redis: ArqRedis, count: int) -> list[dead_letters.DeadLetter] | None:
    letters = await dead_letters.recent(redis)
    return letters if len(letters) >= count else None


async def test_transient_livekit_errors_are_retried_until_it_recovers(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    sim.faults.set(CREATE, error_rate=1.0, error_code="unavailable")
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-503", room="r-503"))
    await eventually(lambda: len(sim.calls_to(CREATE)) >= 3, what="three failed tries")
    sim.faults.clear()
    result = await job_result(arq_redis, job.job_id)
    assert result["outcome"] == "dispatched"
    codes = [c.code for c in sim.calls_to(CREATE)]
    assert codes[-1] == "ok"
    assert set(codes[:-1]) == {"unavailable"}
    assert len([d for d in sim.dispatches("r-503") if d.agent_name]) == 1


async def test_wrong_api_secret_fails_at_once_and_frees_the_room(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    sim.keys[sim.api_key] = "the-server-now-has-another-secret-32-bytes+"
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-401", room="r-401"))
    result = await job_result(arq_redis, job.job_id)
    assert result["outcome"] == "failed"
    assert "rejected the credentials" in result["reason"]
    assert "LIVEKIT_API_SECRET" in result["reason"]
    assert len(sim.calls_to(CREATE)) == 1  # not retried
    assert await store(arq_redis).room_holder("r-401") is None
    [report] = await recent_results(arq_redis)
    assert report.report.status == "failed"
    assert report.report.session_id == result["session_id"]
    assert "rejected the credentials" in (report.report.error or "")
    [letter] = await dead_letters.recent(arq_redis)
    assert letter.kind == "failed_dispatch"
    assert letter.replayable
    assert await arq_redis.xlen(DEAD_LETTER_STREAM) == 1


async def test_no_worker_for_the_agent_name_fails_with_a_clear_reason(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    job = await enqueue_dispatch(
        arq_redis, DispatchRequest(event_id="e-nobody", room="r-nobody", agent_name="ghost")
    )
    session_id = (await job_result(arq_redis, job.job_id))["session_id"]
    entry = await eventually(lambda: recent_results(arq_redis), timeout_s=15, what="a report")
    report = entry[0].report
    assert report.session_id == session_id
    assert report.status == "failed"
    assert "no agent worker accepted agent_name='ghost'" in (report.error or "")
    # Two dispatches tried (assignment_attempts=2), each deleted when nobody took it.
    assert len(sim.calls_to(CREATE)) == 2
    assert [d for d in sim.dispatches("r-nobody") if d.agent_name] == []
    assert await store(arq_redis).room_holder("r-nobody") is None


async def test_assignment_is_confirmed_when_a_worker_takes_the_job(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker, agent_worker: Any
) -> None:
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-ok", room="r-ok"))
    session_id = (await job_result(arq_redis, job.job_id))["session_id"]

    async def assigned() -> Session | None:
        session = await store(arq_redis).get(session_id)
        return session if session and session.status == "assigned" else None

    session = await eventually(assigned, what="assignment confirmed")
    [taken] = agent_worker.jobs
    assert session.job_id == taken.id
    assert json.loads(taken.metadata)["session_id"] == session_id
    assert len(sim.calls_to(CREATE)) == 1


@pytest.mark.parametrize(
    ("names", "heartbeats"),
    [("this dispatch", True), ("an earlier dispatch", True), ("this dispatch", False)],
)
async def test_assignment_is_confirmed_by_the_agents_word_without_asking_livekit(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    redis_server: LocalRedis,
    run_worker: RunWorker,
    agent_worker: AcceptingWorker,
    names: str,
    heartbeats: bool,
) -> None:
    settings = make_settings(
        redis_server,
        sim,
        agent_heartbeats=heartbeats,
        assignment_check_delay_s=1.0,
        report_grace_s=60,
    )
    await run_worker(settings)
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-said", room="r-said"))
    result = await job_result(arq_redis, job.job_id)
    dispatched_ns = time.time_ns()
    session_id = result["session_id"]
    # What our agent writes with its first heartbeat, before the check comes.
    said_dispatch = result["dispatch_id"] if names == "this dispatch" else "AD_earlier"
    await beat(arq_redis, session_id, AgentJob(said_dispatch, "AJ_said", "AW_said"))

    async def assigned() -> Session | None:
        session = await store(arq_redis).get(session_id)
        return session if session and session.status == "assigned" else None

    session = await eventually(assigned, what="assignment confirmed")
    asked = [c for c in sim.calls_to("AgentDispatchService/ListDispatch") if c.room == "r-said"]
    listed_rooms = [c for c in sim.calls_to("RoomService/ListRooms") if c.at_ns > dispatched_ns]
    if names == "this dispatch" and heartbeats:
        assert (session.job_id, session.worker_id) == ("AJ_said", "AW_said")
        assert asked == []
        assert listed_rooms == []
    else:  # not a word about this dispatch, or agents said to send none: LiveKit tells
        [taken] = agent_worker.jobs
        assert session.job_id == taken.id
        assert len(asked) == 1


async def test_a_claim_waits_to_share_a_write_only_for_an_event_that_waited_in_the_queue(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    settings: Settings,
    orchestrator: Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lingers: dict[str, float] = {}
    claim = SessionStore.claim

    async def recorded(self: SessionStore, **fields: Any) -> Claim:
        lingers[fields["event_id"]] = fields.get("linger_s", 0.0)
        return await claim(self, **fields)

    monkeypatch.setattr(SessionStore, "claim", recorded)
    # Well above what a fresh event waits on a busy machine, well below the late one's wait.
    monkeypatch.setattr(dispatch, "BACKLOG_WAIT_S", 1.0)
    fresh = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-fresh", room="r-fresh"))
    assert (await job_result(arq_redis, fresh.job_id))["outcome"] == "dispatched"
    # Due five seconds ago: it waited that long in the queue, as events behind a backlog do.
    now = int(time.time() * 1000)
    body = json.dumps({"t": None, "f": "dispatch_agent", "k": {}, "et": now - 5_000,
                       "a": [{"event_id": "e-late", "room": "r-late"}]})  # fmt: skip
    keys = ["arq:job:dispatch:e-late", "arq:result:dispatch:e-late", "arq:queue"]
    await arq_redis.eval(ENQUEUE_SCRIPT, 3, *keys, body, now - 5_000, 60_000, "dispatch:e-late")  # type: ignore[misc]
    assert (await job_result(arq_redis, "dispatch:e-late"))["outcome"] == "dispatched"
    assert settings.backlog_linger_ms > 0
    assert lingers == {"e-fresh": 0.0, "e-late": settings.backlog_linger_ms / 1000}


async def test_dead_letter_replay_dispatches_again(
    sim: LiveKitSim, arq_redis: ArqRedis, orchestrator: Worker
) -> None:
    sim.faults.set(CREATE, error_rate=1.0, error_code="invalid_argument", error_msg="bad")
    job = await enqueue_dispatch(arq_redis, DispatchRequest(event_id="e-dl", room="r-dl"))
    assert (await job_result(arq_redis, job.job_id))["outcome"] == "failed"
    sim.faults.clear()
    [letter] = await dead_letters.recent(arq_redis)
    replay_job = await dead_letters.replay(arq_redis, letter.entry_id)
    result = await job_result(arq_redis, replay_job)
    assert result["outcome"] == "dispatched"
    assert result["session_id"] == session_id_for("e-dl", generation=1)
    again = await dead_letters.get(arq_redis, letter.entry_id)
    assert again is not None
    assert again.replayed_as == replay_job
    assert dispatch_job_id("e-dl") in replay_job


@pytest.mark.parametrize("max_restarts", [2, 0])
async def test_the_restart_policy_reaches_livekit_and_stays_with_the_session(
    sim: LiveKitSim,
    arq_redis: ArqRedis,
    settings: Settings,
    run_worker: RunWorker,
    max_restarts: int,
) -> None:
    # One restarter only: while our failover is on, LiveKit is asked never to restart a job
    # (LiveKit Cloud would, and two agents would follow a death); off, the event's policy.
    await run_worker(settings.model_copy(update={"max_restarts": max_restarts}))
    never = DispatchRequest(event_id="e-never", room="r-never", restart_policy="never")
    usual = DispatchRequest(event_id="e-usual", room="r-usual")
    for request in (never, usual):
        await enqueue_dispatch(arq_redis, request)
        assert (await job_result(arq_redis, dispatch_job_id(request.event_id)))["outcome"] == (
            "dispatched"
        )
    [sent_never] = [d for d in sim.dispatches("r-never") if d.agent_name]
    [sent_usual] = [d for d in sim.dispatches("r-usual") if d.agent_name]
    assert sent_never.restart_policy == JRP_NEVER
    assert sent_usual.restart_policy == (JRP_NEVER if max_restarts else JRP_ON_FAILURE)
    session = await store(arq_redis).get(session_id_for("e-never"))
    assert session is not None
    assert session.restart_policy == "never"
