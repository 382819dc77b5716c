"""Failover: from an agent's death to its replacement connected in the room, with a caller in
each room, for each kind of death: the agent's job process SIGKILLed (its worker lives and
says so at once), and a whole agent worker SIGKILLed with its job processes (its beat goes
silent; LKD_AGENT_WORKER_TIMEOUT_S, 10 s by default, tells).

- The run lives in a private network namespace (it re-executes itself through
  `tests.media.netns`): agents join over WebRTC.
- The sim runs in this process: "connected" is the moment the new agent's participant turns
  ACTIVE (its peer connection up), read from the sim's room model on the clock of the kill.
- Two agent workers (`python -m agent start`, the default handler, 2 prewarmed job
  processes each) and the orchestrator (`arq orchestrator.WorkerSettings`) are subprocesses
  with their default settings. A killed worker is started again before the next call.

    .venv/bin/python -m bench.failover [--job-kills 20] [--worker-kills 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from arq import ArqRedis
from livekit.protocol import models

from bench.dispatch_latency import Procs, arq_command
from bench.time_to_agent import agent_env, in_netns, percentile, wait_until
from livekit_sim import LiveKitSim
from livekit_sim.rooms import SimRoom
from orchestrator.demo.local_redis import LocalRedis
from tasks import DispatchRequest, create_redis, enqueue_dispatch, recent_results, session_id_for

API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789-abcdefghijklmnop"
AGENT_NAME = "failover-agent"
GREETING_TOPIC = "lkd.greeting"
ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 10.0  # LKD_AGENT_WORKER_TIMEOUT_S's default
CREATE = "AgentDispatchService/CreateDispatch"


@dataclass
class Arrivals:
    """A room listener: when each agent participant of each room became ACTIVE."""

    at_ns: dict[str, dict[str, int]] = field(default_factory=dict)

    def participant_updated(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        active = info.state == models.ParticipantInfo.State.ACTIVE
        if active and info.kind == models.ParticipantInfo.Kind.AGENT:
            self.at_ns.setdefault(room.name, {}).setdefault(info.identity, time.time_ns())

    def participant_joined(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        self.participant_updated(room, info)

    def participant_left(self, room: SimRoom, info: models.ParticipantInfo) -> None:
        pass

    def room_closed(self, room: SimRoom) -> None:
        pass

    def agents(self, room: str) -> int:
        return len(self.at_ns.get(room, {}))


class AgentWorker:
    """One agent worker process in its own process group (its job processes with it)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "start"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def started(self, session_id: str) -> dict[str, object] | None:
        """Its log line "session started" for `session_id`, if it ran it."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"session started"' in line and session_id in line:
                record: dict[str, object] = json.loads(line)
                return record
        return None


@dataclass
class Replaced:
    """One death's timings (ms from the kill)."""

    dispatched_ms: float
    """To LiveKit receiving the replacement's CreateDispatch: noticing and deciding."""
    connected_ms: float
    """To the new agent connected in the room."""


