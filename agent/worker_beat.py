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
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from livekit.agents import AgentServer

from agent.admission import RequestHandler
from agent.log import get_logger
from agent.metadata import salvage_ids
from agent.redis_link import REDIS_ERRORS, RedisLink
from tasks.heartbeat import SessionHold, WorkerRecord, beat_worker, leave_fleet

LEAVE_TIMEOUT_S = 1.0


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
        self._offered = 0
        """The slots it offered at its last beat that reached Redis."""
        self._wake = asyncio.Event()
        self.worker_id = ""
        self._task: asyncio.Task[None] | None = None

    def sessions(self) -> dict[str, SessionHold]:
        """What the worker holds now: starting (accepted, no process yet) or running."""
        held: dict[str, SessionHold] = dict.fromkeys(self._handler.starting_sessions(), "starting")
        for info in self._server.active_jobs:
            session_id = salvage_ids(info.job.metadata).session_id
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
        )

    def registered(self, worker_id: str) -> None:
        """LiveKit registered the worker: beat now, so that its slots count at once."""
        self.worker_id = worker_id
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lkd_worker_beat")

    async def aclose(self) -> None:
        task, self._task = self._task, None
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
            self._wake.clear()
