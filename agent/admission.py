"""Which jobs this worker takes: the job request handler and the load function.

Both run in the worker's main process (livekit-agents calls them there, never in a job
process).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from livekit.agents import AgentServer, JobRequest
from livekit.agents.utils.hw import get_cpu_monitor
from livekit.protocol.agent import JobType

from agent.log import get_logger
from agent.metadata import job_session_id
from agent.redis_link import REDIS_ERRORS
from agent.settings import AgentSettings

SESSION_ID_ATTRIBUTE = "lkd.session_id"
WIND_DOWN_WAIT_S = 1.5
"""How long a job for a room waits for this worker's previous session there to end: a session
writes its report before its process exits, so the orchestrator may dispatch the room's next
session a moment before. Well within LiveKit's ~3 s to answer a job request."""
WIND_DOWN_POLL_S = 0.05
CPU_SAMPLE_INTERVAL_S = 1.0
MAX_IDENTITY_CHARS = 256


class SessionLoad:
    """The worker's load: the larger of its CPU use and its share of `max_sessions`. CPU at
    its limit makes the load reach `load_threshold`: livekit-agents then reports the worker
    full, and LiveKit stops sending it jobs. Sessions alone never do (at `max_sessions` the
    load is just under the threshold): LiveKit learns of a worker's load only every 2.5 s,
    so a worker it took for full would miss the jobs dispatched the moment a session ends.
    The session limit holds at the request handler instead, which also lets a session that
    is winding down finish first (RequestHandler)."""

    def __init__(self, settings: AgentSettings) -> None:
        self._max_sessions = settings.max_sessions
        self._threshold = settings.load_threshold
        self._count_cpu = settings.count_cpu_load
        self._cpu = 0.0
        self._sampler: threading.Thread | None = None
        self.last = 0.0
        """The load last reported to LiveKit."""
        self._at_limit = False

    def __call__(self, server: AgentServer) -> float:
        if self._count_cpu and self._sampler is None:
            self._sampler = threading.Thread(
                target=self._sample_cpu, name="lkd_cpu_load", daemon=True
            )
            self._sampler.start()
        running = len(server.active_jobs)
        self._at_limit = running >= self._max_sessions
        sessions = self._threshold * running / (self._max_sessions + 1)
        self.last = max(sessions, self._cpu if self._count_cpu else 0.0)
        return self.last

    def full(self) -> bool:
        """Whether the worker takes no more sessions now: at its session limit, or reported
        full to LiveKit for its CPU."""
        return self._at_limit or self.last >= self._threshold

    def _sample_cpu(self) -> None:
        monitor = get_cpu_monitor()
        while True:
            self._cpu = monitor.cpu_percent(interval=CPU_SAMPLE_INTERVAL_S)


