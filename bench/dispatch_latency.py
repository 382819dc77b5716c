"""Time-to-dispatch and dispatch throughput of one orchestrator worker, beside arq's own no-op
job on the same machine in the same run. Prints the figures and the targets of issue 3.

- livekit_sim runs as `python -m livekit_sim`, pinned to the first CPU (`taskset`, when there
  are 2+ CPUs), so it is not the bottleneck; the worker under test and Redis get the other
  CPUs; this producer runs beside the sim on 2 CPUs, on a CPU of its own on 3+.
- The orchestrator is `arq orchestrator.WorkerSettings` in a subprocess, one process, with the
  project's default settings (LKD_* variables of the environment are not passed on), except
  that the assignment check is deferred past the run: no agent takes jobs here, and the check
  would replace every dispatch 5 s later, in the middle of the next level.
- time-to-dispatch: the producer's time.time_ns() right before `enqueue_dispatch` to the
  CreateDispatch arriving at the sim (its time.time_ns() on arrival): one machine clock.
  Open loop: events leave on a fixed schedule, each in its own task, whatever the worker does;
  each event is a new room, so every one dispatches. The first `--warmup-s` of each level is
  sent but excluded.
- sustained: `--backlog` events enqueued with `not_before` a little ahead, released at once,
  drained as fast as the worker can: (n - 1) / (last - first CreateDispatch arrival).
- arq no-op: a job that only notes its start (bench/noop_worker.py), with the same JSON
  serializer and arq's CLI logging, at arq's defaults and at its best settings: jobs/s on the
  same backlog, and enqueue-to-start at 200 events/s offered.
- Sustained orchestrator and best no-op run `--rounds` times (each a fresh worker process,
  the two alternating) and are compared by their medians: on a shared machine one such
  figure moves by 15-25 % from one minute to the next, more than the margin it is judged by.

    .venv/bin/python -m bench.dispatch_latency [--measure-s 4] [--backlog 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from arq import ArqRedis

from bench.noop_worker import NOOP, QUEUE
from bench.sim_rps import API_KEY, API_SECRET, cpu_seconds, free_port, wait_ready
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.settings import Settings
from tasks import DispatchRequest, create_redis, enqueue_dispatch, job_deserializer, keys

ROOT = Path(__file__).resolve().parent.parent
CREATE_DISPATCH = "AgentDispatchService/CreateDispatch"
METADATA = {"user_id": "u1", "user_name": "Ada", "user_phone": "+15550100"}
# Far past the end of the run: see the module docstring.
ASSIGNMENT_CHECK_DELAY_S = 3600
TARGET_P99_MS = {100: 25.0, 500: 50.0}
TARGET_SUSTAINED_SHARE = 0.60


# -- processes -----------------------------------------------------------------------------


@dataclass
class Cpus:
    """Where each process runs: the system under test (worker and Redis) on `sut`, the
    harness (sim and this producer) on the others; the sim pinned to one CPU."""

    sim: int | None
    producer: set[int]
    sut: set[int]

    @classmethod
    def plan(cls) -> Cpus:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2 or not shutil.which("taskset"):
            return cls(None, set(cpus), set(cpus))
        if len(cpus) == 2:
            return cls(cpus[0], {cpus[0]}, {cpus[1]})
        return cls(cpus[0], {cpus[1]}, set(cpus[2:]))

    def describe(self) -> str:
        if self.sim is None:
            return "no CPU pinning (fewer than 2 CPUs or no taskset)"

        def names(cpus: set[int]) -> str:
            return "CPU " + ",".join(map(str, sorted(cpus)))

        return (
            f"livekit_sim on CPU {self.sim}, producer on {names(self.producer)},"
            f" worker and Redis on {names(self.sut)}"
        )

    def pin(self, cmd: list[str], cpus: set[int]) -> list[str]:
        if self.sim is None:
            return cmd
        return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]


@dataclass
class Procs:
    """Every process this run starts, stopped in reverse order whatever happens."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.started)):
            self.stop(proc)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def sim_command(port: int) -> list[str]:
    cmd = [sys.executable, "-m", "livekit_sim", "--port", str(port), "--log-level", "WARNING"]
    return [*cmd, "--keys", f"{API_KEY}: {API_SECRET}"]


