"""One session in a job process: the livekit-agents entrypoint, `on_session_end`, and the
shutdown-callback fallback that together write exactly one report per job.

What runs when (livekit-agents 1.8.9, `livekit/agents/job.py` and `ipc/job_proc_lazy_main.py`):
the entrypoint starts before any room connection; the session ends when the handler returns
or raises (we call `ctx.shutdown`), or from outside (JobTermination after DeleteDispatch or
DeleteRoom, room disconnect, worker stop). Then livekit-agents waits for the entrypoint (up to
15 s), runs `on_session_end` (which writes the report, with its own timeout), and finally the
shutdown callbacks (ours writes the report only if `on_session_end` could not).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from livekit import api, rtc
from livekit.agents import JobContext, JobProcess
from livekit.protocol.agent import JobType

from agent.errors import HandlerLoadError, InvalidMetadataError, ReportWriteError
from agent.handlers import SessionContext, SessionHandler, load_handler
from agent.log import configure as configure_logging
from agent.log import get_logger
from agent.metadata import job_session_id, parse_job_metadata, salvage_ids
from agent.participants import ParticipantTracker
from agent.redis_link import REDIS_ERRORS, Heartbeat, RedisLink
from agent.report import ReportWriter, build_report
from agent.settings import AgentSettings, load_settings
from tasks.checkpoints import save_checkpoint
from tasks.heartbeat import AgentJob
from tasks.models import JobMetadata, SessionReport
from tasks.parts import open_part

JOIN_CHECK_INTERVAL_S = 0.1
FIRST_BEAT_TIMEOUT_S = 2.0
"""How long a session start waits for its first heartbeat (Redis may be away: it goes on)."""
_SETTINGS = "lkd.settings"
_HANDLER = "lkd.handler"
Status = Literal["completed", "failed"]
_SESSIONS: dict[str, Session] = {}
"""Live sessions of this process by job id, for `on_session_end`."""
_PROBES: set[str] = set()
"""Jobs of `orchestrator doctor` probes (JobMetadata.probe) taken by this process."""


def setup_process(proc: JobProcess) -> None:
    """Per-process set-up (livekit-agents' prewarm): logging, settings, the session handler."""
    configure_logging()
    settings = load_settings()
    proc.userdata[_SETTINGS] = settings
    try:
        proc.userdata[_HANDLER] = load_handler(settings.session_handler)
    except HandlerLoadError as exc:
        proc.userdata[_HANDLER] = exc
        get_logger().error("session handler not loaded", error=str(exc))


@dataclass(frozen=True)
class Outcome:
    status: Status
    end_reason: str
    error: str | None = None


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, rtc.ConnectError):
        return f"the room could not be joined: {exc.message}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class Session:
    """What one job records from start to report."""

    def __init__(self, ctx: JobContext, settings: AgentSettings, metadata: JobMetadata | None):
        self.ctx = ctx
        self.settings = settings
        self.metadata = metadata
        self.started_at = datetime.now(UTC)
        salvaged = salvage_ids(ctx.job.metadata)
        self.session_id = job_session_id(ctx.job) or f"unknown:{ctx.job.id}"
        self.part_of: str | None = None
        """A job per publisher: the event's session it is a part of (tasks.parts)."""
        self.publisher: str | None = None
        if ctx.job.type == JobType.JT_PUBLISHER:
            self.part_of = metadata.session_id if metadata else salvaged.session_id
            self.publisher = ctx.job.participant.identity
        self.event_id = metadata.event_id if metadata else salvaged.event_id or ""
        self.outputs: dict[str, Any] = {}
        self.participants = ParticipantTracker()
        self.outcome: Outcome | None = None
        self.handler_task: asyncio.Task[None] | None = None
        self.link = RedisLink(settings.redis_url)
        self.heartbeat = Heartbeat(
            self.link,
            self.session_id,
            settings.heartbeat_interval_s,
            AgentJob(dispatch_id=ctx.job.dispatch_id, job_id=ctx.job.id, worker_id=ctx.worker_id),
        )
        self.writer = ReportWriter(self.link, session_id=self.session_id, job_id=ctx.job.id)
        self.report: SessionReport | None = None
        self.log_fields = {
            "session_id": self.session_id,
            "event_id": self.event_id,
            "room": ctx.job.room.name,
            "job_id": ctx.job.id,
            "worker_id": ctx.worker_id,
        }
        self.log = get_logger(**self.log_fields)
        self._room_disconnect: str | None = None

    def bind_log_context(self) -> None:
        """Every log line of this job carries the session's ids: livekit-agents' records
        through the job's log context, structlog's through contextvars."""
        self.ctx.log_context_fields = {**self.ctx.log_context_fields, **self.log_fields}
        structlog.contextvars.bind_contextvars(**self.log_fields)

    def settle(self, status: Status, end_reason: str, error: str | None = None) -> None:
        """Record how the session ended; the first word is final."""
        if self.outcome is None:
            self.outcome = Outcome(status, end_reason, error)

    def end_now(self, status: Status, end_reason: str, error: str | None = None) -> None:
        self.settle(status, end_reason, error)
        self.ctx.shutdown(end_reason)

    async def run(self, handler: SessionHandler | HandlerLoadError, problem: str | None) -> None:
        """The entrypoint's work: returns once the handler is done or the room is joined (the
        handler then goes on in the background until the session ends)."""
        if problem is not None or self.metadata is None:
            self.log.error("invalid job metadata; ending the session", problem=problem)
            self.end_now("failed", "invalid job metadata", problem or "no job metadata")
            return
        if isinstance(handler, HandlerLoadError):
            self.log.error("session handler not available; ending the session", error=str(handler))
            self.end_now("failed", "session handler not available", str(handler))
            return
        if self.part_of is not None:
            await self._open_part(self.part_of)
        await self.heartbeat.start(FIRST_BEAT_TIMEOUT_S)
        self.log.info(
            "session started",
            handler=self.settings.session_handler,
            event_field_count=len(self.metadata.metadata),
        )
        self.participants.attach(self.ctx)
        self.ctx.room.on("disconnected", self._on_room_disconnected)
        context = SessionContext(
            job=self.ctx,
            metadata=self.metadata,
            participants=self.participants,
            settings=self.settings,
            log=self.log,
            outputs=self.outputs,
            saver=self.save_checkpoint,
            publisher=self.publisher,
        )
        self.handler_task = asyncio.create_task(self._run_handler(handler, context))
        # livekit-agents waits up to 15 s for the entrypoint when the session is ended from
        # outside; once the room is joined, the room's own end is the session's, so return.
        # (rtc.Room announces its first connection by no event: look.)
        while not self.handler_task.done() and not self.ctx.room.isconnected():
            await asyncio.wait({self.handler_task}, timeout=JOIN_CHECK_INTERVAL_S)

    async def _run_handler(self, handler: SessionHandler, context: SessionContext) -> None:
        try:
            reason = await handler(context)
        except Exception as exc:
            error = describe_error(exc)
            self.log.error("session handler failed", error=error, exc_info=exc)
            self.settle("failed", "session handler failed", error)
        else:
            ended = reason if isinstance(reason, str) and reason else "session handler finished"
            self.settle("completed", ended)
        assert self.outcome is not None
        self.ctx.shutdown(self.outcome.end_reason)

    async def _open_part(self, session_id: str) -> None:
        """Make this part's record, so that the orchestrator accounts for it as for any
        session (should it die, it is `lost`); Redis away: its report still comes."""
        job = self.ctx.job
        try:
            await asyncio.wait_for(
                open_part(
                    await self.link.get(),
                    self.session_id,
                    session_id=session_id,
                    event_id=self.event_id,
                    room=job.room.name,
                    agent_name=job.agent_name,
                    job=AgentJob(job.dispatch_id, job.id, self.ctx.worker_id),
                    publisher=self.publisher or "",
                ),
                FIRST_BEAT_TIMEOUT_S,
            )
        except (TimeoutError, *REDIS_ERRORS) as exc:
            self.log.warning("part session not recorded", error=type(exc).__name__)

    async def save_checkpoint(self, data: dict[str, Any]) -> None:
        await save_checkpoint(await self.link.get(), self.session_id, data)

    def _on_room_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        try:
            self._room_disconnect = rtc.DisconnectReason.Name(reason)
        except ValueError:
            self._room_disconnect = str(reason)

    async def _stop_handler(self) -> None:
        task = self.handler_task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=self.settings.handler_stop_timeout_s)
        if not task.done():
            self.log.warning("session handler ignored its cancellation; reporting anyway")

    async def _external_end_reason(self) -> str:
        if self._room_disconnect is not None:
            return f"the room connection ended ({self._room_disconnect})"
        return await probe_end_reason(self.ctx, self.settings.end_probe_timeout_s)

    def _build_report(self) -> SessionReport:
        if self.report is None:
            outcome = self.outcome or Outcome("completed", "session ended")
            job = self.ctx.job
            resume = self.metadata.resume if self.metadata else None
            self.report = build_report(
                session_id=self.session_id,
                event_id=self.event_id,
                room=job.room.name,
                status=outcome.status,
                end_reason=outcome.end_reason,
                error=outcome.error,
                agent_name=job.agent_name,
                dispatch_id=job.dispatch_id,
                job_id=job.id,
                worker_id=self.ctx.worker_id,
                started_at=self.started_at,
                ended_at=datetime.now(UTC),
                participants=self.participants.records(),
                outputs=self.outputs,
                replaces=resume.previous_session_id if resume else None,
                part_of=self.part_of,
                publisher=self.publisher,
            )
        return self.report

    async def finish(self) -> None:
        """`on_session_end`: settle how the session ended, then write the report."""
        ended_outside = self.outcome is None
        self.log.info("session ending", ended_outside=ended_outside)
        await self._stop_handler()
        if self.outcome is None:
            self.settle("completed", await self._external_end_reason())
        await self.heartbeat.stop()
        report = self._build_report()
        self.log.info(
            "session ended",
            status=report.status,
            end_reason=report.end_reason,
            error=report.error,
            ended_outside=ended_outside,
            duration_s=report.duration_s,
        )
        try:
            await self.writer.write(report, budget_s=self.settings.report_timeout_s)
        except ReportWriteError as exc:
            self.log.error("session report not written", error=str(exc))

    async def on_shutdown(self, reason: str) -> None:
        """Shutdown callback: the fallback writer, then the connection's clean-up."""
        try:
            if not self.writer.written:
                self.log.warning("writing the session report from the shutdown callback")
                await self._stop_handler()
                if reason == "job crashed":
                    self.settle("failed", "agent error", "the agent's entrypoint crashed")
                self.settle("completed", reason)
                await self.heartbeat.stop()
                budget_s = max(self.settings.shutdown_process_timeout_s - 1.0, 1.0)
                await self.writer.write(self._build_report(), budget_s=budget_s)
        except Exception as exc:  # one raising callback would cut off the others
            self.log.error("session report not written", error=describe_error(exc))
        finally:
            await self.link.aclose()
            _SESSIONS.pop(self.ctx.job.id, None)