class RequestHandler:
    """Answers every job request: accepts with the session's identity; declines one beyond
    `max_sessions` (after a moment's wait when a session it holds has filed its report and
    is winding down: the orchestrator passes that slot on at once); or rejects a job for a
    room where this worker already runs a session (after a moment's wait, when that is
    another session, for it to end).

    A decline uses terminate=False: LiveKit offers the job to another worker (with none, it
    drops it, and the orchestrator's assignment check dispatches again). The limit must
    hold here, not only in the load the worker reports: LiveKit learns of that load every
    2.5 s, and a burst of requests in between would all be accepted.

    A rejection uses terminate=True: the job ends instead of going to another worker, since
    another worker taking it would put a second agent in a room that has one (the
    orchestrator's per-room claim should have prevented the dispatch; this is the second
    line of defence, and it must not hand the duplicate on)."""

    def __init__(
        self,
        server: AgentServer,
        agent_name: str,
        max_sessions: int,
        reported: Callable[[list[str]], Awaitable[bool]] | None = None,
    ) -> None:
        """`reported(session_ids)`: whether any of these sessions has its report filed (its
        job process is winding down)."""
        self._server = server
        self._reported = reported
        self._agent_name = agent_name
        self._max_sessions = max_sessions
        self._starting: dict[str, tuple[str, str | None]] = {}
        """Accepted jobs not yet running in a process, by job id: (room, session id).
        livekit-agents' accept() returns once the job runs in a process, which may first have
        to be started."""
        self._accepted: dict[str, str] = {}
        """Session id → job id of the jobs accepted since `take_accepted` last ran."""
        self.on_accept: Callable[[], None] = lambda: None
        """Called as a job is accepted (the worker's beat then names it at once)."""

    def starting_sessions(self) -> list[str]:
        """Session ids of the jobs accepted and not yet running in a process."""
        return [sid for _, sid in self._starting.values() if sid]

    def take_accepted(self) -> dict[str, str]:
        """Session id → job id of the jobs accepted since the last call (even one whose process
        has already exited)."""
        accepted, self._accepted = self._accepted, {}
        return accepted

    def starting_jobs(self) -> dict[str, str]:
        """Session id → job id of the jobs accepted and not yet running in a process."""
        return {sid: job_id for job_id, (_, sid) in self._starting.items() if sid}

    def held(self) -> int:
        """Jobs this worker holds: running in a process, or accepted and starting."""
        return len({info.job.id for info in self._server.active_jobs} | set(self._starting))

    def _running_in(self, room: str) -> list[str]:
        """Session ids of this worker's jobs in `room`, starting or running."""
        running = [
            job_session_id(info.job) or info.job.id
            for info in self._server.active_jobs
            if info.job.room.name == room
        ]
        starting = [sid or job for job, (r, sid) in self._starting.items() if r == room]
        return running or starting

    async def _room_taken(self, room: str, session_id: str | None) -> list[str]:
        """The sessions this worker still runs in `room`, once another session's job there
        had up to WIND_DOWN_WAIT_S to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WIND_DOWN_WAIT_S
        while running := self._running_in(room):
            if session_id in running or loop.time() >= deadline:
                return running
            await asyncio.sleep(WIND_DOWN_POLL_S)
        return []

    def _held_sessions(self) -> list[str]:
        running = [job_session_id(info.job) for info in self._server.active_jobs]
        return [sid for sid in running if sid] + self.starting_sessions()

    async def _winding_down(self) -> bool:
        """Whether a session this worker holds has already filed its report: its slot is
        free for the orchestrator (which may have dispatched this very job into it), and
        its job process is about to exit."""
        if self._reported is None:
            return False
        try:
            return await asyncio.wait_for(self._reported(self._held_sessions()), WIND_DOWN_WAIT_S)
        except (TimeoutError, *REDIS_ERRORS):
            return False

    async def _slot_freed(self) -> None:
        """Wait up to WIND_DOWN_WAIT_S for a session to leave, for the job asking for its
        slot."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WIND_DOWN_WAIT_S
        while self.held() >= self._max_sessions:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(WIND_DOWN_POLL_S)

    async def __call__(self, request: JobRequest) -> None:
        room = request.room.name
        session_id = job_session_id(request.job)
        log = get_logger(room=room, job_id=request.id, session_id=session_id)
        # A job per publisher shares its room with the others of its dispatch.
        one_per_room = request.job.type != JobType.JT_PUBLISHER
        if one_per_room and (running := await self._room_taken(room, session_id)):
            log.warning(
                "rejecting the job: this worker already runs a session in its room",
                running_sessions=running,
            )
            await request.reject(terminate=True)
            return
        if self.held() >= self._max_sessions and await self._winding_down():
            await self._slot_freed()
        if (held := self.held()) >= self._max_sessions:
            log.info(
                "declining the job: this worker is full, LiveKit offers it to another",
                held=held,
                max_sessions=self._max_sessions,
            )
            await request.reject(terminate=False)
            return
        identity = f"agent-{session_id}" if session_id else ""
        if len(identity) > MAX_IDENTITY_CHARS:
            identity = ""
        attributes = {SESSION_ID_ATTRIBUTE: session_id} if session_id else {}
        self._starting[request.id] = (room, session_id)
        if session_id:
            self._accepted[session_id] = request.id
        self.on_accept()
        try:
            await request.accept(name=self._agent_name, identity=identity, attributes=attributes)
        except Exception as exc:  # e.g. AssignmentTimeoutError: the answer itself was sent
            log.warning("job accepted but not started", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._starting.pop(request.id, None)