def orchestrator_env(redis_url: str, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LKD_", "LIVEKIT_"))}
    env.update(
        REDIS_URL=redis_url,
        LIVEKIT_URL=sim_url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        LKD_ASSIGNMENT_CHECK_DELAY_S=str(ASSIGNMENT_CHECK_DELAY_S),
    )
    env.pop("AGENT_NAME", None)
    return env


def arq_command() -> list[str]:
    script = Path(sys.executable).parent / "arq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "arq"]


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Offered:
    """One open-loop level: what was sent when."""

    rate_per_s: float
    keys: list[str]
    sent_ns: list[int]
    warm: int  # the first `warm` events are warm-up, excluded
    max_lag_ms: float  # worst lateness of a measured send against its schedule

    @property
    def measured(self) -> Iterator[tuple[str, int]]:
        return zip(self.keys[self.warm :], self.sent_ns[self.warm :], strict=True)

    @property
    def achieved_per_s(self) -> float:
        sent = self.sent_ns[self.warm :]
        return (len(sent) - 1) / ((max(sent) - min(sent)) / 1e9) if len(sent) > 1 else 0.0


async def offer(
    rate_per_s: float,
    warmup_s: float,
    measure_s: float,
    keys_: list[str],
    enqueue: Callable[[int], Awaitable[Any]],
) -> Offered:
    """Send events 0.. on a fixed schedule, each in its own task (open loop)."""
    loop = asyncio.get_running_loop()
    total = round(rate_per_s * (warmup_s + measure_s))
    assert len(keys_) >= total
    sent_ns = [0] * total
    lag_s = [0.0] * total
    start = loop.time() + 0.05

    async def one(i: int, due: float) -> None:
        lag_s[i] = loop.time() - due
        sent_ns[i] = time.time_ns()
        await enqueue(i)

    tasks = []
    for i in range(total):
        due = start + i / rate_per_s
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    warm = round(rate_per_s * warmup_s)
    return Offered(rate_per_s, keys_[:total], sent_ns, warm, max(lag_s[warm:]) * 1000)


async def wait_for_results(
    redis: ArqRedis,
    result_keys: list[str],
    deadline_s: float,
    proc: subprocess.Popen[bytes],
    interval_s: float = 0.1,
) -> int:
    """How many of `result_keys` exist, once all do or the deadline passes.

    Results come about in the order of the keys, so a poll asks only past the run of keys
    already seen: asking for all of them every time cost Redis, which shares the CPU of the
    worker under test, a few percent of a slow drain's throughput."""
    end = time.monotonic() + deadline_s
    seen = 0  # result_keys[:seen] all exist
    while True:
        while seen < len(result_keys):
            chunk = result_keys[seen : seen + 200]
            if await redis.exists(*chunk) < len(chunk):
                break
            seen += len(chunk)
        if seen == len(result_keys):
            return seen
        if time.monotonic() > end:
            rest = result_keys[seen:]
            return seen + sum(
                [await redis.exists(*rest[i : i + 1000]) for i in range(0, len(rest), 1000)]
            )
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}")
        await asyncio.sleep(interval_s)


def backlog_release(count: int) -> datetime:
    """When a backlog of `count` events enqueued from now on can all be waiting."""
    return datetime.now(UTC) + timedelta(seconds=0.5 + count / 800)


async def enqueue_backlog(
    count: int, send: Callable[[int], Awaitable[Any]], release: datetime
) -> None:
    """Enqueue items 0..count-1 (each due at `release`), 200 at a time, then wait for
    `release`: the worker finds the whole backlog waiting at once."""
    for start in range(0, count, 200):
        await asyncio.gather(*(send(i) for i in range(start, min(start + 200, count))))
    overrun_s = (datetime.now(UTC) - release).total_seconds()
    if overrun_s > 0:
        print(f"  note: enqueuing the backlog overran its release by {overrun_s:.2f} s")
    else:
        await asyncio.sleep(-overrun_s)


async def results(redis: ArqRedis, result_keys: list[str]) -> dict[str, Any]:
    """Job results (arq's `r`) by result key; missing ones absent."""
    out: dict[str, Any] = {}
    for i in range(0, len(result_keys), 1000):
        chunk = result_keys[i : i + 1000]
        for key, raw in zip(chunk, await redis.mget(chunk), strict=True):
            if raw is not None:
                out[key] = job_deserializer(raw).get("r")
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


