"""LiveKitSim: the aiohttp application that stands in for livekit-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from livekit.protocol import agent_dispatch, models

from livekit_sim.control import ControlAPI, proto_dict
from livekit_sim.faults import Faults
from livekit_sim.job_log import JobRecord
from livekit_sim.rooms import RoomRegistry, SimRoom
from livekit_sim.rtc import (
    AudioCapture,
    RtcHub,
    RtcSignalService,
    SimulatedParticipant,
    TextMessage,
    load_wav,
)
from livekit_sim.rtc.media import Samples
from livekit_sim.twirp import MAX_REQUEST_BODY_BYTES, CallRecord, TwirpService
from livekit_sim.webhooks import WebhookNotifier
from livekit_sim.workers import WorkerPool

log = logging.getLogger(__name__)

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
# livekit-server config defaults: room.empty_timeout, room.departure_timeout.
DEFAULT_EMPTY_TIMEOUT_S = 300.0
DEFAULT_DEPARTURE_TIMEOUT_S = 20.0
DEFAULT_PEER_CONNECTION_TIMEOUT_S = 15.0
"""How long a participant whose signalling closed without a leave, after its media had
connected, stays listed (its peer connection timing out). Our figure: the real server's comes
from its ICE disconnect and failure timeouts and the client's keepalive."""
# psrpc to a room nobody hosts: 3 attempts x 1 s before "no response from servers".
DEFAULT_MISSING_ROOM_DELAY_S = 3.0
ROOM_CHECK_INTERVAL_S = 1.0
STOP_GRACE_S = 1.0
"""How long stopping waits for requests in flight."""


