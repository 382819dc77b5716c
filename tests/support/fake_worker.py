"""A protocol-level agent worker for orchestrator tests: it registers on the sim's `/agent`
websocket with an agent_name and accepts every job offered, like a real worker would, without
the weight of livekit-agents processes (the agent's own tests use the real worker)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from livekit import api
from livekit.protocol import agent


class AcceptingWorker:
    def __init__(self, url: str, api_key: str, api_secret: str, agent_name: str) -> None:
        self.url = url.replace("http://", "ws://") + "/agent"
        self.token = (
            api.AccessToken(api_key, api_secret).with_grants(api.VideoGrants(agent=True)).to_jwt()
        )
        self.agent_name = agent_name
        self.jobs: list[agent.Job] = []
        self.terminated: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> AcceptingWorker:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        await self._send(
            register=agent.RegisterWorkerRequest(type=agent.JT_ROOM, agent_name=self.agent_name)
        )
        reply = agent.ServerMessage.FromString((await self._ws.receive(timeout=5)).data)
        assert reply.WhichOneof("message") == "register"
        self._task = asyncio.create_task(self._serve())
        return self

    async def _send(self, **message: object) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(agent.WorkerMessage(**message).SerializeToString())  # type: ignore[arg-type]

    async def _serve(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            server = agent.ServerMessage.FromString(msg.data)
            kind = server.WhichOneof("message")
            if kind == "availability":
                job = server.availability.job
                await self._send(
                    availability=agent.AvailabilityResponse(
                        job_id=job.id, available=True, participant_identity=f"agent-{job.id}"
                    )
                )
            elif kind == "assignment":
                self.jobs.append(server.assignment.job)
                await self._send(
                    update_job=agent.UpdateJobStatus(
                        job_id=server.assignment.job.id, status=agent.JS_RUNNING
                    )
                )
            elif kind == "termination":
                self.terminated.append(server.termination.job_id)
                await self._send(
                    update_job=agent.UpdateJobStatus(
                        job_id=server.termination.job_id, status=agent.JS_SUCCESS
                    )
                )

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