@dataclass
class Latency:
    label: str
    offered: Offered
    latencies_ms: list[float]
    missing: int

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    def row(self) -> str:
        o = self.offered
        lat = self.latencies_ms
        missing = f"  {self.missing} never arrived" if self.missing else ""
        return (
            f"  {self.label:<34} {o.rate_per_s:>5.0f}/s {o.achieved_per_s:>8.1f}/s"
            f" {len(lat):>5} {self.p50:>7.1f} {self.p99:>7.1f} {max(lat, default=math.nan):>7.1f}"
            f" {o.max_lag_ms:>6.1f}{missing}"
        )


def latency_from(
    label: str, offered: Offered, arrived_ns: dict[str, int], missing: int = 0
) -> Latency:
    lat = sorted((arrived_ns[k] - sent) / 1e6 for k, sent in offered.measured if k in arrived_ns)
    gone = sum(1 for k, _ in offered.measured if k not in arrived_ns)
    return Latency(label, offered, lat, max(missing, gone))


@dataclass
class Throughput:
    label: str
    count: int
    first_ns: int
    last_ns: int
    cpu_busy: dict[str, float]
    missing: int

    @property
    def per_s(self) -> float:
        span_s = (self.last_ns - self.first_ns) / 1e9
        return (self.count - 1) / span_s if self.count > 1 and span_s > 0 else math.nan

    def row(self) -> str:
        busy = ", ".join(f"{name} {share:.0%}" for name, share in self.cpu_busy.items())
        missing = f"; {self.missing} never arrived" if self.missing else ""
        return (
            f"  {self.label:<34} {self.per_s:>7.0f}/s  ({self.count} in"
            f" {(self.last_ns - self.first_ns) / 1e9:.2f} s; CPU busy: {busy}{missing})"
        )


class CpuMeter:
    """CPU share of some processes over an interval (Linux /proc)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        return {
            name: (cpu_seconds(pid) - self._cpu0[name]) / wall for name, pid in self.pids.items()
        }


# -- the orchestrator ----------------------------------------------------------------------


@dataclass
class OrchestratorFigures:
    levels: list[Latency]
    sustained: Throughput
    outcomes: dict[str, int]
    phases: list[tuple[str, float, float]]  # label, start, end (unix s)
    reconcile: list[tuple[float, float]]  # start (unix s, +-1 s), duration s of each cron run

    def reconcile_runs(self) -> str:
        """The reconciliation runs, each with the phases it overlapped."""
        runs = []
        for start, duration in self.reconcile:
            during = [
                label
                for label, a, b in self.phases
                if start - 1 < b and start + duration + 1 > a and duration >= 0.01
            ]
            runs.append(f"{duration:.2f} s" + (f" (during {', '.join(during)})" if during else ""))
        return ", ".join(runs)


def dispatch_request(event_id: str, not_before: datetime | None = None) -> DispatchRequest:
    return DispatchRequest(
        event_id=event_id,
        room=f"room-{event_id}",
        agent_name="support-agent",
        metadata=METADATA,
        not_before=not_before,
    )


def dispatch_result_key(request: DispatchRequest) -> str:
    return keys.ARQ_RESULT_PREFIX + keys.dispatch_job_id(request.event_id)


async def sim_arrivals(sim_url: str) -> dict[str, int]:
    """First successful CreateDispatch arrival (unix ns) per room, from the sim's call log."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim_url}/_sim/calls", params={"method": CREATE_DISPATCH}) as response,
    ):
        body = await response.json()
    arrived: dict[str, int] = {}
    for call in body["calls"]:
        if call["code"] == "ok":
            room = call["room"]
            arrived[room] = min(arrived.get(room, call["at_ns"]), call["at_ns"])
    return arrived


