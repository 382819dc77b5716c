"""The promises under faults that come together: one live agent per room, exactly one report per
session, no event lost.

Three orchestrator workers (`arq orchestrator.WorkerSettings`), one agent worker
(`python -m agent start`, 25 sessions, the demo's handler: it talks for 1-4 s without joining the
media), Redis with AOF (`appendfsync always`) and `livekit_sim` in this process. While events
flow in (`--events` over `--rooms` at `--rate`/s, a twentieth of them sent twice), all at once:
- an orchestrator worker is SIGKILLed every ~8 s and started again;
- Redis is SIGKILLed once and started again on the same port and data, 2-5 s later;
- CreateDispatch answers 503 without effect (6 %), takes effect but its answer is lost as a 503
  (4 %), answers 300 ms late (8 %), or makes a dispatch that no worker is offered (5 %);
- six of the agent's job processes are SIGKILLed in the middle of their session.
A caller (a participant of the sim) stays in half of the rooms, so that an agent killed there
is replaced (failover) rather than `lost`. Then the faults stop and everything settles. The
figures are read from outside the product's code: the sim's record of job assignments and
ends, the results stream (and the stream of reports set aside as duplicates), each event's
outcome (its arq result).

One line per seed: events sent and without outcome; rooms with two agents at once; sessions,
reports (by status), duplicates, missing, still live after settling; faults injected by kind.
A promise is broken by any of: an event without outcome, a room with two agents at once, a
duplicate, a missing report, a session still live. The exit code is 1 when any run broke one.

    .venv/bin/python -m bench.chaos [--seeds 1-20 | --seed 7] [--events 600] [--rooms 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from arq import ArqRedis
from redis.exceptions import RedisError

from bench.chaos_figures import Figures, measure
from bench.time_to_agent import wait_until
from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.demo.processes import Child, Supervisor
from tasks import DispatchRequest, create_redis, enqueue_dispatch, keys

API_KEY = "chaos-key"
API_SECRET = "chaos-secret-0123456789-abcdefghijklmnop"
AGENT_NAME = "chaos-agent"
CREATE = "AgentDispatchService/CreateDispatch"
ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3
SETTLE_S = 100.0
# Short timings, so that a run settles in about a minute; each is a documented setting.
SETTINGS = {
    "LKD_ASSIGNMENT_CHECK_DELAY_S": "2",
    "LKD_REPORT_GRACE_S": "6",
    "LKD_CLAIM_STALE_S": "20",
    "LKD_RECONCILE_INTERVAL_S": "2",
    "LKD_JOB_TIMEOUT_S": "10",
    "LKD_RETRY_MAX_DELAY_S": "4",
    "LKD_AGENT_WORKER_TIMEOUT_S": "5",
    "AGENT_MAX_SESSIONS": "25",
    "AGENT_COUNT_CPU_LOAD": "false",
    "AGENT_NUM_IDLE_PROCESSES": "3",
    "AGENT_HEARTBEAT_INTERVAL_S": "1",
    "AGENT_WORKER_HEARTBEAT_INTERVAL_S": "1",
    "AGENT_SESSION_HANDLER": "orchestrator.demo.handler:demo_session",
    "AGENT_HEALTH_HOST": "127.0.0.1",
    "AGENT_HEALTH_PORT": "0",
}


@dataclass
class Plan:
    seed: int
    events: int = 600
    rooms: int = 60
    rate_per_s: float = 12.0
    twice: float = 0.05
    worker_kill_every_s: float = 8.0
    job_kills: int = 6
    caller_rooms: float = 0.5
    """The share of rooms with a caller in them throughout."""


@dataclass
class Chaos:
    """The faults this harness injected itself (the sim counts its own)."""

    worker_kills: int = 0
    redis_kills: int = 0
    job_kills: int = 0
    sent: set[str] = field(default_factory=set)


def sim_log(log_dir: Path) -> logging.Handler:
    """The sim's own log lines (jobs dropped, workers refusing) go to a file of the run."""
    handler = logging.FileHandler(log_dir / "sim.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    sim_logger = logging.getLogger("livekit_sim")
    sim_logger.handlers = [handler]
    sim_logger.propagate = False
    sim_logger.setLevel(logging.INFO)
    return handler


async def run(plan: Plan, log_dir: Path) -> Figures:
    rng = random.Random(plan.seed)
    sim_log(log_dir)
    redis = LocalRedis(appendonly=True).start()
    supervisor = Supervisor(log_dir)
    chaos = Chaos()
    try:
        async with LiveKitSim(api_key=API_KEY, api_secret=API_SECRET, fault_seed=plan.seed) as sim:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("LKD_", "AGENT_"))},
                **SETTINGS,
                "REDIS_URL": redis.url,
                "LIVEKIT_URL": sim.url,
                "LIVEKIT_API_KEY": API_KEY,
                "LIVEKIT_API_SECRET": API_SECRET,
                "AGENT_NAME": AGENT_NAME,
                "PYTHONPATH": str(ROOT),
            }
            queue = await create_redis(redis.url)
            try:
                workers = [start_worker(supervisor, env, i) for i in range(WORKERS)]
                agent = supervisor.start("agent", [sys.executable, "-m", "agent", "start"], env)
                await wait_until(lambda: registered(agent), 60, "the agent worker registered")
                await wait_until(lambda: polling(queue), 60, "the orchestrator workers polling")
                for room in range(plan.rooms):
                    if rng.random() < plan.caller_rooms:
                        await sim.join_participant(f"room-{plan.seed}-{room}", "caller")
                faults_on(sim)
                started = time.monotonic()
                duration_s = plan.events / plan.rate_per_s
                tasks = [
                    asyncio.create_task(kill_workers(plan, rng, supervisor, env, workers, chaos)),
                    asyncio.create_task(kill_redis(rng, redis, duration_s, chaos)),
                    asyncio.create_task(kill_jobs(plan, rng, agent, duration_s, chaos)),
                ]
                await produce(plan, rng, queue, chaos)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                sim.faults.clear()
                for i, worker in enumerate(workers):
                    if not worker.alive():
                        workers[i] = start_worker(supervisor, env, i)
                await settle(queue, chaos.sent)
                figures = await measure(sim, queue, chaos.sent)
                figures.seconds = time.monotonic() - started
                figures.faults.update(
                    {
                        "worker kills": chaos.worker_kills,
                        "redis kills": chaos.redis_kills,
                        "job process kills": chaos.job_kills,
                    }
                )
                return figures
            finally:
                await supervisor.stop_all([["agent"]])
                await queue.aclose()
    finally:
        redis.stop()


