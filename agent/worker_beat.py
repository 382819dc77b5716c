"""The agent worker's own heartbeat: a record, refreshed every few seconds from the worker's
main process, of the sessions it holds (`tasks.heartbeat.WorkerRecord`).

A session is held `starting` from the moment the request handler accepts its job until a job
process runs it (livekit-agents may first have to start one), then `running` while that process
lives. The orchestrator reads it so that a session waiting for a process is not taken for one
whose agent died, and a job process that died is noticed without waiting for a timer. With
it go the slots the worker offers its agent name's waiting line: its session limit once it is
registered with LiveKit, only what it holds while it reports itself full. When it offers more
than at its last beat, the beat also asks the orchestrator to move the line; registering
beats at once.

The main process also watches its job processes: one that exits without its session's report
(killed, out of memory, crashed) is told to the orchestrator at once (`note_exit`), which ends
the session `lost` without waiting for its heartbeat's silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from livekit.agents import AgentServer

from agent.admission import RequestHandler
from agent.log import get_logger
from agent.metadata import job_session_id
from agent.redis_link import REDIS_ERRORS, RedisLink
from tasks.heartbeat import (
    JobType,
    SessionHold,
    WorkerRecord,
    beat_worker,
    leave_fleet,
    note_exit,
)

LEAVE_TIMEOUT_S = 1.0
EXIT_WATCH_INTERVAL_S = 0.1
"""How often the main process looks for job processes that exited: a local look, no I/O."""


class WorkerBeat:
    """Writes this worker's record every `interval_s` while the worker runs."""

    def __init__(
        self,
        server: AgentServer,
        handler: RequestHandler,
        link: RedisLink,
        *,
        agent_name: str,
        max_sessions: int,
        interval_s: float,
        permissions: dict[str, bool] | None = None,
        full: Callable[[], bool] = lambda: False,
        job_type: JobType = "room",
    ) -> None:
        self._server = server
        self._handler = handler
        self._link = link
        self._interval_s = interval_s
        self.instance = f"AI_{uuid.uuid4().hex[:16]}"
        self._agent_name = agent_name
        self._max_sessions = max_sessions
        self._permissions = dict(permissions or {})
        self._full = full
        self._job_type: JobType = job_type
        self._offered = 0
        """The slots it offered at its last beat that reached Redis."""
        self._wake = asyncio.Event()
        self.worker_id = ""
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    def sessions(self) -> dict[str, SessionHold]:
        """What the worker holds now: starting (accepted, no process yet) or running."""
        held: dict[str, SessionHold] = dict.fromkeys(self._handler.starting_sessions(), "starting")
        for info in self._server.active_jobs:
            session_id = job_session_id(info.job)
            if session_id:
                held[session_id] = "running"
        return held

    def record(self) -> WorkerRecord:
        return WorkerRecord(
            instance=self.instance,
            agent_name=self._agent_name,
            worker_id=self.worker_id,
            max_sessions=self._max_sessions,
            sessions=self.sessions(),
            permissions=self._permissions,
            full=self._full(),
            job_type=self._job_type,
        )

    def wake(self) -> None:
        """Beat now: a job was accepted, and should this worker die, its record must name
        the session (failover: orchestrator.jobs.fleet)."""
        self._wake.set()

    def registered(self, worker_id: str) -> None:
        """LiveKit registered the worker: beat now, so that its slots count at once."""
        self.worker_id = worker_id
        self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name="lkd_worker_beat")
        if self._watch is None:
            self._watch = loop.create_task(self._watch_exits(), name="lkd_exit_watch")

    def held_jobs(self) -> dict[str, str]:
        """Session id → LiveKit job id of the sessions held now: accepted and starting, or
        running in a job process (a job can start and die between two looks)."""
        running = self._handler.starting_jobs()
        for info in self._server.active_jobs:
            session_id = job_session_id(info.job)
            if session_id:
                running[session_id] = info.job.id
        return running

    async def _watch_exits(self) -> None:
        before: dict[str, str] = {}
        while True:
            await asyncio.sleep(EXIT_WATCH_INTERVAL_S)
            try:
                now = self.held_jobs()
                # Jobs accepted since the last look count as seen, however short they lived.
                seen = {**before, **self._handler.take_accepted()}
                for session_id, job_id in seen.items():
                    if now.get(session_id) != job_id:
                        await self._exited(session_id, job_id)
                before = now
            except Exception:  # the watch must outlive any one look
                get_logger().exception("watching job processes failed")

    async def _exited(self, session_id: str, job_id: str) -> None:
        log = get_logger(session_id=session_id, job_id=job_id)
        try:
            redis = await asyncio.wait_for(self._link.get(), self._interval_s)
            told = await asyncio.wait_for(note_exit(redis, session_id, job_id), self._interval_s)
        except REDIS_ERRORS as exc:
            # Reconciliation finds the session by its heartbeat's silence instead.
            log.warning("could not say a job process exited", error=type(exc).__name__)
            return
        if told:
            log.warning("job process exited without its report: told the orchestrator")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(*REDIS_ERRORS):
                redis = await asyncio.wait_for(self._link.get(), LEAVE_TIMEOUT_S)
                await asyncio.wait_for(leave_fleet(redis, self.record()), LEAVE_TIMEOUT_S)
        await self._link.aclose()

    async def _run(self) -> None:
        log = get_logger(instance=self.instance)
        failing = False
        while True:
            self._wake.clear()  # this beat answers every wake so far
            try:
                redis = await asyncio.wait_for(self._link.get(), self._interval_s)
                record = self.record()
                grew = record.offered > self._offered
                await asyncio.wait_for(beat_worker(redis, record, grew=grew), self._interval_s)
                self._offered = record.offered
                if failing:
                    log.info("worker heartbeat restored")
                failing = False
            except REDIS_ERRORS as exc:
                if not failing:
                    log.warning(
                        "worker heartbeat failed; retrying", error=f"{type(exc).__name__}: {exc}"
                    )
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
