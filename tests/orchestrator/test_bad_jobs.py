"""A worker survives any bytes in the queue and in job keys: each bad job becomes a dead letter
with a reason a person can act on, and the worker goes on with the good ones."""

from __future__ import annotations

import json
import time

import pytest
from arq import ArqRedis

from livekit_sim import LiveKitSim
from orchestrator.store import dead_letters
from tasks import DispatchRequest, enqueue_dispatch, keys
from tests.orchestrator.conftest import Spawn, results, worker_checked_in
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

EVENT = {"event_id": "e-raw", "room": "r-raw"}


def job(**fields: object) -> bytes:
    body = {"t": 1, "f": "dispatch_agent", "a": [EVENT], "k": {}, "et": int(time.time() * 1000)}
    return json.dumps({**body, **fields}).encode()


BAD_JOBS: dict[str, tuple[bytes, str]] = {
    "try-as-text": (job(t="1"), "'t' must be null or an integer from 0 to 1"),
    "try-too-high": (job(t=1000), "'t' must be null or an integer from 0 to 1"),
    "enqueued-in-year-3e9": (job(et=10**20), "'et' must be the enqueue time"),
    "an-s-key": (b'{"s": 1, "a": []}', "job is missing field 'f'"),
    "nested-deep": (b"[" * 10_000 + b"]" * 10_000, "nested too deep"),
    "no-arguments": (job(a=[]), "dispatch_agent takes 1 to 2 arguments"),
    "four-arguments": (job(a=[EVENT, 0, 1, 2]), "dispatch_agent takes 1 to 2 arguments"),
    "unknown-keyword": (job(k={"priority": 3}), "takes no keyword argument 'priority'"),
    "generation-text": (job(a=[EVENT, "x"]), "generation (its second argument) must be"),
    "unknown-function": (job(f="exec"), "'f' names no job function"),
}


async def test_no_bytes_in_the_queue_stop_a_worker_and_each_bad_job_is_a_dead_letter(
    sim: LiveKitSim, arq_redis: ArqRedis, spawn_worker: Spawn
) -> None:
    now_ms = int(time.time() * 1000)
    for name, (body, _) in BAD_JOBS.items():
        await arq_redis.set(f"arq:job:bad:{name}", body, px=60_000)
        await arq_redis.zadd(keys.QUEUE_NAME, {f"bad:{name}": now_ms})
    # A queue entry whose job id is not even UTF-8 (arq decodes ids before anything else).
    await arq_redis.set(b"arq:job:bad:\xff\xfe", job(), px=60_000)
    await arq_redis.zadd(keys.QUEUE_NAME, {b"bad:\xff\xfe": now_ms})

    workers = [spawn_worker(), spawn_worker()]
    await eventually(lambda: worker_checked_in(arq_redis), timeout_s=20, what="workers polling")
    good = [
        await enqueue_dispatch(arq_redis, DispatchRequest(event_id=f"good-{i}", room=f"g-{i}"))
        for i in range(3)
    ]
    outcomes = await eventually(
        lambda: results(arq_redis, [j.job_id for j in good]), timeout_s=20, what="good events"
    )
    assert [o["outcome"] for o in outcomes] == ["dispatched"] * 3

    async def letters() -> dict[str, dead_letters.DeadLetter] | None:
        found = {d.job_id: d for d in await dead_letters.recent(arq_redis, 100)}
        return found if len(found) >= len(BAD_JOBS) + 1 else None

    found = await eventually(letters, timeout_s=20, what="a dead letter for every bad job")
    for name, (_, reason) in BAD_JOBS.items():
        letter = found[f"bad:{name}"]
        assert reason in letter.reason, (name, letter.reason)
        assert letter.kind in ("malformed_job", "invalid_event")
    undecodable = found["bad:\ufffd\ufffd"]
    assert "not UTF-8" in undecodable.reason
    assert await arq_redis.zscore(keys.QUEUE_NAME, b"bad:\xff\xfe") is None
    assert not await arq_redis.exists(b"arq:job:bad:\xff\xfe")
    for worker in workers:
        assert worker.poll() is None, "a worker exited"
        assert "Traceback" not in worker.log_path.read_text()  # type: ignore[attr-defined]