def start_worker(supervisor: Supervisor, env: dict[str, str], slot: int) -> Child:
    argv = [sys.executable, "-m", "arq", "orchestrator.WorkerSettings"]
    return supervisor.start(f"worker-{slot}", argv, env)


def faults_on(sim: LiveKitSim) -> None:
    sim.faults.set(
        CREATE,
        error_rate=0.06,
        lost_answer_rate=0.04,
        response_delay_ms=300,
        response_delay_rate=0.08,
    )
    sim.faults.unoffered_rate = 0.05


async def produce(plan: Plan, rng: random.Random, queue: ArqRedis, chaos: Chaos) -> None:
    """Open loop: event i leaves at i / rate, whatever happens; some are sent again later."""
    started = time.monotonic()
    sends: list[asyncio.Task[None]] = []
    for i in range(plan.events):
        await asyncio.sleep(max(0.0, started + i / plan.rate_per_s - time.monotonic()))
        request = DispatchRequest(
            event_id=f"chaos-{plan.seed}-{i}",
            room=f"room-{plan.seed}-{rng.randrange(plan.rooms)}",
            metadata={"demo": {"talk_s": round(rng.uniform(1.0, 4.0), 2)}},
        )
        chaos.sent.add(request.event_id)
        sends.append(asyncio.create_task(send(queue, request)))
        if rng.random() < plan.twice:
            sends.append(asyncio.create_task(send(queue, request, after_s=rng.uniform(0.1, 8))))
    await asyncio.gather(*sends)


