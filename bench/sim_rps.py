"""CreateDispatch requests/s that livekit_sim serves to the real livekit-api client.

The sim runs as `python -m livekit_sim` in a subprocess pinned to CPU 0 (`taskset`, when
present); the client runs here, on the other CPUs. One new room per request, as in the
dispatch flow. Each level is bounded by a request count and a time limit.

    .venv/bin/python -m bench.sim_rps [--requests 5000] [--max-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

from livekit import api

API_KEY = "bench-key"
API_SECRET = "bench-secret-0123456789-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "livekit_sim", "--port", str(port), "--log-level", "WARNING"]
    cmd += ["--keys", f"{API_KEY}: {API_SECRET}"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_ready(url: str, deadline_s: float = 15.0) -> None:
    async with api.LiveKitAPI(url, API_KEY, API_SECRET) as lk:
        end = time.monotonic() + deadline_s
        while True:
            try:
                await lk.room.list_rooms(api.ListRoomsRequest())
                return
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)


async def run_level(
    url: str, concurrency: int, requests: int, max_seconds: float
) -> tuple[int, float]:
    """(requests completed, seconds) for `concurrency` clients sharing one LiveKitAPI."""
    done = 0
    errors = 0
    async with api.LiveKitAPI(url, API_KEY, API_SECRET) as lk:
        start = time.monotonic()
        stop_at = start + max_seconds

        started = 0

        async def client(offset: int) -> None:
            nonlocal done, errors, started
            i = offset
            while started < requests and time.monotonic() < stop_at:
                started += 1
                try:
                    await lk.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(
                            agent_name="bench", room=f"c{concurrency}-{i}", metadata="{}"
                        )
                    )
                    done += 1
                except api.ServerError:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(client(n) for n in range(concurrency)))
        elapsed = time.monotonic() - start
    if errors:
        print(f"  ({errors} errors)")
    return done, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_sim(port)
    try:
        await wait_ready(url)
        print("livekit_sim CreateDispatch throughput (real livekit-api client, sim on one core)")
        for concurrency, count in ((1, min(args.requests, 1000)), (50, args.requests)):
            await run_level(url, concurrency, min(count, 200), args.max_seconds)  # warm-up
            cpu_before = cpu_seconds(proc.pid)
            done, elapsed = await run_level(url, concurrency, count, args.max_seconds)
            busy = (cpu_seconds(proc.pid) - cpu_before) / elapsed
            print(
                f"  concurrency {concurrency:>2}: {done / elapsed:6.0f} req/s served"
                f" ({done} in {elapsed:.2f} s); sim CPU busy {busy:.0%},"
                f" {busy * elapsed / max(done, 1) * 1e6:.0f} us/request"
                f" -> ~{done / max(busy * elapsed, 1e-9):.0f} req/s at 100% of one core"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
