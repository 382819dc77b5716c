"""The agent worker protocol on `/agent`, as livekit-server serves it (pkg/service/agentservice.go,
pkg/agent/worker.go): registration, job requests with availability, assignment, status updates
and termination. See livekit_sim/README.md for what differs from the real server.

THIS FILE IS A STUB: the interface below is fixed (rooms.py and server.py call it).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from aiohttp import web
from livekit.protocol import agent

from livekit_sim.faults import Faults


class TerminationReason(Enum):
    """Why the server terminates a job (rpc.JobTerminateReason)."""

    TERMINATION_REQUESTED = "termination_requested"  # DeleteDispatch: job ends JS_SUCCESS
    AGENT_LEFT_ROOM = "agent_left_room"  # agent left / room closed: JS_FAILED if still running


class WorkerPool:
    """All connected workers and the jobs they run."""

    def __init__(self, keys: Mapping[str, str], faults: Faults) -> None:
        self._keys = keys
        self._faults = faults

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /agent: authenticate (video.agent grant) and run one worker's websocket."""
        raise NotImplementedError

    async def request_job(self, job: agent.Job) -> agent.JobState | None:
        """Offer a job to the workers registered for (agent_name, namespace, type, deployment).

        Returns the job's state once a worker accepted it (JS_RUNNING) or answered
        terminate=true (JS_SUCCESS); None when the job was dropped (no worker, all refused,
        all full, timeout), exactly as the real server drops it: nothing is retried.
        """
        raise NotImplementedError

    async def terminate_job(self, job_id: str, reason: TerminationReason) -> agent.JobState | None:
        """Send JobTermination to the job's worker; the job's state after it, None if unknown."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close every worker connection."""