async def send(queue: ArqRedis, request: DispatchRequest, after_s: float = 0.0) -> None:
    """Enqueue as a careful producer does: again until Redis takes it (the same event is one
    job, so an attempt that did get through makes the next one a no-op)."""
    await asyncio.sleep(after_s)
    while True:
        with contextlib.suppress(RedisError, OSError):
            await enqueue_dispatch(queue, request)
            return
        await asyncio.sleep(0.2)


async def kill_workers(
    plan: Plan,
    rng: random.Random,
    supervisor: Supervisor,
    env: dict[str, str],
    workers: list[Child],
    chaos: Chaos,
) -> None:
    while True:
        await asyncio.sleep(rng.uniform(0.75, 1.25) * plan.worker_kill_every_s)
        slot = rng.randrange(len(workers))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(workers[slot].pid, 9)
        workers[slot].proc.wait()
        chaos.worker_kills += 1
        workers[slot] = start_worker(supervisor, env, slot)


async def kill_redis(
    rng: random.Random, redis: LocalRedis, duration_s: float, chaos: Chaos
) -> None:
    await asyncio.sleep(rng.uniform(0.25, 0.6) * duration_s)
    redis.kill()
    chaos.redis_kills += 1
    await asyncio.sleep(rng.uniform(2.0, 5.0))
    await asyncio.to_thread(redis.start)


async def kill_jobs(
    plan: Plan, rng: random.Random, agent: Child, duration_s: float, chaos: Chaos
) -> None:
    """SIGKILL the job process of a session that is running, `plan.job_kills` times."""
    started = time.monotonic()
    for when in sorted(rng.uniform(0.15, 0.85) * duration_s for _ in range(plan.job_kills)):
        await asyncio.sleep(max(0.0, started + when - time.monotonic()))
        pids = running_job_pids(agent)
        if not pids:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(sorted(pids)), 9)
            chaos.job_kills += 1


def running_job_pids(agent: Child) -> set[int]:
    """Job processes that started a session (the agent's log says which) and still run."""
    pids: set[int] = set()
    for line in agent.log_path.read_text(errors="replace").splitlines():
        if '"session started"' not in line:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            pid = int(record.get("pid", 0))
            if pid:
                pids.add(pid)
    return {pid for pid in pids if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def registered(agent: Child) -> bool:
    agent.check_alive()
    return "registered with LiveKit" in agent.log_path.read_text(errors="replace")


async def polling(queue: ArqRedis) -> bool:
    return bool(await queue.exists(keys.QUEUE_NAME + ":health-check"))


async def settle(queue: ArqRedis, sent: set[str]) -> None:
    """Until every event has an outcome and no session is live, or SETTLE_S."""
    job_keys = [keys.ARQ_RESULT_PREFIX + keys.dispatch_job_id(e) for e in sorted(sent)]
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        with contextlib.suppress(RedisError, OSError):
            results = await queue.mget(job_keys)
            if all(r is not None for r in results) and not await queue.zcard(keys.LIVE_SESSIONS):
                return
        await asyncio.sleep(0.5)


def seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # asyncio.run then cancels the run, which stops what it started


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="one seed (default: a random one)")
    parser.add_argument("--seeds", help="a range of seeds, e.g. 1-20, run one after the other")
    parser.add_argument("--events", type=int, default=Plan.events)
    parser.add_argument("--rooms", type=int, default=Plan.rooms)
    parser.add_argument("--rate", type=float, default=Plan.rate_per_s)
    parser.add_argument("--log-dir", type=Path, help="where the processes' logs go")
    args = parser.parse_args()
    chosen = seeds(args.seeds) if args.seeds else [args.seed or random.randrange(1, 10_000)]
    broken = 0
    for seed in chosen:
        plan = Plan(seed=seed, events=args.events, rooms=args.rooms, rate_per_s=args.rate)
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"lkd-chaos-{seed}-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(run(plan, log_dir))
        broken += figures.broken
        print(figures.line(seed) + f" | logs {log_dir}", flush=True)
    if len(chosen) > 1:
        print(f"chaos: {len(chosen)} seeds, {broken} with a broken promise", flush=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
