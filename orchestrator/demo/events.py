"""The demo's stream of sample events, and the one-line summary of what became of them.

The opening shows every path once: ordinary dispatches, the same event sent twice (one job),
a second event for a room that already has its agent (`deduplicated`), an invalid event
(rejected, dead letter), a caller who joins and hangs up (the session ends by itself), and
an event for an agent_name no worker serves (fails after the assignment retries, replayable
dead letter). Then a new event every few seconds, with now and then a duplicate.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from arq import ArqRedis

from orchestrator.store import queries
from orchestrator.store.record import SessionStatus
from tasks import keys
from tasks.models import DispatchRequest
from tasks.producer import enqueue_dispatch, enqueue_job
from tasks.serialization import deserialize

PEOPLE = [
    ("u-101", "Ada", "+15550100"),
    ("u-102", "Grace", "+15550101"),
    ("u-103", "Alan", "+15550102"),
    ("u-104", "Edsger", "+15550103"),
    ("u-105", "Barbara", "+15550104"),
    ("u-106", "Ken", "+15550105"),
]
TOPICS = ["billing", "delivery", "password reset", "upgrade", "cancellation"]
UNSERVED_AGENT = "billing-agent"
"""No demo worker registers this name: its event shows the 'no agent worker accepted' path."""
CALLER_STAYS_S = 6.0


@dataclass(frozen=True)
class Sent:
    """One event the demo put on the queue (or tried to)."""

    event_id: str
    room: str
    job_id: str
    kind: str  # what it demonstrates: "new", "same-event", "same-room", "invalid", ...


@dataclass
class Scenario:
    redis: ArqRedis
    run_id: str
    agent_name: str
    sim_url: str | None
    """The sim's base URL; its control API joins and removes the simulated caller."""
    say: Callable[[str], None]
    sent: list[Sent] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def room(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def _payload(self, **demo: Any) -> dict[str, Any]:
        user_id, user_name, phone = random.choice(PEOPLE)
        return {
            "user_id": user_id,
            "user_name": user_name,
            "user_phone": phone,
            "topic": random.choice(TOPICS),
            "demo": demo,
        }

    async def send(
        self, room: str, kind: str, *, event_id: str | None = None, **fields: Any
    ) -> Sent:
        number = next(self._numbers)
        event_id = event_id or f"{self.run_id}-evt-{number}"
        metadata = fields.pop("metadata", None) or self._payload(talk_s=random.uniform(6, 14))
        request = DispatchRequest(event_id=event_id, room=room, metadata=metadata, **fields)
        job = await enqueue_dispatch(self.redis, request)
        sent = Sent(event_id, room, job.job_id, kind)
        self.sent.append(sent)
        return sent

    async def handled(self, sent: Sent, timeout_s: float = 10.0) -> str | None:
        """The event's outcome once a worker has handled it (None if none came in time)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            outcome: bytes | None = await self.redis.hget(  # type: ignore[misc]
                keys.event_key(sent.event_id), "outcome"
            )
            if outcome is not None or asyncio.get_running_loop().time() > deadline:
                return outcome.decode() if outcome is not None else None
            await asyncio.sleep(0.05)

    async def opening(self) -> None:
        opened = [await self.send(self.room(f"support-{i}"), "new") for i in range(1, 5)]
        first = opened[0]
        # Jobs run side by side: the second event for support-2 must come after the first
        # holds the room, or the two would race for it.
        await self.handled(opened[1])
        await self.send(first.room, "same-event", event_id=first.event_id)
        self.say(f"sent {first.event_id} twice: one job ({first.job_id})")
        await self.send(
            self.room("support-2"), "same-room", event_id=f"{self.run_id}-again-support-2"
        )
        self.say(f"a second event for {self.room('support-2')}: deduplicated, no second agent")
        await self._send_invalid()
        caller_room = self.room("callback-1")
        await self.send(
            caller_room,
            "caller",
            metadata=self._payload(wait_for_caller=True, caller_timeout_s=60),
        )
        if self.sim_url:
            self._spawn(self._caller_hangs_up(caller_room))
        await self.send(self.room("billing-1"), "unserved", agent_name=UNSERVED_AGENT)
        self.say(
            f"an event for agent_name={UNSERVED_AGENT!r}, which no worker serves: it will fail "
            "after the assignment retries"
        )

    async def _send_invalid(self) -> None:
        event_id = f"{self.run_id}-invalid-1"
        job_id = keys.dispatch_job_id(event_id)
        # Written past the typed helper on purpose: the worker rejects it, with its reasons.
        await enqueue_job(
            self.redis,
            keys.DISPATCH_AGENT,
            {"event_id": event_id, "room": "", "metadata": "not an object"},
            job_id=job_id,
        )
        self.sent.append(Sent(event_id, "", job_id, "invalid"))
        self.say(f"an invalid event ({event_id}: empty room, metadata not an object): rejected")

    async def next_event(self) -> None:
        """One step of the steady stream: mostly new rooms, sometimes a duplicate."""
        number = next(self._numbers)
        live, _ = await queries.live_sessions(self.redis)
        ours = [s for s in live if s.room.startswith(f"{self.run_id}-support")]
        if number % 4 == 0 and ours:
            await self.send(random.choice(ours).room, "same-room")
        elif number % 7 == 0 and self.sent:
            previous = next(s for s in reversed(self.sent) if s.kind == "new")
            await self.send(previous.room, "same-event", event_id=previous.event_id)
        else:
            await self.send(self.room(f"support-{number}"), "new")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _caller_hangs_up(self, room: str) -> None:
        assert self.sim_url is not None
        for _ in range(300):  # the agent must be there first, or nobody hears the caller
            session = await queries.newest_in_room(self.redis, room)
            if session and session.status == SessionStatus.ASSIGNED:
                break
            await asyncio.sleep(0.1)
        identity = f"caller-{self.run_id}"
        base = f"{self.sim_url}/_sim/rooms/{room}/participants"
        async with aiohttp.ClientSession() as http:
            async with http.post(base, json={"identity": identity, "kind": "sip"}) as answer:
                answer.raise_for_status()
            self.say(f"a caller joined {room}")
            await asyncio.sleep(CALLER_STAYS_S)
            async with http.delete(f"{base}/{identity}") as answer:
                answer.raise_for_status()
            self.say(f"the caller hung up in {room}: its session ends by itself")

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Tally:
    """What became of the demo's events, read back from Redis."""

    outcomes: Counter[str] = field(default_factory=Counter)
    reports: Counter[str] = field(default_factory=Counter)
    live: int = 0
    dead_letters: int = 0
    queue: int = 0
    events: int = 0
    duplicates_at_enqueue: int = 0
    _last_report_id: str = "0-0"

    async def refresh(self, redis: ArqRedis, sent: list[Sent]) -> None:
        job_ids = list(dict.fromkeys(s.job_id for s in sent))
        self.events = len(sent)
        self.duplicates_at_enqueue = len(sent) - len(job_ids)
        raws = await redis.mget([keys.ARQ_RESULT_PREFIX + j for j in job_ids]) if job_ids else []
        outcomes: Counter[str] = Counter()
        for raw in raws:
            if raw is None:
                outcomes["pending"] += 1
                continue
            result = deserialize(raw).get("r")
            outcome = result.get("outcome") if isinstance(result, dict) else None
            outcomes[str(outcome or "error")] += 1
        self.outcomes = outcomes
        rows = await redis.xrange(keys.RESULTS_STREAM, min=f"({self._last_report_id}")
        for entry_id, fields in rows:
            self._last_report_id = entry_id.decode()
            self.reports[fields[b"status"].decode()] += 1
        self.live = int(await redis.zcard(keys.LIVE_SESSIONS))
        self.dead_letters = int(await redis.xlen(keys.DEAD_LETTER_STREAM))
        self.queue = await queries.queue_depth(redis)

    def line(self) -> str:
        o, r = self.outcomes, self.reports
        return (
            f"events {self.events} (same event twice: {self.duplicates_at_enqueue}) | "
            f"dispatched {o['dispatched']} deduplicated {o['deduplicated']} "
            f"rejected {o['rejected']} failed {o['failed']} pending {o['pending']} | "
            f"live sessions {self.live} | reports completed {r['completed']} "
            f"failed {r['failed']} lost {r['lost']} | dead letters {self.dead_letters} | "
            f"queue {self.queue}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "duplicates_at_enqueue": self.duplicates_at_enqueue,
            "outcomes": dict(self.outcomes),
            "reports": dict(self.reports),
            "live": self.live,
            "dead_letters": self.dead_letters,
            "queue": self.queue,
        }
