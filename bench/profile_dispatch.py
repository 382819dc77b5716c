"""Where one orchestrator worker spends its CPU per dispatch: py-spy samples the worker
(`arq orchestrator.WorkerSettings`, as in bench/dispatch_latency.py) while it drains a
backlog, and the samples are summed by step. A helper for work on the hot path, not part of
`python -m bench`; needs the `py-spy` binary (`pip install py-spy`, anywhere on PATH or
--py-spy), and ptrace permission.

    .venv/bin/python -m bench.profile_dispatch [--backlog 5000] [--raw /tmp/dispatch.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.dispatch_latency import (
    Cpus,
    Procs,
    arq_command,
    backlog_release,
    dispatch_request,
    dispatch_result_key,
    enqueue_backlog,
    orchestrator_env,
    sim_command,
    wait_for_results,
)
from bench.sim_rps import cpu_seconds, free_port, wait_ready
from orchestrator.demo.local_redis import LocalRedis
from tasks import create_redis, enqueue_dispatch

# (label, frame that marks it), first match from the leaf wins; the rest is "other".
STEPS = [
    ("dispatch: claim (Lua)", "claim (orchestrator/store/sessions.py"),
    ("dispatch: CreateDispatch (HTTP)", "create_dispatch (orchestrator/"),
    ("dispatch: Redis scripts (pipelined)", "orchestrator/store/script_pipe.py"),
    ("dispatch: mark_dispatched (Lua)", "mark_dispatched (orchestrator/store/sessions.py"),
    ("dispatch: logging (structlog)", "structlog/"),
    ("dispatch: DispatchRequest validation", "model_validate ("),
    ("dispatch: JobMetadata.to_json", "to_json (tasks/models.py"),
    ("dispatch: prometheus metrics", "prometheus_client/"),
    ("dispatch: rest", "dispatch_agent (orchestrator/jobs/dispatch.py"),
    ("reconcile cron", "reconcile_sessions (orchestrator/jobs/reconcile.py"),
    ("arq: start_jobs (WATCH/EXISTS/ZSCORE/MULTI)", "start_jobs (arq/worker.py"),
    ("arq: run_job (GET job, retries, timeout)", "run_job (arq/worker.py"),
    # Shielded, so in a task of its own: not under run_job's frames.
    ("arq: finish_job (result SET, clean-up)", "finish_job (arq/worker.py"),
    ("arq: poll (ZRANGEBYSCORE, heartbeat)", "_poll_iteration (arq/worker.py"),
]


def summarize(raw: Path, dispatches: int, cpu_s: float) -> None:
    by_step: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        label = next(
            (label for label, mark in STEPS if any(mark in f for f in frames)), "other (loop)"
        )
        by_step[label] += count
    per_dispatch_us = cpu_s / dispatches * 1e6
    print(
        f"worker CPU {cpu_s:.2f} s for {dispatches} dispatches = {per_dispatch_us:.0f} us each;"
        f" {total} samples"
    )
    for label, _ in [*STEPS, ("other (loop)", "")]:
        share = by_step[label] / total if total else 0.0
        print(f"  {label:<52} {share:6.1%}  {share * per_dispatch_us:6.0f} us")
    print("top leaf functions (self time):")
    for frame, count in leaves.most_common(25):
        print(f"  {count / total:6.1%}  {frame}")


async def drain(args: argparse.Namespace, procs: Procs, cpus: Cpus, sim_url: str) -> None:
    spy = shutil.which("py-spy") or args.py_spy
    worker = cpus.pin([*arq_command(), args.worker_settings], cpus.sut)
    proc = procs.start("orchestrator", worker, orchestrator_env(args.redis_url, sim_url))
    redis = await create_redis(args.redis_url)
    try:
        ready = dispatch_request(f"ready-{time.time_ns()}")
        await enqueue_dispatch(redis, ready)
        await wait_for_results(redis, [dispatch_result_key(ready)], 60, proc)
        release = backlog_release(args.backlog)
        backlog = [
            dispatch_request(f"p-{time.time_ns()}-{i}", release) for i in range(args.backlog)
        ]
        await enqueue_backlog(len(backlog), lambda i: enqueue_dispatch(redis, backlog[i]), release)
        record = [spy, "record", "--pid", str(proc.pid), "--rate", "500"]
        spy_proc = procs.start(
            "py-spy", cpus.pin([*record, "--format", "raw", "-o", args.raw], cpus.producer)
        )
        cpu0 = cpu_seconds(proc.pid)
        keys = [dispatch_result_key(r) for r in backlog]
        done = await wait_for_results(redis, keys, 120, proc, 0.05)
        cpu_s = cpu_seconds(proc.pid) - cpu0
        spy_proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy_proc.wait(timeout=30)
        summarize(Path(args.raw), done, cpu_s)
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--raw", default=str(Path(tempfile.gettempdir()) / "dispatch-profile.txt"))
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument(
        "--worker-settings",
        default="orchestrator.WorkerSettings",
        help="what `arq` runs: profile a variant of the worker (its module on PYTHONPATH)",
    )
    args = parser.parse_args()
    cpus = Cpus.plan()
    if cpus.sim is not None:
        os.sched_setaffinity(0, cpus.sut)
    procs = Procs(Path(tempfile.mkdtemp(prefix="bench-profile-")))
    try:
        with LocalRedis() as server:
            args.redis_url = server.url
            if cpus.sim is not None:
                os.sched_setaffinity(0, cpus.producer)
            port = free_port()
            procs.start("livekit_sim", cpus.pin(sim_command(port), {cpus.sim or 0}))
            try:
                asyncio.run(wait_ready(f"http://127.0.0.1:{port}"))
                asyncio.run(drain(args, procs, cpus, f"http://127.0.0.1:{port}"))
            finally:
                procs.stop_all()
    finally:
        shutil.rmtree(procs.log_dir, ignore_errors=True)
    print(f"raw stacks: {args.raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
