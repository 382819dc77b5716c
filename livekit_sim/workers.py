"""The agent worker protocol on `/agent`, as livekit-server serves it (pkg/service/agentservice.go,
pkg/agent/worker.go): registration, job requests with availability, assignment, status updates
and termination. See livekit_sim/README.md for what differs from the real server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from enum import Enum

from aiohttp import web
from livekit.protocol import agent, models

from livekit_sim import ids, job_log
from livekit_sim.agent_tokens import default_permissions
from livekit_sim.agent_worker import (
    ASSIGN_JOB_TIMEOUT_S,
    REGISTER_TIMEOUT_S,
    AssignError,
    ProtocolError,
    Wire,
    Worker,
    WorkerKey,
    validate_deployment,
)
from livekit_sim.auth import PERMISSION_DENIED, api_key_of, request_claims, token_from_request
from livekit_sim.faults import Faults
from livekit_sim.job_log import JobLog

log = logging.getLogger("livekit_sim.workers")

SERVER_VERSION = "1.13.5"  # the livekit-server release whose behaviour this module follows
RTC_PROTOCOL = 17  # pkg/rtc/types CurrentProtocol
AGENT_PROTOCOL = 1
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # limit.agent_signal_message_size_limit
PING_INTERVAL_S = 10.0
# psrpc's default client timeout bounds the whole JobRequest, every worker tried included.
AVAILABILITY_TIMEOUT_S = 3.0
TARGET_LOAD = 0.7  # agents.target_load, the affinity gate


class TerminationReason(Enum):
    """Why the server terminates a job (rpc.JobTerminateReason)."""

    TERMINATION_REQUESTED = "termination_requested"  # DeleteDispatch: job ends JS_SUCCESS
    AGENT_LEFT_ROOM = "agent_left_room"  # agent left / room closed: JS_FAILED if still running


_END_REASONS = {
    TerminationReason.TERMINATION_REQUESTED: job_log.TERMINATION_REQUESTED,
    TerminationReason.AGENT_LEFT_ROOM: job_log.AGENT_LEFT_ROOM,
}


class WorkerPool:
    """All connected workers and the jobs they run; `job_log` records every job accepted.

    `availability_timeout_s`, `register_timeout_s` and `target_load` are plain attributes a test
    may change at any time.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        faults: Faults,
        *,
        availability_timeout_s: float = AVAILABILITY_TIMEOUT_S,
        register_timeout_s: float = REGISTER_TIMEOUT_S,
        target_load: float = TARGET_LOAD,
        region: str = "",
        max_job_log: int = 100_000,
    ) -> None:
        self._keys = keys
        self._faults = faults
        self.job_log = JobLog(max_job_log)
        self.availability_timeout_s = availability_timeout_s
        self.register_timeout_s = register_timeout_s
        self.target_load = target_load
        self.server_info = models.ServerInfo(
            edition=models.ServerInfo.Standard,
            version=SERVER_VERSION,
            protocol=RTC_PROTOCOL,
            agent_protocol=AGENT_PROTOCOL,
            region=region,
            node_id=ids.new_id("ND_"),
        )
        self._workers: dict[str, Worker] = {}
        self._job_to_worker: dict[str, Worker] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /agent: authenticate (video.agent grant) and run one worker's websocket."""
        claims = request_claims(request, self._keys)
        if not _is_websocket_upgrade(request):
            return web.Response(status=404)
        if claims is None or claims.video is None or not claims.video.agent:
            raise web.HTTPUnauthorized(text=PERMISSION_DENIED)
        token = token_from_request(request)
        assert token is not None  # claims were read from it
        api_key = api_key_of(token)

        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=PING_INTERVAL_S)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._serve(Wire(ws), api_key)
        finally:
            self._sockets.discard(ws)
            await ws.close()
        return ws

    async def request_job(self, job: agent.Job) -> agent.JobState | None:
        """Offer a job to the workers registered for (agent_name, namespace, type, deployment).

        Returns the job's state once a worker accepted it (JS_RUNNING) or answered
        terminate=true (JS_SUCCESS); None when the job was dropped (no worker, all refused,
        all full, timeout), exactly as the real server drops it: nothing is retried.
        """
        key: WorkerKey = (job.agent_name, job.namespace, job.type, job.deployment)
        where = (
            f"jobID={job.id} agentName={job.agent_name!r} "
            f"jobType={agent.JobType.Name(job.type)} room={job.room.name!r}"
        )
        if not any(w.key == key for w in self._workers.values()):
            log.info("not dispatching agent job since no worker is available %s", where)
            return None
        if self._affinity(key) <= 0:
            log.info(
                "failed to send job request error=%r %s",
                "no servers available (received 1 responses)",
                where,
            )
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.availability_timeout_s
        if self._faults.workers_never_answer:
            self._faults.count("workers_never_answer")
            await asyncio.sleep(self.availability_timeout_s)
            log.info("failed to send job request error=%r %s", "request timed out", where)
            return None

        attempted: set[Worker] = set()
        while True:
            worker, why = self._select(key, attempted)
            if worker is None:
                log.warning("no worker available to handle job %s error=%r", where, why)
                log.info("failed to send job request error=%r %s", why, where)
                return None
            attempted.add(worker)
            try:
                state = await worker.assign_job(job, deadline - loop.time())
            except AssignError as exc:
                log.warning(
                    "failed to assign job to worker %s workerID=%s error=%r retry=%s",
                    where,
                    worker.id,
                    str(exc),
                    exc.retry,
                )
                if exc.retry:
                    continue
                log.info("failed to send job request error=%r %s", str(exc), where)
                return None
            if state.status == agent.JS_RUNNING:
                self._job_to_worker[job.id] = worker
                self.job_log.assigned(job, state)
                log.info(
                    "assigned job to worker %s workerID=%s apiKey=%s",
                    where,
                    worker.id,
                    worker.api_key,
                )
            return state

    async def terminate_job(
        self, job_id: str, reason: TerminationReason, *, end_reason: str | None = None
    ) -> agent.JobState | None:
        """Send JobTermination to the job's worker; the job's state after it, None if unknown.

        `end_reason` is what the job log records when it is more precise than `reason`
        (job_log.ROOM_CLOSED).
        """
        worker = self._job_to_worker.pop(job_id, None)
        state = None
        if worker is not None:
            left = reason is TerminationReason.AGENT_LEFT_ROOM
            state = await worker.terminate_job(job_id, agent_left_room=left)
        if state is not None:
            self.job_log.ended(job_id, state, end_reason or _END_REASONS[reason])
        else:
            log.info("failed to send job request error=%r jobID=%s", "no running job", job_id)
        return state

    def snapshot(self) -> list[dict[str, object]]:
        """JSON-able view of every connected worker and its running jobs (tests, /_sim/state)."""
        return [worker.snapshot() for worker in self._workers.values()]

    def worker_of(self, job_id: str) -> str | None:
        """The id of the worker running `job_id`, None when no worker runs it."""
        worker = self._job_to_worker.get(job_id)
        return worker.id if worker is not None else None

    async def aclose(self) -> None:
        """Close every worker connection."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(ws.close(code=1001) for ws in list(self._sockets)), return_exceptions=True
        )

    def _affinity(self, key: WorkerKey) -> float:
        return sum(
            max(0.0, self.target_load - w.load)
            for w in self._workers.values()
            if w.key == key and w.status == agent.WS_AVAILABLE
        )

    def _select(self, key: WorkerKey, attempted: set[Worker]) -> tuple[Worker | None, str]:
        """selectWorkerWeightedByLoad: random among untried available workers, weight 1 - load."""
        registered = [w for w in self._workers.values() if w.key == key]
        if not registered:
            return None, "no workers available"
        weighted = [
            (w, max(0.0, 1.0 - w.load))
            for w in registered
            if w not in attempted and w.status == agent.WS_AVAILABLE
        ]
        total = sum(weight for _, weight in weighted)
        if total <= 0:
            return None, "no workers with sufficient capacity"
        current = self._faults.rng.random() * total
        for worker, weight in weighted:
            current -= weight
            if current <= 0:
                return worker, ""
        return weighted[-1][0], ""

    async def _serve(self, wire: Wire, api_key: str) -> None:
        worker = await self._handshake(wire, api_key)
        if worker is None:
            return
        self._workers[worker.id] = worker
        log.info(
            "worker registered namespace=%r jobType=%s agentName=%r workerID=%s",
            worker.namespace,
            agent.JobType.Name(worker.job_type),
            worker.agent_name,
            worker.id,
        )
        try:
            while await self._dispatch(worker):
                pass
        finally:
            # Like deregisterWorker: the worker's jobs are forgotten, never terminated or moved.
            self._workers.pop(worker.id, None)
            for job_id in worker.running_jobs:
                self._job_to_worker.pop(job_id, None)
            self.job_log.worker_disconnected(list(worker.running_jobs))
            worker.close()
            log.info(
                "closing worker workerID=%s jobType=%s agentName=%r",
                worker.id,
                agent.JobType.Name(worker.job_type),
                worker.agent_name,
            )

    async def _handshake(self, wire: Wire, api_key: str) -> Worker | None:
        """HandshakeAgentWorker: only register and ping are accepted until registered, in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.register_timeout_s
        while True:
            try:
                msg = await wire.receive(max(0.0, deadline - loop.time()))
                if msg is None:
                    return None
                which = msg.WhichOneof("message")
                if which == "ping":
                    await wire.pong(msg.ping)
                    continue
                if which != "register":
                    raise ProtocolError(f"unimplemented worker signal before register: {which}")
                return await self._register(wire, api_key, msg.register)
            except TimeoutError:
                log.warning("worker did not register within %.1fs", self.register_timeout_s)
                return None
            except (ProtocolError, ConnectionError) as exc:
                log.warning("unable to handle worker signal error=%r", str(exc))
                return None

    async def _register(self, wire: Wire, api_key: str, req: agent.RegisterWorkerRequest) -> Worker:
        if req.type not in agent.JobType.values():
            raise ProtocolError("unknown job type")
        validate_deployment(req.deployment)
        permissions = (
            req.allowed_permissions
            if req.HasField("allowed_permissions")
            else default_permissions()
        )
        worker = Worker(
            id=ids.new_id(ids.WORKER),
            wire=wire,
            api_key=api_key,
            api_secret=self._keys[api_key],
            agent_name=req.agent_name,
            namespace=req.namespace,
            job_type=req.type,
            deployment=req.deployment,
            version=req.version,
            permissions=permissions,
        )
        response = agent.RegisterWorkerResponse(worker_id=worker.id, server_info=self.server_info)
        await wire.send(agent.ServerMessage(register=response))
        return worker

    async def _dispatch(self, worker: Worker) -> bool:
        """Handle one message of a registered worker; False when the connection must close."""
        try:
            msg = await worker.wire.receive()
            if msg is None:
                return False
            which = msg.WhichOneof("message")
            if which == "availability":
                worker.handle_availability(msg.availability)
            elif which == "update_job":
                state = worker.update_job_status(msg.update_job)
                if state is None:
                    log.debug("received job update for unknown job jobID=%s", msg.update_job.job_id)
                elif state.status in (agent.JS_SUCCESS, agent.JS_FAILED):
                    self._job_to_worker.pop(msg.update_job.job_id, None)
                    self.job_log.ended(
                        msg.update_job.job_id, state, agent.JobStatus.Name(state.status)
                    )
            elif which == "update_worker":
                worker.handle_update_worker(msg.update_worker)
            elif which == "ping":
                await worker.wire.pong(msg.ping)
            elif which == "simulate_job":
                self._spawn(self._simulate(worker, msg.simulate_job))
            elif which == "migrate_job":
                pass  # a no-op in the OSS server
            else:
                raise ProtocolError(f"unexpected worker signal: {which}")
        except (ProtocolError, ConnectionError) as exc:
            log.warning("unable to handle worker signal workerID=%s error=%r", worker.id, str(exc))
            return False
        return True

    async def _simulate(self, worker: Worker, req: agent.SimulateJobRequest) -> None:
        """worker.go HandleSimulateJob: a made-up job offered to this worker only."""
        job = agent.Job(
            id=ids.new_id(ids.JOB),
            type=agent.JT_PUBLISHER if req.HasField("participant") else agent.JT_ROOM,
            room=req.room,
            namespace=worker.namespace,
            agent_name=worker.agent_name,
        )
        if req.HasField("participant"):
            job.participant.CopyFrom(req.participant)
        try:
            state = await worker.assign_job(job, ASSIGN_JOB_TIMEOUT_S)
        except AssignError as exc:
            log.error("unable to simulate job jobID=%s error=%r", job.id, str(exc))
            return
        if state.status == agent.JS_RUNNING:
            self.job_log.assigned(job, state)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _is_websocket_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    upgrade = {t.strip().lower() for t in request.headers.get("Upgrade", "").split(",")}
    return "upgrade" in connection and "websocket" in upgrade
