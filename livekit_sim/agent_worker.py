"""One connected agent worker, as livekit-server's pkg/agent/worker.go models it: its registration,
its status and load, the jobs it runs, and the wire format of its websocket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from google.protobuf import json_format
from livekit.protocol import agent, models

from livekit_sim.agent_tokens import AGENT_NAME_ATTRIBUTE, build_agent_token

log = logging.getLogger("livekit_sim.workers")

# pkg/agent/worker.go
ASSIGN_JOB_TIMEOUT_S = 10.0
REGISTER_TIMEOUT_S = 10.0
MAX_DEPLOYMENT_BYTES = 64

WorkerKey = tuple[str, str, int, str]  # (agent_name, namespace, job type, deployment)


class ProtocolError(Exception):
    """The worker broke the protocol; the server closes its connection."""


class AssignError(Exception):
    """A job could not be assigned to this worker; `retry` says whether the next worker is tried."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def now_ns() -> int:
    return time.time_ns()


def validate_deployment(deployment: str) -> None:
    """protocol agent/environment.go ValidateDeployment; raises ProtocolError."""
    raw = deployment.encode()
    if len(raw) > MAX_DEPLOYMENT_BYTES:
        raise ProtocolError(f"deployment exceeds {MAX_DEPLOYMENT_BYTES} bytes")
    for i, byte in enumerate(raw):
        if byte == ord("_"):
            raise ProtocolError("deployment contains reserved character '_'")
        if byte <= ord(" ") or byte == 0x7F:
            raise ProtocolError(f"deployment contains whitespace or control byte at position {i}")


