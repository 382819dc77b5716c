"""The agent's parts on their own: metadata parsing, settings, handler loading, admission of
job requests, the report builder and the exactly-once report writer (against a real Redis)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from livekit import rtc
from livekit.agents import AgentServer, JobRequest
from livekit.agents.job import JobAcceptArguments
from livekit.protocol import agent as agent_pb
from livekit.protocol import models
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import agent.report
from agent import admission
from agent.admission import RequestHandler, SessionLoad
from agent.errors import ConfigError, HandlerLoadError, InvalidMetadataError, ReportWriteError
from agent.handlers import greeter, load_handler
from agent.metadata import parse_job_metadata, salvage_ids
from agent.redis_link import RedisLink
from agent.report import ReportWriter, build_report
from agent.session import describe_error
from agent.settings import AgentSettings, load_settings
from agent.worker_beat import WorkerBeat
from orchestrator.demo.local_redis import LocalRedis, free_port
from tasks.heartbeat import DEFAULT_PERMISSIONS
from tasks.models import JobMetadata, SessionReport
from tests.agent.reports import reports_for

pytestmark = pytest.mark.integration

SECRET = "Mrs Ada Placeholder"


# -- metadata --------------------------------------------------------------------------------


def test_metadata_of_the_orchestrator_parses() -> None:
    raw = JobMetadata(session_id="S_1", event_id="ev-1", metadata={"order": 7}).to_json()
    parsed = parse_job_metadata(raw)
    assert (parsed.session_id, parsed.event_id, parsed.metadata) == ("S_1", "ev-1", {"order": 7})


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "job metadata is empty"),
        ("{", "not valid JSON"),
        (f'["{SECRET}"]', "got a JSON array"),
        (json.dumps({"type": "lkd.job", "version": 1, "event_id": SECRET}),
         "session_id: Field required"),
        (json.dumps({"type": "other", "version": 1, "session_id": SECRET, "event_id": "e"}),
         "type: Input should be 'lkd.job'"),
        (json.dumps({"type": "lkd.job", "version": 1, "session_id": "S", "event_id": "e",
                     "metadata": SECRET}), "metadata: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_invalid_metadata_names_the_problem_but_not_the_values(raw: str, problem: str) -> None:
    with pytest.raises(InvalidMetadataError) as caught:
        parse_job_metadata(raw)
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_ids_are_salvaged_from_unusable_metadata_when_they_look_like_ids() -> None:
    salvaged = salvage_ids('{"session_id": "S_1", "event_id": "ev-1", "version": 9}')
    assert (salvaged.session_id, salvaged.event_id) == ("S_1", "ev-1")
    assert salvage_ids(json.dumps({"session_id": SECRET})).session_id is None
    assert salvage_ids("nonsense").session_id is None


# -- settings and handlers -------------------------------------------------------------------


def test_settings_come_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_NAME", "billing")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s" * 40)
    monkeypatch.setenv("AGENT_MAX_SESSIONS", "3")
    monkeypatch.setenv("AGENT_SESSION_HANDLER", "tests.agent.handlers:scripted")
    settings = load_settings()
    assert settings.agent_name == settings.effective_agent_name == "billing"
    assert settings.redis_url == "redis://example:6379/2"
    assert settings.max_sessions == 3
    assert settings.livekit_api_secret is not None
    assert "s" * 40 not in repr(settings)
    monkeypatch.setenv("LIVEKIT_AGENT_NAME_OVERRIDE", "forced")
    assert load_settings().effective_agent_name == "forced"


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_MAX_SESSIONS", "0")
    monkeypatch.setenv("AGENT_NAME", "no spaces allowed")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AGENT_MAX_SESSIONS" in str(caught.value)
    assert "AGENT_NAME" in str(caught.value)


def test_the_default_handler_is_the_greeter() -> None:
    assert load_handler(AgentSettings().session_handler) is greeter


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("tests.agent.no_such_module:handler", "cannot import the session handler module"),
        ("tests.agent.handlers:no_such_function", "has no 'no_such_function'"),
        ("tests.agent.conftest:API_KEY", "is not callable"),
    ],
)
def test_a_handler_that_does_not_load_is_reported_clearly(path: str, problem: str) -> None:
    with pytest.raises(HandlerLoadError, match=problem):
        load_handler(path)


# -- admission -------------------------------------------------------------------------------


MAX = 10  # the worker's AGENT_MAX_SESSIONS, unless a test is about that limit


def _server(*rooms: str) -> AgentServer:
    jobs = [
        SimpleNamespace(job=agent_pb.Job(id=f"AJ_{r}", room=models.Room(name=r), metadata=""))
        for r in rooms
    ]
    return cast(AgentServer, SimpleNamespace(active_jobs=jobs))


class _Answers:
    """A JobRequest's two answers, as livekit-agents' worker would receive them."""

    def __init__(self) -> None:
        self.accepted: list[JobAcceptArguments] = []
        self.rejected: list[bool] = []
        self.accepting = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    def request(self, room: str, metadata: str) -> JobRequest:
        async def on_accept(args: JobAcceptArguments) -> None:
            self.accepted.append(args)
            self.accepting.set()
            await self.release.wait()  # the worker waits here for the assignment

        async def on_reject(terminate: bool) -> None:
            self.rejected.append(terminate)

        job = agent_pb.Job(id=f"AJ_{room}", room=models.Room(name=room), metadata=metadata)
        return JobRequest(job=job, on_reject=on_reject, on_accept=on_accept)


async def test_a_job_is_accepted_with_the_session_in_identity_and_attributes() -> None:
    answers = _Answers()
    metadata = JobMetadata(session_id="S_42", event_id="ev", metadata={"x": SECRET}).to_json()
    await RequestHandler(_server("other-room"), "support", MAX)(answers.request("room-1", metadata))
    [args] = answers.accepted
    assert (args.identity, args.name, args.attributes) == (
        "agent-S_42", "support", {"lkd.session_id": "S_42"},
    )  # fmt: skip
    assert answers.rejected == []


async def test_a_job_with_unusable_metadata_is_still_accepted_so_it_can_report() -> None:
    answers = _Answers()
    await RequestHandler(_server(), "support", MAX)(answers.request("room-1", "not json"))
    [args] = answers.accepted
    assert args.identity == "agent-AJ_room-1"  # livekit-agents' default identity
    assert args.attributes == {}


async def test_a_job_for_a_room_with_a_session_is_rejected_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "WIND_DOWN_WAIT_S", 0.2)
    answers = _Answers()
    await RequestHandler(_server("room-1"), "support", MAX)(answers.request("room-1", ""))
    assert answers.accepted == []
    assert answers.rejected == [True]  # terminate: no other worker gets it either


async def test_a_second_job_for_the_same_session_is_rejected_at_once() -> None:
    answers = _Answers()
    metadata = JobMetadata(session_id="S_1", event_id="ev").to_json()
    job = agent_pb.Job(id="AJ_1", room=models.Room(name="room-1"), metadata=metadata)
    server = cast(AgentServer, SimpleNamespace(active_jobs=[SimpleNamespace(job=job)]))
    started = asyncio.get_running_loop().time()
    await RequestHandler(server, "support", MAX)(answers.request("room-1", metadata))
    assert answers.rejected == [True]
    assert asyncio.get_running_loop().time() - started < admission.WIND_DOWN_WAIT_S


async def test_a_job_for_a_room_whose_last_session_is_ending_is_accepted_once_it_ended() -> None:
    # A session's report is written before its process exits: the room's next session may
    # be dispatched to this worker a moment before the process is gone.
    answers = _Answers()
    server = _server("room-1")
    metadata = JobMetadata(session_id="S_next", event_id="ev").to_json()
    answering = asyncio.create_task(
        RequestHandler(server, "support", MAX)(answers.request("room-1", metadata))
    )
    await asyncio.sleep(0.1)  # the previous job's process exits a moment later
    server.active_jobs.clear()  # type: ignore[attr-defined]
    await answering
    assert answers.rejected == []
    [args] = answers.accepted
    assert args.identity == "agent-S_next"


async def test_a_second_job_for_a_room_still_being_accepted_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "WIND_DOWN_WAIT_S", 0.2)
    answers = _Answers()
    answers.release.clear()
    handler = RequestHandler(_server(), "support", MAX)
    first = asyncio.create_task(handler(answers.request("room-1", "")))
    await asyncio.wait_for(answers.accepting.wait(), timeout=5)
    await handler(answers.request("room-1", ""))
    answers.release.set()
    await first
    assert len(answers.accepted) == 1
    assert answers.rejected == [True]


async def test_a_job_beyond_max_sessions_is_declined_for_another_worker() -> None:
    # Two sessions: one running in a process, one accepted and waiting for its process. The
    # load LiveKit last heard of may still say there is room: the handler knows better.
    answers = _Answers()
    answers.release.clear()
    handler = RequestHandler(_server("room-1"), "support", 2)
    starting = asyncio.create_task(handler(answers.request("room-2", "")))
    await asyncio.wait_for(answers.accepting.wait(), timeout=5)
    assert handler.held() == 2
    await handler(answers.request("room-3", ""))
    assert answers.rejected == [False]  # not terminate: LiveKit offers it to another worker
    answers.release.set()
    await starting
    assert [a.identity for a in answers.accepted] == ["agent-AJ_room-2"]


async def test_the_worker_record_holds_a_session_from_its_acceptance_while_it_waits() -> None:
    answers = _Answers()
    answers.release.clear()  # the job waits for its assignment and a process
    server = _server()
    handler = RequestHandler(server, "support", MAX)
    beat = WorkerBeat(
        server, handler, RedisLink("redis://unused"), agent_name="support", max_sessions=3,
        interval_s=1.0,
    )  # fmt: skip
    metadata = JobMetadata(session_id="S_wait", event_id="ev").to_json()
    accepting = asyncio.create_task(handler(answers.request("room-1", metadata)))
    await asyncio.wait_for(answers.accepting.wait(), timeout=5)
    assert beat.record().sessions == {"S_wait": "starting"}

    job = agent_pb.Job(id="AJ_1", room=models.Room(name="room-1"), metadata=metadata)
    server.active_jobs.append(SimpleNamespace(job=job))  # type: ignore[attr-defined]
    answers.release.set()  # launched in a process: accept() returns
    await accepting
    assert beat.record().sessions == {"S_wait": "running"}
    server.active_jobs.clear()  # type: ignore[attr-defined]
    assert beat.record().sessions == {}


def test_the_agents_permissions_default_to_livekit_agents_own() -> None:
    assert AgentSettings().permissions == DEFAULT_PERMISSIONS


def test_sessions_alone_never_make_the_worker_report_itself_full_to_livekit() -> None:
    # LiveKit hears of the load every 2.5 s: a worker it took for full would miss the job
    # dispatched into the slot of a session that just ended. The request handler holds the
    # limit instead; the worker's own record still says it is full.
    settings = AgentSettings(max_sessions=4, load_threshold=0.7, count_cpu_load=False)
    load = SessionLoad(settings)
    assert load(_server()) == 0.0
    assert load(_server("a", "b", "c")) < load(_server("a", "b", "c", "d")) < 0.7
    assert load.full()
    load(_server("a", "b", "c"))
    assert not load.full()


# -- the report ------------------------------------------------------------------------------


def test_a_room_that_cannot_be_joined_is_named_as_such() -> None:
    error = rtc.ConnectError("engine: signal failure: client error: 404 Not Found")
    assert describe_error(error) == (
        "the room could not be joined: engine: signal failure: client error: 404 Not Found"
    )
    assert describe_error(ValueError("bad")) == "ValueError: bad"


def _report(**overrides: Any) -> SessionReport:
    started = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    fields: dict[str, Any] = {
        "session_id": "S_1", "event_id": "ev-1", "room": "room-1", "status": "completed",
        "end_reason": "done", "error": None, "agent_name": "support", "dispatch_id": "AD_1",
        "job_id": "AJ_1", "worker_id": "AW_1", "started_at": started,
        "ended_at": started + timedelta(seconds=61.5), "participants": [], "outputs": {},
    }  # fmt: skip
    return build_report(**{**fields, **overrides})


def test_report_fields() -> None:
    report = _report(outputs={"when": datetime(2026, 1, 1, tzinfo=UTC), "n": 1})
    assert report.duration_s == 61.5
    assert report.source == "agent"
    assert report.outputs == {"when": "2026-01-01 00:00:00+00:00", "n": 1}


def test_oversized_outputs_are_dropped_with_a_note() -> None:
    report = _report(outputs={"blob": "x" * 300_000})
    assert list(report.outputs) == ["outputs_dropped"]
    assert "over the 256000-byte limit" in report.outputs["outputs_dropped"]


async def test_report_is_enqueued_once_even_after_an_ambiguous_failure(
    redis: Redis, redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_enqueue = agent.report.enqueue_session_report
    calls = 0

    async def enqueue_then_lose_the_connection(
        redis_: Any, report: SessionReport, **kwargs: Any
    ) -> Any:
        nonlocal calls
        calls += 1
        job = await real_enqueue(redis_, report, **kwargs)
        if calls == 1:
            raise RedisConnectionError("connection lost before the reply")
        return job

    monkeypatch.setattr(agent.report, "enqueue_session_report", enqueue_then_lose_the_connection)
    link = RedisLink(redis_server.url)
    writer = ReportWriter(link, session_id="S_1", job_id="AJ_1")
    report = _report()
    try:
        await writer.write(report, budget_s=5)
        await writer.write(report, budget_s=5)
    finally:
        await link.aclose()
    assert writer.written
    assert calls == 2  # the retry reused the job id, so arq kept the first attempt's job
    assert await reports_for(redis, "S_1") == [report]


async def test_report_writer_gives_up_when_the_budget_is_spent() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0")
    writer = ReportWriter(link, session_id="S_1", job_id="AJ_1")
    try:
        with pytest.raises(ReportWriteError, match="is REDIS_URL reachable"):
            await writer.write(_report(), budget_s=0.5)
    finally:
        await link.aclose()
    assert not writer.written
