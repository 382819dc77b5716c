"""The sim's own record of agent jobs: which worker ran which job in which room, and when.

It lets a test or benchmark see from outside the product when two agents were in one room
at once. One record per job a worker accepted (JS_RUNNING assignment), from its assignment to
its end; jobs that were dropped or refused are not recorded.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from livekit.protocol import agent

# How a job ended (`JobRecord.end_reason`): the worker's UpdateJobStatus ("JS_SUCCESS",
# "JS_FAILED"), or a JobTermination the server sent:
TERMINATION_REQUESTED = "termination_requested"  # DeleteDispatch
AGENT_LEFT_ROOM = "agent_left_room"  # the agent's participant left the room
ROOM_CLOSED = "room_closed"  # the room closed (timeout or DeleteRoom)


@dataclass(slots=True)
class JobRecord:
    """One job a worker accepted. `end_reason` and `ended_at_ns` are None while it runs.

    A worker that disconnects leaves its jobs running for ever, as the real server forgets
    them without ending them: `worker_disconnected_at_ns` says when that happened.
    """

    job_id: str
    dispatch_id: str  # "" for a job the worker asked for with SimulateJobRequest
    room: str
    agent_name: str
    metadata: str
    worker_id: str
    participant_identity: str
    assigned_at_ns: int  # unix ns, when the JobAssignment was sent
    status: str = "JS_RUNNING"  # the job's status after its end: JS_SUCCESS or JS_FAILED
    error: str = ""
    ended_at_ns: int | None = None
    end_reason: str | None = None
    worker_disconnected_at_ns: int | None = None


class JobLog:
    """Records of accepted jobs, oldest first, at most `maxlen` of them."""

    def __init__(self, maxlen: int) -> None:
        self.records: deque[JobRecord] = deque(maxlen=maxlen)
        self._running: dict[str, JobRecord] = {}  # jobs of connected workers not ended yet

    def assigned(self, job: agent.Job, state: agent.JobState) -> JobRecord:
        """`job` was assigned to the worker `state.worker_id` and runs from now."""
        record = JobRecord(
            job_id=job.id,
            dispatch_id=job.dispatch_id,
            room=job.room.name,
            agent_name=job.agent_name,
            metadata=job.metadata,
            worker_id=state.worker_id,
            participant_identity=state.participant_identity,
            assigned_at_ns=time.time_ns(),
        )
        self.records.append(record)
        self._running[job.id] = record
        return record

    def ended(self, job_id: str, state: agent.JobState, reason: str) -> None:
        """The running job `job_id` ended in `state`, for `reason`; unknown jobs are ignored."""
        record = self._running.pop(job_id, None)
        if record is None:
            return
        record.status = agent.JobStatus.Name(state.status)
        record.error = state.error
        record.ended_at_ns = state.ended_at or time.time_ns()
        record.end_reason = reason

    def worker_disconnected(self, job_ids: list[str]) -> None:
        """The worker running `job_ids` disconnected: they stay running, and are forgotten."""
        now = time.time_ns()
        for job_id in job_ids:
            record = self._running.pop(job_id, None)
            if record is not None:
                record.worker_disconnected_at_ns = now