async def run_orchestrator(
    args: argparse.Namespace,
    procs: Procs,
    redis: ArqRedis,
    redis_pid: int,
    sim_url: str,
    *,
    levels: bool,
) -> OrchestratorFigures:
    """A fresh worker: the open-loop levels (when `levels`), then one sustained backlog."""
    sim_pid = next(p.pid for n, p in procs.started if n == "livekit_sim")
    proc = procs.start(
        "orchestrator",
        args.cpus.pin([*arq_command(), "orchestrator.WorkerSettings"], args.cpus.sut),
        orchestrator_env(args.redis_url, sim_url),
    )
    run = f"{os.getpid()}-{time.time_ns() % 10**9}"

    # Ready: one event through the whole path (excluded from every figure).
    ready = dispatch_request(f"ready-{run}")
    await enqueue_dispatch(redis, ready)
    if await wait_for_results(redis, [dispatch_result_key(ready)], 60, proc) != 1:
        raise RuntimeError("orchestrator did not dispatch a first event within 60 s")

    all_requests: list[DispatchRequest] = []
    offered_levels: list[tuple[str, Offered, int]] = []
    phases: list[tuple[str, float, float]] = []
    for rate in args.rates if levels else []:
        total = round(rate * (args.warmup_s + args.measure_s))
        requests = [dispatch_request(f"l{rate}-{run}-{i}") for i in range(total)]
        all_requests += requests

        async def send(i: int, requests: list[DispatchRequest] = requests) -> None:
            await enqueue_dispatch(redis, requests[i])

        offered = await offer(rate, args.warmup_s, args.measure_s, [r.room for r in requests], send)
        result_keys = [dispatch_result_key(r) for r in requests]
        done = await wait_for_results(redis, result_keys, args.drain_deadline_s, proc)
        offered_levels.append((f"time-to-dispatch at {rate}/s", offered, len(requests) - done))
        phases.append((f"{rate}/s level", offered.sent_ns[0] / 1e9, time.time()))

    # Sustained: a backlog released at once.
    release = backlog_release(args.backlog)
    backlog = [dispatch_request(f"b-{run}-{i}", release) for i in range(args.backlog)]
    all_requests += backlog
    await enqueue_backlog(len(backlog), lambda i: enqueue_dispatch(redis, backlog[i]), release)
    meter = CpuMeter({"worker": proc.pid, "redis": redis_pid, "sim": sim_pid})
    result_keys = [dispatch_result_key(r) for r in backlog]
    done = await wait_for_results(redis, result_keys, args.drain_deadline_s, proc, 0.05)
    cpu = meter.shares()
    phases.append(("sustained", release.timestamp(), time.time()))

    arrived = await sim_arrivals(sim_url)
    measured = [latency_from(label, o, arrived, missing) for label, o, missing in offered_levels]
    times = sorted(arrived[r.room] for r in backlog if r.room in arrived)
    sustained = Throughput(
        "sustained (backlog)",
        len(times),
        times[0] if times else 0,
        times[-1] if times else 0,
        cpu,
        args.backlog - min(done, len(times)),
    )
    outcomes: dict[str, int] = {}
    for value in (await results(redis, [dispatch_result_key(r) for r in all_requests])).values():
        if isinstance(value, dict):
            outcome = str(value.get("outcome") or value.get("error") or "?")
        else:
            outcome = type(value).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    procs.stop(proc)
    return OrchestratorFigures(measured, sustained, outcomes, phases, reconcile_runs(procs))


def reconcile_runs(procs: Procs) -> list[tuple[float, float]]:
    """(start, duration) of each reconciliation pass, from its log line (JSON, logged at
    the end of the pass with `duration_s`)."""
    path = procs.log_dir / "orchestrator.log"
    runs = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if '"reconciliation"' not in line:
            continue
        try:
            entry = json.loads(line)
            end = datetime.fromisoformat(entry["timestamp"]).timestamp()
            duration = float(entry["duration_s"])
        except (ValueError, KeyError, TypeError):
            continue
        runs.append((end - duration, duration))
    return runs


# -- arq's no-op job -----------------------------------------------------------------------


@dataclass
class NoopFigures:
    label: str
    latency: Latency | None
    throughput: Throughput


