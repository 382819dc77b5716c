"""Which jobs this worker takes: the job request handler and the load function.

Both run in the worker's main process (livekit-agents calls them there, never in a job
process).
"""

from __future__ import annotations

import threading

from livekit.agents import AgentServer, JobRequest
from livekit.agents.utils.hw import get_cpu_monitor

from agent.log import get_logger
from agent.metadata import salvage_ids
from agent.settings import AgentSettings

SESSION_ID_ATTRIBUTE = "lkd.session_id"
CPU_SAMPLE_INTERVAL_S = 1.0
MAX_IDENTITY_CHARS = 256


class SessionLoad:
    """The worker's load: the larger of its CPU use and its share of `max_sessions`, scaled
    so that either reaching its limit makes the load reach `load_threshold`. livekit-agents
    reports the worker full at the threshold (and LiveKit stops sending it jobs)."""

    def __init__(self, settings: AgentSettings) -> None:
        self._max_sessions = settings.max_sessions
        self._threshold = settings.load_threshold
        self._count_cpu = settings.count_cpu_load
        self._cpu = 0.0
        self._sampler: threading.Thread | None = None

    def __call__(self, server: AgentServer) -> float:
        if self._count_cpu and self._sampler is None:
            self._sampler = threading.Thread(
                target=self._sample_cpu, name="lkd_cpu_load", daemon=True
            )
            self._sampler.start()
        sessions = self._threshold * len(server.active_jobs) / self._max_sessions
        return max(sessions, self._cpu if self._count_cpu else 0.0)

    def _sample_cpu(self) -> None:
        monitor = get_cpu_monitor()
        while True:
            self._cpu = monitor.cpu_percent(interval=CPU_SAMPLE_INTERVAL_S)


class RequestHandler:
    """Answers every job request at once: accepts with the session's identity, or rejects a
    job for a room where this worker already runs a session.

    A rejection uses terminate=True: the job ends instead of going to another worker, since
    another worker taking it would put a second agent in a room that has one (the
    orchestrator's per-room claim should have prevented the dispatch; this is the second
    line of defence, and it must not hand the duplicate on)."""

    def __init__(self, server: AgentServer, agent_name: str) -> None:
        self._server = server
        self._agent_name = agent_name
        self._starting: set[str] = set()
        """Rooms of accepted jobs not yet running (accept() waits for the assignment)."""

    def _running_in(self, room: str) -> list[str]:
        """Session ids of this worker's jobs in `room`, starting or running."""
        running = [
            salvage_ids(info.job.metadata).session_id or info.job.id
            for info in self._server.active_jobs
            if info.job.room.name == room
        ]
        return running or (["(starting)"] if room in self._starting else [])

    async def __call__(self, request: JobRequest) -> None:
        room = request.room.name
        session_id = salvage_ids(request.job.metadata).session_id
        log = get_logger(room=room, job_id=request.id, session_id=session_id)
        if running := self._running_in(room):
            log.warning(
                "rejecting the job: this worker already runs a session in its room",
                running_sessions=running,
            )
            await request.reject(terminate=True)
            return
        identity = f"agent-{session_id}" if session_id else ""
        if len(identity) > MAX_IDENTITY_CHARS:
            identity = ""
        attributes = {SESSION_ID_ATTRIBUTE: session_id} if session_id else {}
        self._starting.add(room)
        try:
            await request.accept(name=self._agent_name, identity=identity, attributes=attributes)
        except Exception as exc:  # e.g. AssignmentTimeoutError: the answer itself was sent
            log.warning("job accepted but not started", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._starting.discard(room)