class LiveKitSim:
    """A local LiveKit-compatible server: `async with LiveKitSim() as sim: sim.url ...`.

    Serves the Twirp RoomService / AgentDispatchService, the `/agent` worker websocket, `/rtc`
    signalling with WebRTC audio and data, and the `/_sim/` control API on one port; posts
    signed webhooks to `webhook_urls`.
    `empty_timeout_s` / `departure_timeout_s` are the defaults for rooms whose creation does
    not set them (fractions of a second allowed, for tests); `missing_room_delay_s` is how
    long List/DeleteDispatch on a room that is not running take before `unavailable`;
    `peer_connection_timeout_s` how long a participant that vanished without a leave (its
    process killed) after its media connected stays listed, as a ghost.
    `max_call_log` and `max_job_log` bound `calls` and `job_log`; `fault_seed` seeds
    `faults.rng` (None: a random seed).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEV_API_KEY,
        api_secret: str = DEV_API_SECRET,
        extra_keys: Mapping[str, str] | None = None,
        webhook_urls: Sequence[str] = (),
        webhook_api_key: str | None = None,
        empty_timeout_s: float = DEFAULT_EMPTY_TIMEOUT_S,
        departure_timeout_s: float = DEFAULT_DEPARTURE_TIMEOUT_S,
        peer_connection_timeout_s: float = DEFAULT_PEER_CONNECTION_TIMEOUT_S,
        missing_room_delay_s: float = DEFAULT_MISSING_ROOM_DELAY_S,
        room_check_interval_s: float = ROOM_CHECK_INTERVAL_S,
        max_call_log: int = 100_000,
        max_job_log: int = 100_000,
        fault_seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.api_secret = api_secret
        self.keys: dict[str, str] = {api_key: api_secret, **(extra_keys or {})}
        hook_key = webhook_api_key or api_key
        if webhook_urls and hook_key not in self.keys:
            raise ValueError("api_key is required to use webhooks: webhook_api_key not in keys")
        self.faults = Faults()
        self.faults.seed(fault_seed)
        self.workers = WorkerPool(self.keys, self.faults, max_job_log=max_job_log)
        self.webhooks = WebhookNotifier(webhook_urls, hook_key, self.keys[hook_key])
        self.room_registry = RoomRegistry(
            self.workers,
            empty_timeout_s=empty_timeout_s,
            departure_timeout_s=departure_timeout_s,
            peer_connection_timeout_s=peer_connection_timeout_s,
            on_event=self.webhooks.notify,
            faults=self.faults,
        )
        self.twirp = TwirpService(
            self.room_registry,
            self.keys,
            self.faults,
            missing_room_delay_s=missing_room_delay_s,
            max_call_log=max_call_log,
        )
        self.media = RtcHub(self.room_registry)
        self.rtc = RtcSignalService(self.media, self.keys, self.workers.server_info)
        self._room_check_interval_s = room_check_interval_s
        # Bodies over 10 MiB: aiohttp raises 413, answered as the real server's plain-text 413.
        self.app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES)
        self.app.router.add_get("/agent", self.workers.handle)
        self.rtc.add_routes(self.app)
        self.twirp.add_routes(self.app)
        ControlAPI(self).add_routes(self.app)
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # -- inspection ------------------------------------------------------------------------

    @property
    def calls(self) -> deque[CallRecord]:
        """Every Twirp call that reached the sim, oldest first (bounded by max_call_log)."""
        return self.twirp.calls

    def calls_to(self, method: str) -> list[CallRecord]:
        """Calls of one method, e.g. "AgentDispatchService/CreateDispatch"."""
        return [c for c in self.twirp.calls if c.method == method]

    @property
    def job_log(self) -> deque[JobRecord]:
        """Every job a worker accepted, oldest first (bounded by max_job_log): its dispatch,
        room, agent, metadata, worker and identity, when it was assigned, and when and how it
        ended (None while running) or its worker disconnected."""
        return self.workers.job_log.records

    def most_jobs_at_once(self, *, since_ns: int = 0, agent_name: str | None = None) -> int:
        """The most jobs (of `agent_name`, when given) that ran at the same time, among those
        assigned at or after `since_ns` (unix ns), by the job log; a job whose worker
        disconnected counts as running for ever, as the real server forgets it."""
        changes: list[tuple[int, int]] = []
        for job in self.workers.job_log.records:
            if job.assigned_at_ns < since_ns or agent_name not in (None, job.agent_name):
                continue
            changes.append((job.assigned_at_ns, 1))
            if job.ended_at_ns is not None:
                changes.append((job.ended_at_ns, -1))
        running = peak = 0
        for _, change in sorted(changes):  # at a tie, an end before a start
            running += change
            peak = max(peak, running)
        return peak

    def jobs_in(self, room: str) -> list[JobRecord]:
        """The job log's records of one room name, oldest first."""
        return [j for j in self.workers.job_log.records if j.room == room]

    @property
    def rooms(self) -> dict[str, SimRoom]:
        """Live rooms by name."""
        return self.room_registry.rooms

    def room(self, name: str) -> SimRoom | None:
        return self.room_registry.rooms.get(name)

    def dispatches(self, room: str) -> list[agent_dispatch.AgentDispatch]:
        """The room's dispatches as ListDispatch would return them ([] if not running)."""
        sim_room = self.room(room)
        return list(sim_room.dispatches.values()) if sim_room else []

    def participants(self, room: str) -> list[models.ParticipantInfo]:
        sim_room = self.room(room)
        return list(sim_room.participants.values()) if sim_room else []

    def counters(self) -> dict[str, int]:
        """Room, job and webhook counters, plus Twirp calls keyed "method code"."""
        registry, hooks = self.room_registry, self.webhooks
        return {
            "rooms_created": registry.rooms_created,
            "rooms_closed": registry.rooms_closed,
            "jobs_requested": registry.jobs_requested,
            "jobs_assigned": registry.jobs_assigned,
            "webhooks_delivered": hooks.delivered,
            "webhooks_failed": hooks.failed,
            "webhooks_dropped": hooks.dropped,
            **self.twirp.counts,
        }

    def state(self) -> dict[str, Any]:
        """JSON-able view of rooms (with dispatches and participants), workers, counters and
        the faults injected by kind."""
        try:
            workers: list[dict[str, object]] | None = self.workers.snapshot()
        except NotImplementedError:
            workers = None
        return {
            "rooms": [
                {
                    "room": proto_dict(r.snapshot()),
                    "dispatches": [proto_dict(d) for d in r.dispatches.values()],
                    "participants": [proto_dict(p) for p in r.participants.values()],
                }
                for r in self.rooms.values()
            ],
            "workers": workers,
            "counters": self.counters(),
            "faults_injected": dict(self.faults.injected),
        }

    # -- control ---------------------------------------------------------------------------

    async def join_participant(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        kind: str = "standard",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        audio: bool = False,
    ) -> models.ParticipantInfo:
        """A simulated participant joins `room` (created if not running).

        Non-agent participants trigger JT_PARTICIPANT job requests for every dispatch;
        participant_joined fires. With `audio`, it publishes a microphone at once (silent
        until `say`). Raises RoomFullError past max_participants.
        """
        info = self.room_registry.join(
            room, identity, name=name, kind=kind, metadata=metadata, attributes=attributes
        )
        participant = SimulatedParticipant(self.media, room, info)
        self.media.attach(room, participant)
        if audio:
            participant.publish_microphone()
        return info

    async def leave_participant(self, room: str, identity: str) -> models.ParticipantInfo:
        """The participant leaves; participant_left fires and the departure timeout starts.
        An SDK participant is told it was removed and disconnected."""
        return self.room_registry.leave(room, identity)

    def simulated(self, room: str, identity: str) -> SimulatedParticipant:
        """The simulated participant `identity` of `room`: to make it speak, send data or text,
        and read what it received. KeyError when there is no such simulated participant."""
        endpoint = self.media.endpoint(room, identity)
        if not isinstance(endpoint, SimulatedParticipant):
            raise KeyError(f"no simulated participant {identity!r} in room {room!r}")
        return endpoint

    async def say(self, room: str, identity: str, audio: Samples | str | Path) -> float:
        """Make a simulated participant speak a clip (48 kHz mono samples, or a WAV file) from
        now; the seconds until it has finished."""
        samples = load_wav(audio) if isinstance(audio, str | Path) else audio
        return self.simulated(room, identity).say(samples)

    def texts(self, room: str, topic: str | None = None) -> list[TextMessage]:
        """Every text message sent in rooms of that name (by anyone), oldest first."""
        log = self.media.logs.get(room)
        messages = log.texts if log else []
        return [m for m in messages if topic is None or m.topic == topic]

    def captured_audio(self, room: str, identity: str) -> list[AudioCapture]:
        """The audio tracks `identity` (an SDK participant) published in rooms of that name."""
        log = self.media.logs.get(room)
        return [c for c in (log.captures if log else []) if c.participant == identity]

    async def close_room(self, room: str) -> bool:
        """Close a room now, as DeleteRoom does; False when it is not running."""
        return self.room_registry.close(room)

    async def settle(self) -> None:
        """Wait until background job requests, terminations and webhooks are done."""
        await self.room_registry.drain()
        await self.webhooks.join()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> LiveKitSim:
        await self.webhooks.start()
        # A sim stops at the end of a test or a run: a handler slowed on purpose (a fault's
        # delay) is cancelled after a moment rather than waited for (aiohttp waits 60 s).
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=STOP_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._reaper = asyncio.create_task(
            self.room_registry.run_reaper(self._room_check_interval_s)
        )
        return self

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await self.rtc.aclose()
        await self.room_registry.aclose()
        await self.media.aclose()
        await self.workers.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.webhooks.aclose()

    async def __aenter__(self) -> LiveKitSim:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