class Wire:
    """Frames of one /agent websocket: protobuf in binary frames, protojson in text frames.

    Like wsprotocol.go, the server answers in the format of the worker's latest message.
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.use_json = False
        self._send_lock = asyncio.Lock()

    async def receive(self, timeout_s: float | None = None) -> agent.WorkerMessage | None:
        """The next message; None when the connection closed. Raises ProtocolError on bad frames."""
        msg = await self.ws.receive(timeout=timeout_s)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        if msg.type == WSMsgType.ERROR:
            raise ProtocolError(f"error reading from websocket: {self.ws.exception()}")
        decoded = agent.WorkerMessage()
        try:
            if msg.type == WSMsgType.BINARY:
                self.use_json = False
                decoded.ParseFromString(msg.data)
            elif msg.type == WSMsgType.TEXT:
                self.use_json = True
                json_format.Parse(msg.data, decoded)
            else:
                raise ProtocolError(f"unsupported message type {msg.type}")
        except (json_format.ParseError, ValueError) as exc:
            raise ProtocolError(f"error reading from websocket: {exc}") from exc
        return decoded

    async def send(self, msg: agent.ServerMessage) -> None:
        async with self._send_lock:
            if self.use_json:
                await self.ws.send_str(json_format.MessageToJson(msg, indent=None))
            else:
                await self.ws.send_bytes(msg.SerializeToString())

    async def pong(self, ping: agent.WorkerPing) -> None:
        pong = agent.WorkerPong(last_timestamp=ping.timestamp, timestamp=int(time.time() * 1000))
        await self.send(agent.ServerMessage(pong=pong))


@dataclass(eq=False)
class Worker:
    """A registered worker: what it serves, how busy it says it is, and its running jobs."""

    id: str
    wire: Wire
    api_key: str
    api_secret: str
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    permissions: models.ParticipantPermission
    status: int = agent.WS_AVAILABLE
    load: float = 0.0
    running_jobs: dict[str, agent.Job] = field(default_factory=dict)
    availability: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(
        default_factory=dict
    )
    closed: bool = False

    @property
    def key(self) -> WorkerKey:
        return (self.agent_name, self.namespace, self.job_type, self.deployment)

    def close(self) -> None:
        """Mark closed; pending availability waits end with a retryable 'worker closed'."""
        self.closed = True
        for fut in self.availability.values():
            if not fut.done():
                fut.set_exception(AssignError("worker closed", retry=True))
        self.availability.clear()

    def handle_update_worker(self, update: agent.UpdateWorkerStatus) -> None:
        if update.HasField("status"):
            self.status = update.status
        self.load = update.load

    def handle_availability(self, res: agent.AvailabilityResponse) -> None:
        fut = self.availability.pop(res.job_id, None)
        if fut is None or fut.done():
            log.warning("received availability response for unknown job jobID=%s", res.job_id)
            return
        fut.set_result(res)

    def update_job_status(self, update: agent.UpdateJobStatus) -> agent.JobState | None:
        """Apply a status update to a running job; its state after it, None if not running."""
        job = self.running_jobs.get(update.job_id)
        if job is None:
            return None
        now = now_ns()
        job.state.updated_at = now
        if job.state.status == agent.JS_PENDING and update.status != agent.JS_PENDING:
            job.state.started_at = now
        job.state.status = update.status
        job.state.error = update.error
        if update.status in (agent.JS_SUCCESS, agent.JS_FAILED):
            job.state.ended_at = now
            del self.running_jobs[update.job_id]
            log.info(
                "job ended jobID=%s status=%s error=%s",
                update.job_id,
                agent.JobStatus.Name(update.status),
                update.error,
            )
        return _clone_state(job.state)

    async def assign_job(self, job: agent.Job, timeout_s: float) -> agent.JobState:
        """worker.go AssignJob: ask for availability, then assign with an agent token.

        Raises AssignError when the worker refuses, closes or does not answer in time.
        """
        if job.id in self.availability:
            raise AssignError("duplicate job assignment", retry=False)
        job = _clone_job(job)
        now = now_ns()
        job.state.worker_id = self.id
        job.state.updated_at = now
        job.state.started_at = now
        job.state.status = agent.JS_RUNNING
        fut: asyncio.Future[agent.AvailabilityResponse] = asyncio.get_running_loop().create_future()
        self.availability[job.id] = fut
        try:
            await self.wire.send(
                agent.ServerMessage(availability=agent.AvailabilityRequest(job=job))
            )
            if timeout_s >= ASSIGN_JOB_TIMEOUT_S:
                timeout_s, timeout_error = ASSIGN_JOB_TIMEOUT_S, "agent worker availability timeout"
            else:
                timeout_error = "context deadline exceeded"
            try:
                res = await asyncio.wait_for(fut, max(0.0, timeout_s))
            except TimeoutError:
                raise AssignError(timeout_error, retry=False) from None
        except ConnectionError as exc:
            raise AssignError(f"write failed: {exc}", retry=False) from exc
        finally:
            self.availability.pop(job.id, None)

        if res.terminate:
            job.state.ended_at = now  # the real server reuses the request time here
            job.state.status = agent.JS_SUCCESS
            return _clone_state(job.state)
        if not res.available:
            raise AssignError("worker not available", retry=True)

        job.state.participant_identity = res.participant_identity
        attributes = {**res.participant_attributes, AGENT_NAME_ATTRIBUTE: self.agent_name}
        token = build_agent_token(
            api_key=self.api_key,
            api_secret=self.api_secret,
            room_name=job.room.name,
            identity=res.participant_identity,
            name=res.participant_name,
            metadata=res.participant_metadata,
            attributes=attributes,
            permissions=self.permissions,
        )
        try:
            await self.wire.send(
                agent.ServerMessage(assignment=agent.JobAssignment(job=job, token=token))
            )
        except ConnectionError as exc:
            raise AssignError(f"write failed: {exc}", retry=False) from exc
        self.running_jobs[job.id] = job
        return _clone_state(job.state)

    async def terminate_job(self, job_id: str, *, agent_left_room: bool) -> agent.JobState | None:
        """worker.go TerminateJob: JobTermination, then SUCCESS (or FAILED when the agent left)."""
        if job_id not in self.running_jobs:
            return None
        try:
            await self.wire.send(
                agent.ServerMessage(termination=agent.JobTermination(job_id=job_id))
            )
        except ConnectionError as exc:
            log.info("failed to send job termination jobID=%s error=%s", job_id, exc)
        update = agent.UpdateJobStatus(job_id=job_id, status=agent.JS_SUCCESS)
        if agent_left_room:
            update.status = agent.JS_FAILED
            update.error = "agent worker left the room"
        return self.update_job_status(update)

    def snapshot(self) -> dict[str, object]:
        return {
            "id": self.id,
            "agent_name": self.agent_name,
            "namespace": self.namespace,
            "job_type": agent.JobType.Name(self.job_type),
            "deployment": self.deployment,
            "version": self.version,
            "api_key": self.api_key,
            "status": agent.WorkerStatus.Name(self.status),
            "load": self.load,
            "jobs": [
                {
                    "id": job.id,
                    "dispatch_id": job.dispatch_id,
                    "room": job.room.name,
                    "status": agent.JobStatus.Name(job.state.status),
                    "error": job.state.error,
                    "participant_identity": job.state.participant_identity,
                }
                for job in self.running_jobs.values()
            ],
        }


def _clone_job(job: agent.Job) -> agent.Job:
    copy = agent.Job()
    copy.CopyFrom(job)
    return copy


def _clone_state(state: agent.JobState) -> agent.JobState:
    copy = agent.JobState()
    copy.CopyFrom(state)
    return copy
