"""The waiting line against real agent workers: a burst of 3x the fleet's capacity.

Two agent workers (`python -m agent start`, AGENT_MAX_SESSIONS=3 each: capacity 6) serve
sessions that last `--hold-s` seconds; the orchestrator is `arq orchestrator.WorkerSettings`;
the sim runs in this process, so its own record of CreateDispatch calls and jobs gives the
timings and the agents at once. The same burst runs twice, on a fresh orchestrator each time:
- without the line (LKD_WAITING_LINE=false: today's behaviour, dispatch at once; LiveKit drops
  what no worker takes, the assignment check dispatches again, then fails the session);
- with the line (the default).

It prints, for each: sessions failed, the most agents ever in flight against the capacity,
and, with the line: p50 and p99 from a slot freeing (the script that filed a report let the
next session out) to LiveKit receiving that session's CreateDispatch; how many sessions let
out met a worker still winding down its previous session (it declines: the session goes back
to the head of the line and out again, orchestrator.jobs.line.LINE_CHECK_DELAY_S later); and
from a session's first CreateDispatch to a worker taking it, which counts those round trips.

    .venv/bin/python -m bench.waiting_line [--hold-s 8] [--burst-x 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from arq import ArqRedis

from bench.dispatch_latency import Procs, arq_command
from bench.time_to_agent import agent_env, percentile, wait_until
from livekit_sim import LiveKitSim
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.store.queries import get_session
from tasks import DispatchRequest, create_redis, enqueue_dispatch, recent_results, session_id_for

API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789-abcdefghijklmnop"
AGENT_NAME = "line-agent"
WORKERS, MAX_SESSIONS = 2, 3
CAPACITY = WORKERS * MAX_SESSIONS
CREATE = "AgentDispatchService/CreateDispatch"
# Today's retries give up after 1 + 2 + 4 s: sessions longer than that leave nothing to retry.
ASSIGNMENT_CHECK_DELAY_S, ASSIGNMENT_ATTEMPTS = 1.0, 3


@dataclass
class Burst:
    statuses: collections.Counter[str]
    most_at_once: int
    to_dispatch_ms: list[float] = field(default_factory=list)
    """Sessions let out of the line: from their slot freeing to LiveKit receiving their
    CreateDispatch."""
    to_agent_ms: list[float] = field(default_factory=list)
    """From their first CreateDispatch to a worker taking the job (the sim's assignment):
    what a session sent back costs."""
    sent_back: int = 0
    """Sessions whose dispatch from the line no worker took, sent back to its head."""


async def burst(sim: LiveKitSim, queue: ArqRedis, size: int, hold_s: float) -> Burst:
    """Send `size` events at once and wait for every report."""
    started_ns = time.time_ns()
    events = [f"ev-{uuid.uuid4().hex[:12]}" for _ in range(size)]
    await asyncio.gather(
        *(
            enqueue_dispatch(
                queue,
                DispatchRequest(
                    event_id=e, room=f"room-{e}", agent_name=AGENT_NAME, metadata={"hold_s": hold_s}
                ),
            )
            for e in events
        )
    )
    sessions = {session_id_for(e) for e in events}

    async def all_reported() -> bool:
        found = {e.report.session_id for e in await recent_results(queue, 10 * size)}
        return sessions <= found

    await wait_until(all_reported, timeout_s=hold_s * size + 120, what="every report")
    statuses = collections.Counter(
        e.report.status for e in await recent_results(queue, 10 * size)
        if e.report.session_id in sessions
    )  # fmt: skip
    creates: dict[str, list[int]] = collections.defaultdict(list)
    for call in sim.calls_to(CREATE):
        creates[call.room].append(call.at_ns)
    found = Burst(statuses, sim.most_jobs_at_once(since_ns=started_ns))
    for event_id in events:
        session = await get_session(queue, session_id_for(event_id))
        if session is None or not session.admitted_at:
            continue
        if len(creates[session.room]) > 1:
            found.sent_back += 1
        # Its last admission: the one a worker took (a session sent back is let out again).
        admitted_ns = session.admitted_at * 1_000_000
        after = [ns for ns in creates[session.room] if ns >= admitted_ns]
        if after:
            found.to_dispatch_ms.append((min(after) - admitted_ns) / 1e6)
        jobs = [j.assigned_at_ns for j in sim.jobs_in(session.room)]
        if jobs and creates[session.room]:
            found.to_agent_ms.append((min(jobs) - min(creates[session.room])) / 1e6)
    return found


async def run(hold_s: float, burst_x: int, log_dir: Path) -> None:
    logging.getLogger("livekit_sim").setLevel(logging.ERROR)  # a line per offer otherwise
    procs = Procs(log_dir)
    with LocalRedis() as redis_server:
        async with LiveKitSim(api_key=API_KEY, api_secret=API_SECRET) as sim:
            env = agent_env(
                redis_server.url,
                sim,
                AGENT_NAME,
                AGENT_SESSION_HANDLER="bench.handlers:timed",
                AGENT_MAX_SESSIONS=str(MAX_SESSIONS),
                AGENT_NUM_IDLE_PROCESSES="1",
                LKD_ASSIGNMENT_CHECK_DELAY_S=str(ASSIGNMENT_CHECK_DELAY_S),
                LKD_ASSIGNMENT_ATTEMPTS=str(ASSIGNMENT_ATTEMPTS),
            )
            queue = await create_redis(redis_server.url)
            try:
                for i in range(WORKERS):
                    procs.start(f"agent-{i}", [sys.executable, "-m", "agent", "start"], env)
                await wait_until(
                    lambda: len(sim.workers.snapshot()) == WORKERS, 60, "agent registration"
                )
                size = burst_x * CAPACITY
                for line in (False, True):
                    name = "with the line" if line else "without the line (today)"
                    orchestrator = procs.start(
                        f"orchestrator-{int(line)}",
                        [*arq_command(), "orchestrator.WorkerSettings"],
                        {**env, "LKD_WAITING_LINE": str(line).lower()},
                    )
                    found = await burst(sim, queue, size, hold_s)
                    procs.stop(orchestrator)
                    statuses = found.statuses
                    failed = statuses.get("failed", 0) + statuses.get("lost", 0)
                    print(
                        f"{name}: {size} events at once, capacity {CAPACITY}: "
                        f"{failed} failed ({dict(statuses)}), at most {found.most_at_once} "
                        "agents at once"
                    )
                    if found.to_dispatch_ms:
                        print(
                            f"  {len(found.to_dispatch_ms)} sessions let out of the line, "
                            f"{found.sent_back} of them sent back once or more (a worker "
                            "still winding down declined)"
                        )
                        show("slot freed -> its CreateDispatch", found.to_dispatch_ms)
                        show("first CreateDispatch -> a worker took the job", found.to_agent_ms)
            finally:
                procs.stop_all()
                await queue.aclose()


def show(what: str, values: list[float]) -> None:
    print(
        f"  {what}: p50 {percentile(values, 0.5):.1f} ms  p99 {percentile(values, 0.99):.1f} ms"
        f"  max {max(values):.1f} ms  mean {statistics.fmean(values):.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting_line", description=__doc__)
    parser.add_argument("--hold-s", type=float, default=8.0, help="how long each session lasts")
    parser.add_argument("--burst-x", type=int, default=3, help="the burst, in capacities")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="waiting-line-") as tmp:
        asyncio.run(run(args.hold_s, args.burst_x, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
