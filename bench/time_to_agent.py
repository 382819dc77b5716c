"""Time-to-agent-in-room: from `enqueue_dispatch` to the agent connected to the room, p50 and
p99 over `--sessions` sessions, with prewarmed agent job processes.

- The whole run lives in a private network namespace (it re-executes itself through
  `tests.media.netns`): the agent really joins over WebRTC, which needs a non-loopback
  interface, and no traffic leaves the namespace.
- The sim runs in this process, so "connected" is timed where LiveKit itself knows it: the
  moment the agent's participant turns ACTIVE (a peer connection up), read by a listener on
  the sim's room model with the same clock as the enqueue. The orchestrator
  (`arq orchestrator.WorkerSettings`) and the agent (`python -m agent start`, the default
  handler, `AGENT_NUM_IDLE_PROCESSES` warm job processes) are subprocesses, as in production.
- Sessions run one after the other, each the default handler's whole story: once the agent is
  in, a simulated caller joins, is greeted and leaves, and the session ends; the next starts
  when its report is filed and a warm process is back. (Deleting the room the moment the
  agent's media connects would catch the SDK still inside `connect()`.)

    .venv/bin/python -m bench.time_to_agent [--sessions 50] [--idle-processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from arq import ArqRedis
from livekit.protocol import models

from bench.dispatch_latency import Procs, arq_command
from livekit_sim import LiveKitSim
from livekit_sim.rooms import SimRoom
from orchestrator.demo.local_redis import LocalRedis
from tasks import DispatchRequest, create_redis, enqueue_dispatch, recent_results, session_id_for
from tests.media.netns import ADDR_ENV, UNAVAILABLE_ENV

API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789-abcdefghijklmnop"
AGENT_NAME = "bench-agent"
GREETING_TOPIC = "lkd.greeting"  # the default handler's (agent settings' default)
ROOT = Path(__file__).resolve().parent.parent


class AgentArrivals:
    """A room listener: when each room's agent participant became ACTIVE (time.time_ns())."""

    def __init__(self) -> None:
        self.at_ns: dict[str, int] = {}

    def participant_updated(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        active = info.state == models.ParticipantInfo.State.ACTIVE
        if active and info.kind == models.ParticipantInfo.Kind.AGENT:
            self.at_ns.setdefault(room.name, time.time_ns())

    def participant_joined(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        self.participant_updated(room, info)

    def participant_left(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        pass

    def room_closed(self, room: SimRoom) -> None:
        pass


async def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.01)


def arrived(arrivals: AgentArrivals, room: str) -> Callable[[], bool]:
    return lambda: room in arrivals.at_ns


def greeted(sim: LiveKitSim, room: str) -> Callable[[], bool]:
    return lambda: bool(sim.texts(room, topic=GREETING_TOPIC))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(sessions: int, idle_processes: int, log_dir: Path) -> list[float]:
    procs = Procs(log_dir)
    arrivals = AgentArrivals()
    with LocalRedis() as redis_server:
        async with LiveKitSim(
            api_key=API_KEY, api_secret=API_SECRET, departure_timeout_s=1.0
        ) as sim:
            sim.room_registry.listeners.append(arrivals)
            env = agent_env(
                redis_server.url, sim, AGENT_NAME, AGENT_NUM_IDLE_PROCESSES=str(idle_processes)
            )
            queue = await create_redis(redis_server.url)
            try:
                procs.start("agent", [sys.executable, "-m", "agent", "start"], env)
                procs.start("orchestrator", [*arq_command(), "orchestrator.WorkerSettings"], env)
                await wait_until(
                    lambda: sim.workers.snapshot(), timeout_s=60, what="agent registration"
                )
                return await measure(sim, queue, arrivals, sessions)
            finally:
                procs.stop_all()
                await queue.aclose()


async def measure(
    sim: LiveKitSim, queue: ArqRedis, arrivals: AgentArrivals, sessions: int
) -> list[float]:
    latencies_ms: list[float] = []
    for i in range(sessions + 1):  # the first session warms everything up and is not counted
        room = f"bench-{uuid.uuid4().hex[:10]}"
        event_id = f"ev-{uuid.uuid4().hex[:12]}"
        sent_ns = time.time_ns()
        await enqueue_dispatch(queue, DispatchRequest(event_id=event_id, room=room, metadata={}))
        await wait_until(arrived(arrivals, room), timeout_s=60, what="agent in room")
        if i > 0:
            latencies_ms.append((arrivals.at_ns[room] - sent_ns) / 1e6)
        await sim.join_participant(room, "caller")
        await wait_until(greeted(sim, room), timeout_s=30, what="the agent's greeting")
        await sim.leave_participant(room, "caller")
        session_id = session_id_for(event_id)

        async def filed(sid: str = session_id) -> bool:
            return any(e.report.session_id == sid for e in await recent_results(queue, 200))

        await wait_until(filed, timeout_s=60, what="session report")
        # Let the worker replace the job process the session used, so the next one is warm.
        await asyncio.sleep(0.5)
    return latencies_ms


def agent_env(redis_url: str, sim: LiveKitSim, agent_name: str, **more: str) -> dict[str, str]:
    """The environment of a run's orchestrator and agent workers: this one's without any
    LKD_ or AGENT_ variable, pointed at `redis_url` and `sim`, with `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKD_", "AGENT_"))}
    env.update(
        REDIS_URL=redis_url,
        LIVEKIT_URL=sim.url,
        LIVEKIT_API_KEY=sim.api_key,
        LIVEKIT_API_SECRET=sim.api_secret,
        AGENT_NAME=agent_name,
        AGENT_COUNT_CPU_LOAD="false",
        AGENT_HEALTH_HOST="127.0.0.1",
        AGENT_HEALTH_PORT="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(more)
    return env


def in_netns(module: str, what: str) -> bool:
    """Whether this run is inside the private network namespace that WebRTC needs: if not,
    `module` runs again inside it (this process is replaced), or, where namespaces are
    unavailable, `what` is said not measured and False is returned."""
    if os.environ.get(UNAVAILABLE_ENV):
        print(f"{what}: not measured, {os.environ[UNAVAILABLE_ENV]}")
        return False
    if not os.environ.get(ADDR_ENV):
        os.chdir(ROOT)
        me = [sys.executable, "-m", module, *sys.argv[1:]]
        os.execvp(sys.executable, [sys.executable, "-m", "tests.media.netns", "--", *me])
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.time_to_agent", description=__doc__)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--idle-processes", type=int, default=2)
    args = parser.parse_args()
    if not in_netns("bench.time_to_agent", "time to agent"):
        return 0
    with tempfile.TemporaryDirectory(prefix="time-to-agent-") as tmp:
        latencies = asyncio.run(run(args.sessions, args.idle_processes, Path(tmp)))
    print(
        f"time to agent in room (enqueue -> agent participant ACTIVE), {len(latencies)} sessions, "
        f"{args.idle_processes} prewarmed job processes:\n"
        f"  p50 {percentile(latencies, 0.5):.0f} ms   p99 {percentile(latencies, 0.99):.0f} ms   "
        f"mean {statistics.fmean(latencies):.0f} ms   max {max(latencies):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
