"""A protocol-level agent worker for the sim's tests: it registers on `/agent` with an
agent_name, accepts every job offered (identity "agent-<job id>"), and ends a job only when the
test says so, so that a test controls how each job ends."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from livekit import api
from livekit.protocol import agent, models


class ScriptedWorker:
    """`offered` and `assigned` list the jobs seen; `terminations` the JobTerminations got."""

    def __init__(self, ws_url: str, api_key: str, api_secret: str, agent_name: str) -> None:
        self.url = ws_url + "/agent"
        grants = api.VideoGrants(agent=True)
        self.token = api.AccessToken(api_key, api_secret).with_grants(grants).to_jwt()
        self.agent_name = agent_name
        self.id = ""
        self.offered: list[agent.Job] = []
        self.assigned: list[agent.Job] = []
        self.terminations: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> ScriptedWorker:
        """Connect and register; returns once the server answered the registration."""
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        await self._send(
            agent.WorkerMessage(
                register=agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name=self.agent_name)
            )
        )
        reply = agent.ServerMessage.FromString((await self._ws.receive(timeout=5)).data)
        assert reply.WhichOneof("message") == "register"
        self.id = reply.register.worker_id
        self._task = asyncio.create_task(self._serve())
        return self

    async def finish(self, job_id: str, status: agent.JobStatus.ValueType, error: str = "") -> None:
        """Report the job ended, as a worker's UpdateJobStatus does."""
        update = agent.UpdateJobStatus(job_id=job_id, status=status, error=error)
        await self._send(agent.WorkerMessage(update_job=update))

    async def simulate(self, room_name: str) -> None:
        """Ask the server for a made-up JT_ROOM job in `room_name` (SimulateJobRequest)."""
        request = agent.SimulateJobRequest(type=agent.JT_ROOM, room=models.Room(name=room_name))
        await self._send(agent.WorkerMessage(simulate_job=request))

    async def aclose(self) -> None:
        """Disconnect (the server forgets this worker's jobs)."""
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _send(self, message: agent.WorkerMessage) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(message.SerializeToString())

    async def _serve(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            server = agent.ServerMessage.FromString(msg.data)
            kind = server.WhichOneof("message")
            if kind == "availability":
                job = server.availability.job
                self.offered.append(job)
                answer = agent.AvailabilityResponse(
                    job_id=job.id, available=True, participant_identity=f"agent-{job.id}"
                )
                await self._send(agent.WorkerMessage(availability=answer))
            elif kind == "assignment":
                self.assigned.append(server.assignment.job)
            elif kind == "termination":
                self.terminations.append(server.termination.job_id)