async def probe_end_reason(ctx: JobContext, timeout_s: float) -> str:
    """Why LiveKit ended the job, from what remains of its dispatch."""
    job = ctx.job
    if not job.dispatch_id or timeout_s <= 0:
        return "ended by LiveKit or the worker"
    try:
        dispatch = await asyncio.wait_for(
            ctx.api.agent_dispatch.get_dispatch(job.dispatch_id, job.room.name), timeout_s
        )
    except api.ServerError as exc:
        if exc.code == "not_found":
            return "the room was closed"
        if exc.code == "unavailable":  # what a room no node hosts any more answers
            return "the room is no longer running (closed or deleted)"
        return f"ended by LiveKit or the worker (asking why failed: {exc.code})"
    except Exception as exc:
        return f"ended by LiveKit or the worker (asking why failed: {type(exc).__name__})"
    if dispatch is None:
        return "the dispatch was deleted (end_session or DeleteDispatch)"
    return "the job was stopped by the worker or LiveKit while its dispatch remains"


def _process_state(proc: JobProcess) -> tuple[AgentSettings, SessionHandler | HandlerLoadError]:
    if _SETTINGS not in proc.userdata:
        setup_process(proc)
    return proc.userdata[_SETTINGS], proc.userdata[_HANDLER]


async def entrypoint(ctx: JobContext) -> None:
    """livekit-agents' session entrypoint."""
    settings, handler = _process_state(ctx.proc)
    try:
        metadata, problem = parse_job_metadata(ctx.job.metadata), None
    except InvalidMetadataError as exc:
        metadata, problem = None, str(exc)
    if metadata is not None and metadata.probe:
        # Proof for `orchestrator doctor` that a worker takes jobs; no session to report.
        get_logger(job_id=ctx.job.id).info("doctor probe job taken; ending it unreported")
        _PROBES.add(ctx.job.id)
        ctx.shutdown("doctor probe")
        return
    session = Session(ctx, settings, metadata)
    _SESSIONS[ctx.job.id] = session
    ctx.add_shutdown_callback(session.on_shutdown)
    session.bind_log_context()
    try:
        await session.run(handler, problem)
    except Exception as exc:
        session.settle("failed", "agent error", f"the agent failed: {describe_error(exc)}")
        raise


async def on_session_end(ctx: JobContext) -> None:
    """livekit-agents' `on_session_end`: writes the session's report."""
    if ctx.job.id in _PROBES:
        _PROBES.discard(ctx.job.id)
        return
    session = _SESSIONS.get(ctx.job.id)
    if session is None:
        get_logger(job_id=ctx.job.id).error("no session recorded for this job; no report")
        return
    await session.finish()
