"""Worker metrics shared through Redis, so one /metrics shows the figures of every worker.

Workers run in their own processes (often on other hosts), and the HTTP service that serves
/metrics in yet another one. Each worker adds what its counters and histograms gained since
its last flush to one Redis hash (HINCRBYFLOAT, every `metrics_flush_interval_s` and at
shutdown); the HTTP service reads that hash at scrape time and exposes it under the metric
definitions of `orchestrator.metrics`. The totals are cluster-wide and survive worker
restarts; they reset only when Redis loses the hash, which Prometheus treats as a counter
reset. Gauges are not shared: the HTTP service computes them from Redis at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import structlog
from prometheus_client.metrics_core import Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from orchestrator import metrics
from tasks import keys

SHARED: tuple[Any, ...] = (
    metrics.EVENTS_RECEIVED,
    metrics.DISPATCH_OUTCOMES,
    metrics.TIME_TO_DISPATCH,
    metrics.WAIT_SECONDS,
    metrics.LIVEKIT_CALLS,
    metrics.REPORTS,
    metrics.DUPLICATE_REPORTS,
    metrics.REJECTED_JOBS,
    metrics.AGENT_DEATHS,
    metrics.RESTART_SECONDS,
)

log = structlog.get_logger("orchestrator.metrics")

# What this process has already added to Redis, per sample. Module-wide, so that several
# workers in one process (tests) never add the same increments twice.
_pushed: dict[str, float] = {}


def _field(name: str, labels: dict[str, str]) -> str:
    return name + json.dumps(sorted(labels.items()), separators=(",", ":"))


def _parse_field(field: str) -> tuple[str, dict[str, str]]:
    cut = field.index("[")
    return field[:cut], dict(json.loads(field[cut:]))


def _local_samples() -> dict[str, tuple[str, float]]:
    """Every local sample: field → (its series, value). A series is one label set of one
    metric (a histogram's buckets, count and sum share it)."""
    values: dict[str, tuple[str, float]] = {}
    for collector in SHARED:
        for family in collector.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                series = _field(family.name, {k: v for k, v in sample.labels.items() if k != "le"})
                values[_field(sample.name, sample.labels)] = (series, sample.value)
    return values


def take_delta() -> dict[str, float]:
    """What the local metrics gained since the last call, marked as pushed. Every sample of
    a series that changed is included, even at zero, so that a histogram's buckets all
    exist in Redis (also after Redis lost the hash)."""
    samples = _local_samples()
    changed = {series for field, (series, value) in samples.items() if _pushed.get(field) != value}
    delta: dict[str, float] = {}
    for field, (series, value) in samples.items():
        if series in changed:
            delta[field] = value - _pushed.get(field, 0.0)
            _pushed[field] = value
    return delta


def _give_back(delta: dict[str, float]) -> None:
    for field, value in delta.items():
        _pushed[field] = _pushed.get(field, 0.0) - value


async def flush(redis: Redis) -> int:
    """Add this process's new counts to Redis; the number of samples written. On a Redis
    error nothing is lost: the counts are sent with the next flush."""
    delta = take_delta()
    if not delta:
        return 0
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for field, value in delta.items():
                pipe.hincrbyfloat(keys.METRICS, field, value)
            await pipe.execute()
    except (RedisError, OSError):
        _give_back(delta)
        raise
    return len(delta)


class Flusher:
    """Flushes every `interval_s` in the background while a worker runs, and once at stop."""

    def __init__(self, redis: Redis, interval_s: float) -> None:
        self._redis = redis
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Flusher:
        self._task = asyncio.create_task(self._run(), name="lkd-metrics-flush")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await flush(self._redis)
            except (RedisError, OSError) as exc:
                log.warning("metrics flush failed; will retry", error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisError, OSError):
            await flush(self._redis)


async def read(redis: Redis) -> dict[str, float]:
    """The cluster-wide samples, for `families`."""
    raw: dict[bytes, bytes] = await redis.hgetall(keys.METRICS)  # type: ignore[misc]
    return {k.decode(): float(v) for k, v in raw.items()}


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def _order(sample: tuple[str, dict[str, str], float]) -> tuple[Any, ...]:
    name, labels, _ = sample
    series = sorted((k, v) for k, v in labels.items() if k != "le")
    le = labels.get("le")
    bound = math.inf if le is None or le == "+Inf" else float(le)
    return (series, name.endswith("_bucket") is False, name, bound)


def families(values: dict[str, float]) -> Iterator[Metric]:
    """The shared metrics, defined as in `orchestrator.metrics`, with the values read."""
    samples = [(*_parse_field(field), value) for field, value in values.items()]
    for collector in SHARED:
        for local in collector.collect():
            family = Metric(local.name, local.documentation, local.type, local.unit)
            names = {local.name + suffix for suffix in _SUFFIXES.get(local.type, ())}
            mine = sorted((s for s in samples if s[0] in names), key=_order)
            if not mine and not getattr(collector, "_labelnames", ()):
                mine = [(s.name, s.labels, 0.0) for s in local.samples if s.name in names]
            for name, labels, value in mine:
                family.add_sample(name, labels, value)
            yield family


class StaticCollector:
    """A prometheus collector that yields metrics prepared beforehand (read asynchronously)."""

    def __init__(self, prepared: Iterable[Metric]) -> None:
        self._prepared = list(prepared)

    def collect(self) -> Iterator[Metric]:
        yield from self._prepared