async def run_noop(
    args: argparse.Namespace,
    procs: Procs,
    redis: ArqRedis,
    redis_pid: int,
    label: str,
    poll_delay_s: float,
    max_jobs: int,
    *,
    latency: bool,
) -> NoopFigures:
    """A fresh worker: enqueue-to-start at --noop-rate (when `latency`), then one backlog."""
    name = f"noop-{max_jobs}"
    proc = procs.start(
        name,
        args.cpus.pin(
            [
                *(sys.executable, "-m", "bench.noop_worker", "--redis-url", args.redis_url),
                *("--poll-delay-s", str(poll_delay_s), "--max-jobs", str(max_jobs)),
            ],
            args.cpus.sut,
        ),
    )
    run = f"{name}-{time.time_ns() % 10**9}"

    async def enqueue(job_id: str, defer_until: datetime | None = None) -> None:
        job = await redis.enqueue_job(
            NOOP, _job_id=job_id, _queue_name=QUEUE, _defer_until=defer_until
        )
        assert job is not None, job_id

    def result_key(job_id: str) -> str:
        return keys.ARQ_RESULT_PREFIX + job_id

    await enqueue(f"ready-{run}")
    if await wait_for_results(redis, [result_key(f"ready-{run}")], 60, proc) != 1:
        raise RuntimeError(f"{label}: worker ran no job within 60 s\n{procs.log_tail(name)}")

    measured = None
    if latency:
        rate = args.noop_rate
        total = round(rate * (args.warmup_s + args.measure_s))
        ids = [f"l-{run}-{i}" for i in range(total)]

        async def send(i: int) -> None:
            await enqueue(ids[i])

        offered = await offer(rate, args.warmup_s, args.measure_s, ids, send)
        result_keys = [result_key(i) for i in ids]
        done = await wait_for_results(redis, result_keys, args.drain_deadline_s, proc)
        started = await results(redis, result_keys)
        measured = latency_from(
            f"enqueue-to-start at {rate}/s",
            offered,
            {i: started[result_key(i)] for i in ids if result_key(i) in started},
            total - done,
        )

    release = backlog_release(args.backlog)
    backlog = [f"b-{run}-{i}" for i in range(args.backlog)]
    await enqueue_backlog(len(backlog), lambda i: enqueue(backlog[i], release), release)
    meter = CpuMeter({"worker": proc.pid, "redis": redis_pid})
    done = await wait_for_results(
        redis, [result_key(j) for j in backlog], args.drain_deadline_s, proc, 0.05
    )
    cpu = meter.shares()
    times = sorted((await results(redis, [result_key(j) for j in backlog])).values())
    throughput = Throughput(
        "jobs/s (backlog)",
        len(times),
        times[0] if times else 0,
        times[-1] if times else 0,
        cpu,
        args.backlog - done,
    )
    procs.stop(proc)
    return NoopFigures(label, measured, throughput)


# -- the run -------------------------------------------------------------------------------


HEADER = (
    f"  {'':<34} {'offered':>7} {'achieved':>10} {'n':>5} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'max ms':>7} {'lag ms':>6}"
)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def median_rate(rounds: list[Throughput]) -> float:
    return statistics.median(r.per_s for r in rounds)


def report(
    args: argparse.Namespace,
    cpus: Cpus,
    orch: list[OrchestratorFigures],
    defaults: NoopFigures,
    best: list[NoopFigures],
) -> None:
    fields = Settings.model_fields
    print(
        f"\none orchestrator worker: arq orchestrator.WorkerSettings, project defaults"
        f" (poll_delay_ms={fields['poll_delay_ms'].default:g},"
        f" max_jobs={fields['max_jobs'].default}), LKD_ASSIGNMENT_CHECK_DELAY_S="
        f"{ASSIGNMENT_CHECK_DELAY_S} (past the run)"
    )
    print(HEADER)
    for level in orch[0].levels:
        print(level.row())
    for i, figures in enumerate(orch, 1):
        print(replace(figures.sustained, label=f"sustained (backlog), round {i}").row())
    outcomes: dict[str, int] = {}
    for figures in orch:
        for outcome, count in figures.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    text = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    print(f"  outcomes of all {sum(outcomes.values())} events: {text}")
    passes = [figures.reconcile_runs() for figures in orch if figures.reconcile]
    if passes:
        print(
            f"  reconciliation passes (every 10 s, over the live sessions due): {', '.join(passes)}"
        )

    for label, rounds in ((defaults.label, [defaults]), (best[0].label, best)):
        print(f"\narq no-op job, {label}, JSON serializer (tasks.serialization)")
        print(HEADER)
        if rounds[0].latency is not None:
            print(rounds[0].latency.row())
        for i, noop in enumerate(rounds, 1):
            suffix = f", round {i}" if len(rounds) > 1 else ""
            print(replace(noop.throughput, label=f"jobs/s (backlog){suffix}").row())

    sustained = median_rate([figures.sustained for figures in orch])
    best_rate = median_rate([noop.throughput for noop in best])
    print("\ntargets (issue 3)")
    for level in orch[0].levels:
        rate = round(level.offered.rate_per_s)
        if rate in TARGET_P99_MS:
            limit = TARGET_P99_MS[rate]
            ok = level.p99 < limit and not level.missing
            lag = level.offered.max_lag_ms
            late = f" (sends up to {lag:.0f} ms late: the machine was busy)" if lag > 10 else ""
            print(
                f"  p99 time-to-dispatch at {rate}/s < {limit:g} ms:"
                f" {level.p99:.1f} ms  {verdict(ok)}{late}"
            )
    share = sustained / best_rate
    missing = any(figures.sustained.missing for figures in orch)
    print(
        f"  sustained >= {TARGET_SUSTAINED_SHARE:.0%} of best no-op arq (medians of"
        f" {len(orch)} rounds each): {sustained:.0f} / {best_rate:.0f} = {share:.0%}"
        f"  {verdict(share >= TARGET_SUSTAINED_SHARE and not missing)}"
    )
    print(
        f"\nwarm-up excluded: one event through the path after each worker starts, and the"
        f" first {args.warmup_s:g} s of every open-loop level; {cpus.describe()};"
        f" achieved = measured events / their send span; lag = worst lateness of a send vs"
        f" its schedule; each round a fresh worker process, orchestrator and best no-op"
        f" alternating; all times time.time_ns() of this machine."
    )