async def one_call(
    sim: LiveKitSim, arrivals: Arrivals, queue: ArqRedis, workers: list[AgentWorker], kill: str
) -> Replaced:
    """A call: the agent greets the caller, is killed (`job` or `worker`), and a new agent
    connects. The caller then leaves."""
    room = f"call-{uuid.uuid4().hex[:10]}"
    event_id = f"ev-{uuid.uuid4().hex[:12]}"
    await enqueue_dispatch(queue, DispatchRequest(event_id=event_id, room=room))
    await wait_until(lambda: arrivals.agents(room) == 1, 60, "the agent in the room")
    await sim.join_participant(room, "caller", audio=True)
    await wait_until(greeted(sim, room, 1), 30, "the agent's greeting")
    session_id = session_id_for(event_id)
    runs = next(w for w in workers if w.started(session_id))
    await asyncio.sleep(0.5)  # a call under way: the worker's beat names the session
    killed_ns = time.time_ns()
    if kill == "job":
        record = runs.started(session_id)
        assert record is not None
        os.kill(int(str(record["pid"])), signal.SIGKILL)
    else:
        runs.kill()
    await wait_until(lambda: arrivals.agents(room) == 2, 60, "a new agent in the room")
    connected_ms = (max(arrivals.at_ns[room].values()) - killed_ns) / 1e6
    creates = [c.at_ns for c in sim.calls_to(CREATE) if c.room == room and c.at_ns > killed_ns]
    took = Replaced(dispatched_ms=(min(creates) - killed_ns) / 1e6, connected_ms=connected_ms)
    await wait_until(greeted(sim, room, 2), 30, "the new agent's greeting")
    await sim.leave_participant(room, "caller")
    replacement = session_id_for(event_id, restart=1)

    async def filed() -> bool:
        reports = await recent_results(queue, 200)
        return any(e.report.session_id == replacement for e in reports)

    await wait_until(filed, 60, "the replacement's report")
    if kill == "worker":
        runs.start()
        await wait_until(lambda: len(sim.workers.snapshot()) == len(workers), 60, "restart")
    await asyncio.sleep(0.5)  # the worker brings a warm process back
    return took


def show(what: str, values: list[float]) -> None:
    print(
        f"    {what}: p50 {percentile(values, 0.5):.0f} ms  p99 {percentile(values, 0.99):.0f} ms"
        f"  max {max(values):.0f} ms"
    )


def greeted(sim: LiveKitSim, room: str, count: int) -> Callable[[], bool]:
    return lambda: len(sim.texts(room, topic=GREETING_TOPIC)) >= count


async def run(job_kills: int, worker_kills: int, log_dir: Path) -> dict[str, list[Replaced]]:
    procs = Procs(log_dir)
    arrivals = Arrivals()
    found: dict[str, list[Replaced]] = {"job": [], "worker": []}
    with LocalRedis() as redis_server:
        async with LiveKitSim(
            api_key=API_KEY, api_secret=API_SECRET, departure_timeout_s=1.0
        ) as sim:
            sim.room_registry.listeners.append(arrivals)
            env = agent_env(redis_server.url, sim, AGENT_NAME, AGENT_NUM_IDLE_PROCESSES="2")
            queue = await create_redis(redis_server.url)
            workers = [AgentWorker(f"agent-{i}", env, log_dir) for i in range(2)]
            try:
                for worker in workers:
                    worker.start()
                procs.start("orchestrator", [*arq_command(), "orchestrator.WorkerSettings"], env)
                await wait_until(lambda: len(sim.workers.snapshot()) == 2, 60, "registration")
                for kind, count in (("job", job_kills), ("worker", worker_kills)):
                    for _ in range(count):
                        found[kind].append(await one_call(sim, arrivals, queue, workers, kind))
            finally:
                for worker in workers:
                    worker.kill()
                procs.stop_all()
                await queue.aclose()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--job-kills", type=int, default=20)
    parser.add_argument("--worker-kills", type=int, default=5)
    args = parser.parse_args()
    if not in_netns("bench.failover", "failover"):
        return 0
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        found = asyncio.run(run(args.job_kills, args.worker_kills, Path(tmp)))
    goals = {"job": 2000.0, "worker": WORKER_TIMEOUT_S * 1000 + 1000}
    names = {"job": "job process SIGKILLed", "worker": "agent worker SIGKILLed"}
    print("failover, a caller in each room: from the kill to ...")
    for kind, found_kind in found.items():
        if not found_kind:
            continue
        connected = [r.connected_ms for r in found_kind]
        p99 = percentile(connected, 0.99)
        met = "met" if p99 < goals[kind] else "MISSED"
        print(f"  {names[kind]}, {len(found_kind)} kills:")
        show("the replacement's CreateDispatch", [r.dispatched_ms for r in found_kind])
        show("the replacement agent connected", connected)
        print(f"    goal: connected p99 under {goals[kind]:.0f} ms: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
