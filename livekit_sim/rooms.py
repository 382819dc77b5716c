"""Rooms, agent dispatches and simulated participants, with livekit-server's semantics.

What this module promises (pkg/rtc/room.go, pkg/service/roommanager.go):
- a room created without agents gets one implicit dispatch with agent_name ""; a room created
  with agents gets only those; CreateRoom on a live room changes nothing;
- every dispatch launches one JT_ROOM job request, and one JT_PARTICIPANT request per non-agent
  participant present or joining, each in the background; an assigned job is appended to its
  dispatch's `state.jobs` and never updated afterwards, except by DeleteDispatch; a dropped job
  is never retried; `Faults.unoffered_rate` of the dispatches CreateDispatch makes have their
  JT_ROOM job dropped before any worker is asked, as when none is available;
- rooms close after `empty_timeout` (nobody non-agent ever joined) or `departure_timeout`
  (after the last departure), checked periodically, or on DeleteRoom; closing a room
  terminates its jobs with AGENT_LEFT_ROOM, and so does an agent participant leaving;
- a participant is one record whoever drives it (the control API or a real SDK over `/rtc`):
  `participant_joined` fires when it becomes active, `participant_left` when an active one
  leaves, `participant_connection_aborted` when one that never became active does; every
  change reaches the `RoomListener`s (the media side fans them out as ParticipantUpdates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from livekit.protocol import agent, agent_dispatch, models, room

from livekit_sim import ids, job_log
from livekit_sim.faults import Faults
from livekit_sim.room_state import (
    PARTICIPANT_KINDS,
    EventSink,
    ParticipantNotFoundError,
    RoomFullError,
    RoomListener,
    SimRoom,
    is_dependent,
)
from livekit_sim.workers import TerminationReason, WorkerPool

__all__ = [
    "PARTICIPANT_KINDS",
    "ParticipantNotFoundError",
    "RoomFullError",
    "RoomListener",
    "RoomRegistry",
    "SimRoom",
    "is_dependent",
]

log = logging.getLogger(__name__)


class RoomRegistry:
    """Every live room of the sim, and the job requests their dispatches launch."""

    def __init__(
        self,
        workers: WorkerPool,
        *,
        empty_timeout_s: float,
        departure_timeout_s: float,
        peer_connection_timeout_s: float = 0.0,
        on_event: EventSink | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.rooms: dict[str, SimRoom] = {}
        self.rooms_created = 0
        self.rooms_closed = 0
        self.jobs_requested = 0
        self.jobs_assigned = 0
        self._workers = workers
        self._empty_timeout_s = empty_timeout_s
        self._departure_timeout_s = departure_timeout_s
        self.peer_connection_timeout_s = peer_connection_timeout_s
        self._on_event = on_event
        self._faults = faults or Faults()
        self._tasks: set[asyncio.Task[None]] = set()
        self.listeners: list[RoomListener] = []

    # -- rooms -----------------------------------------------------------------------------

    def get_or_create(self, req: room.CreateRoomRequest) -> SimRoom:
        """The live room named `req.name`, created from `req` if it is not running."""
        existing = self.rooms.get(req.name)
        if existing is not None:
            return existing
        now = time.time()
        empty_s = float(req.empty_timeout) if req.empty_timeout else self._empty_timeout_s
        departure_s = (
            float(req.departure_timeout) if req.departure_timeout else self._departure_timeout_s
        )
        proto = models.Room(
            sid=ids.new_id(ids.ROOM),
            name=req.name,
            empty_timeout=math.ceil(empty_s),
            departure_timeout=math.ceil(departure_s),
            max_participants=req.max_participants,
            creation_time=int(now),
            creation_time_ms=int(now * 1000),
            metadata=req.metadata,
        )
        sim_room = SimRoom(
            proto=proto,
            empty_timeout_s=empty_s,
            departure_timeout_s=departure_s,
            created_at_s=now,
        )
        self.rooms[req.name] = sim_room
        self.rooms_created += 1
        self._emit("room_started", sim_room, None)
        initial: Iterable[agent_dispatch.RoomAgentDispatch] = req.agents or [
            agent_dispatch.RoomAgentDispatch()
        ]
        for rad in initial:
            self._add_dispatch(
                sim_room,
                agent_dispatch.AgentDispatch(
                    agent_name=rad.agent_name,
                    metadata=rad.metadata,
                    restart_policy=rad.restart_policy,
                    deployment=rad.deployment,
                    attributes=rad.attributes,
                ),
            )
        return sim_room

    def close(
        self, name: str, reason: models.DisconnectReason = models.DisconnectReason.ROOM_DELETED
    ) -> bool:
        """Close a live room now: participants leave (clients are told `reason`: ROOM_DELETED
        for DeleteRoom, ROOM_CLOSED for a timeout), jobs end, room_finished fires.

        Returns False when no room of that name is running.
        """
        sim_room = self.rooms.pop(name, None)
        if sim_room is None:
            return False
        sim_room.closed = True
        sim_room.close_reason = reason
        self.rooms_closed += 1
        for identity in list(sim_room.participants):
            self._remove_participant(sim_room, identity)
        for job_id in sim_room.job_ids:
            self._spawn(
                self._terminate(job_id, TerminationReason.AGENT_LEFT_ROOM, job_log.ROOM_CLOSED)
            )
        for listener in self.listeners:
            listener.room_closed(sim_room)
        self._emit("room_finished", sim_room, None)
        return True

    def close_idle(self, now_s: float | None = None) -> list[str]:
        """Close every room past its timeout; the names of the rooms closed."""
        now = time.time() if now_s is None else now_s
        idle = [name for name, r in self.rooms.items() if r.idle_for(now)]
        for name in idle:
            log.info("closing idle room %s", name)
            self.close(name, models.DisconnectReason.ROOM_CLOSED)
        return idle

    async def run_reaper(self, interval_s: float) -> None:
        """Check room timeouts every `interval_s` until cancelled (1 s on the real server)."""
        while True:
            await asyncio.sleep(interval_s)
            self.close_idle()

    # -- dispatches ------------------------------------------------------------------------

    def create_dispatch(
        self, req: agent_dispatch.CreateAgentDispatchRequest
    ) -> agent_dispatch.AgentDispatch:
        """CreateDispatch: auto-create the room, add a new dispatch (never deduplicated).

        With `Faults.unoffered_rate`, its JT_ROOM job request may be dropped unoffered.
        """
        sim_room = self.get_or_create(room.CreateRoomRequest(name=req.room))
        unoffered = self._faults.roll(self._faults.unoffered_rate)
        if unoffered:
            self._faults.count("unoffered")
        return self._add_dispatch(
            sim_room,
            agent_dispatch.AgentDispatch(
                agent_name=req.agent_name,
                metadata=req.metadata,
                restart_policy=req.restart_policy,
                deployment=req.deployment,
                attributes=req.attributes,
            ),
            offer_room_job=not unoffered,
        )

    def delete_dispatch(self, sim_room: SimRoom, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        """Remove a dispatch and terminate its jobs in the background; KeyError if unknown.

        The returned dispatch is the live object: its job states change once the
        terminations complete, as on the real server.
        """
        dispatch = sim_room.dispatches.pop(dispatch_id)
        pending = sim_room.pending.pop(dispatch_id, set())
        self._spawn(self._terminate_dispatch(dispatch, pending))
        return dispatch

    def _add_dispatch(
        self,
        sim_room: SimRoom,
        dispatch: agent_dispatch.AgentDispatch,
        *,
        offer_room_job: bool = True,
    ) -> agent_dispatch.AgentDispatch:
        dispatch.id = ids.new_id(ids.DISPATCH)
        dispatch.room = sim_room.name
        dispatch.state.created_at = time.time_ns()
        sim_room.dispatches[dispatch.id] = dispatch
        self._launch(sim_room, dispatch, agent.JobType.JT_ROOM, None, offered=offer_room_job)
        for participant in sim_room.participants.values():
            if is_dependent(participant):
                continue
            if participant.is_publisher:  # as the real server's AddAgentDispatch does
                self._launch(sim_room, dispatch, agent.JobType.JT_PUBLISHER, participant)
            self._launch(sim_room, dispatch, agent.JobType.JT_PARTICIPANT, participant)
        return dispatch

    # -- participants ----------------------------------------------------------------------

    def join(
        self,
        room_name: str,
        identity: str,
        *,
        name: str = "",
        kind: str = "standard",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        active: bool = True,
        extra: models.ParticipantInfo | None = None,
    ) -> models.ParticipantInfo:
        """A participant joins (creating the room, as a join does with auto_create).

        A participant rejoining with the same identity replaces the previous one. `active`
        False (a signalling join whose media is not connected yet) defers participant_joined
        to `activate()`. `extra`'s fields (permission, client protocol, capabilities) are
        copied into the participant's info.
        """
        sim_room = self.get_or_create(room.CreateRoomRequest(name=room_name))
        if identity in sim_room.participants:
            self._remove_participant(sim_room, identity)
        max_participants = sim_room.proto.max_participants
        if max_participants and len(sim_room.participants) >= max_participants:
            raise RoomFullError(f"room {room_name!r} is full ({max_participants} participants)")
        now = time.time()
        info = models.ParticipantInfo()
        if extra is not None:
            info.CopyFrom(extra)
        info.MergeFrom(
            models.ParticipantInfo(
                sid=ids.new_id(ids.PARTICIPANT),
                identity=identity,
                name=name,
                kind=PARTICIPANT_KINDS[kind],
                metadata=metadata,
                attributes=dict(attributes or {}),
                state=(
                    models.ParticipantInfo.State.ACTIVE
                    if active
                    else models.ParticipantInfo.State.JOINED
                ),
                joined_at=int(now),
                joined_at_ms=int(now * 1000),
            )
        )
        sim_room.participants[identity] = info
        if not is_dependent(info):
            if sim_room.first_joined_at_s is None:
                sim_room.first_joined_at_s = now
            for dispatch in list(sim_room.dispatches.values()):
                self._launch(sim_room, dispatch, agent.JobType.JT_PARTICIPANT, info)
        for listener in self.listeners:
            listener.participant_joined(sim_room, info)
        if active:
            self._emit("participant_joined", sim_room, info)
        return info

    def activate(self, room_name: str, identity: str) -> None:
        """The participant's media connected: it becomes ACTIVE and participant_joined fires."""
        sim_room = self.rooms.get(room_name)
        info = sim_room.participants.get(identity) if sim_room else None
        if sim_room is None or info is None or info.state != models.ParticipantInfo.JOINED:
            return
        info.state = models.ParticipantInfo.State.ACTIVE
        self.updated(sim_room, info)
        self._emit("participant_joined", sim_room, info)

    def updated(self, sim_room: SimRoom, info: models.ParticipantInfo) -> None:
        """`info` (a live record of `sim_room`) changed: bump its version, tell the listeners."""
        info.version += 1
        for listener in self.listeners:
            listener.participant_updated(sim_room, info)

    def track_published(self, sim_room: SimRoom, info: models.ParticipantInfo) -> None:
        """`info` got a new track in `info.tracks`; its first one launches JT_PUBLISHER jobs."""
        first = not info.is_publisher
        info.is_publisher = True
        self.updated(sim_room, info)
        if first and not is_dependent(info):
            for dispatch in list(sim_room.dispatches.values()):
                self._launch(sim_room, dispatch, agent.JobType.JT_PUBLISHER, info)

    def leave(self, room_name: str, identity: str) -> models.ParticipantInfo:
        """A participant leaves; ParticipantNotFoundError if it is not there."""
        sim_room = self.rooms.get(room_name)
        if sim_room is None or identity not in sim_room.participants:
            raise ParticipantNotFoundError(f"participant {identity!r} not in room {room_name!r}")
        return self._remove_participant(sim_room, identity)

    def vanish(self, room_name: str, identity: str, sid: str) -> None:
        """A participant's signalling closed without a leave after its media had connected
        (its process was killed): as on the real server, it stays listed, a ghost, until its
        peer connection times out, then leaves (unless it came back meanwhile)."""

        async def time_out() -> None:
            await asyncio.sleep(self.peer_connection_timeout_s)
            sim_room = self.rooms.get(room_name)
            current = sim_room.participants.get(identity) if sim_room else None
            if sim_room is not None and current is not None and current.sid == sid:
                self._remove_participant(sim_room, identity)

        self._spawn(time_out())

    def _remove_participant(self, sim_room: SimRoom, identity: str) -> models.ParticipantInfo:
        info = sim_room.participants.pop(identity)
        was_active = info.state == models.ParticipantInfo.State.ACTIVE
        info.state = models.ParticipantInfo.State.DISCONNECTED
        sim_room.last_left_at_s = time.time()
        job_id = sim_room.agent_jobs.pop(identity, None)
        if job_id is not None and not sim_room.closed:
            # RemoveParticipant: an agent participant leaving ends its job (AGENT_LEFT_ROOM).
            sim_room.job_ids.remove(job_id)
            self._spawn(self._terminate(job_id, TerminationReason.AGENT_LEFT_ROOM))
        for listener in self.listeners:
            listener.participant_left(sim_room, info)
        self._emit(
            "participant_left" if was_active else "participant_connection_aborted", sim_room, info
        )
        return info

    # -- jobs ------------------------------------------------------------------------------

    def _launch(
        self,
        sim_room: SimRoom,
        dispatch: agent_dispatch.AgentDispatch,
        job_type: agent.JobType,
        participant: models.ParticipantInfo | None,
        *,
        offered: bool = True,
    ) -> None:
        """Request a job of `dispatch` in the background; `offered` False drops it at once."""
        job = agent.Job(
            id=ids.new_id(ids.JOB),
            dispatch_id=dispatch.id,
            type=job_type,
            room=sim_room.snapshot(),
            agent_name=dispatch.agent_name,
            metadata=dispatch.metadata,
            deployment=dispatch.deployment,
            attributes=dispatch.attributes,
        )
        if participant is not None:
            job.participant.CopyFrom(participant)
        self.jobs_requested += 1
        if not offered:
            log.info(
                "not dispatching agent job since no worker is available (injected fault) "
                "jobID=%s agentName=%r room=%r",
                job.id,
                job.agent_name,
                sim_room.name,
            )
            return
        task = self._spawn(self._request_job(sim_room, dispatch, job))
        pending = sim_room.pending.setdefault(dispatch.id, set())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def _request_job(
        self, sim_room: SimRoom, dispatch: agent_dispatch.AgentDispatch, job: agent.Job
    ) -> None:
        try:
            state = await self._workers.request_job(job)
        except NotImplementedError:
            return
        except Exception as exc:
            log.warning("job request %s failed: %s", job.id, type(exc).__name__)
            return
        if state is None:
            return
        job.state.CopyFrom(state)
        dispatch.state.jobs.append(job)
        self.jobs_assigned += 1
        if sim_room.closed:
            await self._terminate(job.id, TerminationReason.AGENT_LEFT_ROOM, job_log.ROOM_CLOSED)
        else:
            sim_room.job_ids.append(job.id)
            if state.participant_identity:
                sim_room.agent_jobs[state.participant_identity] = job.id

    async def _terminate_dispatch(
        self, dispatch: agent_dispatch.AgentDispatch, pending: set[asyncio.Task[None]]
    ) -> None:
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for job in dispatch.state.jobs:
            state = await self._terminate(job.id, TerminationReason.TERMINATION_REQUESTED)
            if state is not None:
                job.state.CopyFrom(state)

    async def _terminate(
        self, job_id: str, reason: TerminationReason, end_reason: str | None = None
    ) -> agent.JobState | None:
        try:
            return await self._workers.terminate_job(job_id, reason, end_reason=end_reason)
        except NotImplementedError:
            return None
        except Exception as exc:
            log.warning("terminating job %s failed: %s", job_id, type(exc).__name__)
            return None

    # -- plumbing --------------------------------------------------------------------------

    def _emit(
        self, event: str, sim_room: SimRoom, participant: models.ParticipantInfo | None
    ) -> None:
        if self._on_event is not None:
            self._on_event(event, sim_room.snapshot(), participant)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait until every background job request and termination has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel background job requests and terminations."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