async def main_async(args: argparse.Namespace, procs: Procs, cpus: Cpus) -> None:
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    procs.start("livekit_sim", cpus.pin(sim_command(sim_port), {cpus.sim or 0}))
    await wait_ready(sim_url)
    redis = await create_redis(args.redis_url)
    try:
        redis_pid = int((await redis.info("server"))["process_id"])
        print(
            f"dispatch_latency: levels {', '.join(f'{r}/s' for r in args.rates)} for"
            f" {args.warmup_s:g} s warm-up + {args.measure_s:g} s measured; backlog"
            f" {args.backlog}, {args.rounds} rounds; {cpus.describe()}",
            flush=True,
        )

        async def orchestrator(levels: bool) -> OrchestratorFigures:
            figures = await run_orchestrator(args, procs, redis, redis_pid, sim_url, levels=levels)
            print(f"  orchestrator: {figures.sustained.per_s:.0f}/s sustained", flush=True)
            return figures

        async def noop(label: str, poll_delay_s: float, max_jobs: int, i: int) -> NoopFigures:
            figures = await run_noop(
                args, procs, redis, redis_pid, label, poll_delay_s, max_jobs, latency=i == 0
            )
            print(f"  no-op, {label}: {figures.throughput.per_s:.0f} jobs/s", flush=True)
            return figures

        best: list[NoopFigures] = []
        orch = [await orchestrator(levels=True)]
        defaults = await noop("arq defaults (poll_delay 0.5 s, max_jobs 10)", 0.5, 10, 0)
        for i in range(args.rounds):
            if i:
                orch.append(await orchestrator(levels=False))
            best.append(await noop("best settings (poll_delay 0.01 s, max_jobs 100)", 0.01, 100, i))
        report(args, cpus, orch, defaults, best)
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--measure-s", type=float, default=4.0)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument(
        "--rounds", type=int, default=5, help="sustained rounds of each, for their medians"
    )
    parser.add_argument("--noop-rate", type=int, default=200)
    parser.add_argument("--drain-deadline-s", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' log files")
    args = parser.parse_args()

    cpus = args.cpus = Cpus.plan()
    if cpus.sim is not None:
        os.sched_setaffinity(0, cpus.sut)  # inherited by Redis, started next
    log_dir = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    procs = Procs(log_dir)
    failed = False
    try:
        with LocalRedis() as server:
            args.redis_url = server.url
            if cpus.sim is not None:
                os.sched_setaffinity(0, cpus.producer)
            try:
                asyncio.run(asyncio.wait_for(main_async(args, procs, cpus), args.max_seconds))
            except (Exception, KeyboardInterrupt) as exc:
                failed = True
                print(f"\nbenchmark failed: {exc!r}", file=sys.stderr)
                for name, _ in procs.started:
                    print(f"--- {name} log tail\n{procs.log_tail(name)}", file=sys.stderr)
            finally:
                procs.stop_all()
    finally:
        if args.keep_logs or failed:
            print(f"worker logs: {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
