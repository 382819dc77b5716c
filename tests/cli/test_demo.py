"""`orchestrator demo` as a newcomer runs it: with nothing configured it starts everything,
its sample events end up dispatched, deduplicated, rejected and failed as announced, the HTTP
service answers, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tasks import keys
from tests.cli.conftest import REPO
from tests.support.waiting import eventually

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def descendants(root: int) -> set[int]:
    """Every process below `root`, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LKD_", "LIVEKIT_", "AGENT_", "REDIS_"))
    }
    env["PYTHONPATH"] = str(REPO)
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "demo",
             "--duration-s", "240", "--event-interval-s", "2", "--log-dir", str(tmp_path)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    yield proc, out_path
    if proc.poll() is None:  # the test failed before its own SIGINT: clean up the same way
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _result(redis: Redis, job_id: str) -> dict[str, Any] | None:
    raw = await redis.get(keys.ARQ_RESULT_PREFIX + job_id)
    return json.loads(raw)["r"] if raw else None


async def _reports(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(f[b"report"]) for _, f in await redis.xrange(keys.RESULTS_STREAM)]


async def test_demo_runs_everything_and_ctrl_c_stops_it_all(
    demo: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, out_path = demo

    def output() -> str:
        text = out_path.read_text(errors="replace")
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}):\n{text}")
        return text

    await eventually(lambda: "[summary]" in output(), timeout_s=150, what="the demo summary")
    text = output()
    state_dir = Path(re.search(r"logs in (\S+)", text)[1])  # type: ignore[index]
    state = json.loads((state_dir / "demo.json").read_text())
    for part in ("Redis", "the LiveKit sim", "the orchestrator worker", "the HTTP service",
                 "the agent worker (demo-agent)"):  # fmt: skip
        assert f"ready  {part}" in text
    assert state["dashboard_url"] in text
    assert state["api_token"] in text
    assert state["sim"] is True
    run = state["run_id"]

    redis: Redis = Redis.from_url(state["redis_url"])
    try:
        # The same event twice is one job; a second event for a live room is deduplicated.
        first = await eventually(lambda: _result(redis, f"dispatch:{run}-evt-1"), what="evt-1")
        assert first["outcome"] == "dispatched"
        # The opening sends a second event for support-2 while its agent is live.
        second = await eventually(
            lambda: _result(redis, f"dispatch:{run}-again-support-2"), what="the second event"
        )
        assert second["outcome"] == "deduplicated"
        room_sessions = await redis.zrange(keys.room_sessions_key(f"{run}-support-2"), 0, -1)
        assert [s.decode() for s in room_sessions] == [second["session_id"]]
        # The invalid event is rejected with its reasons, on the dead-letter stream.
        rejected = await eventually(
            lambda: _result(redis, f"dispatch:{run}-invalid-1"), what="the invalid event"
        )
        assert rejected["outcome"] == "rejected"
        assert "room" in rejected["reason"]
        assert "metadata" in rejected["reason"]

        async def reports_in() -> list[dict[str, Any]] | None:
            reports = await _reports(redis)
            reasons = " ".join(f"{r['end_reason']} {r.get('error')}" for r in reports)
            done = "the caller hung up" in reasons and "billing-agent" in reasons
            return reports if done and any(r["status"] == "completed" for r in reports) else None

        reports = await eventually(reports_in, timeout_s=120, what="the demo's reports")
        [hung_up] = [r for r in reports if r["end_reason"] == "the caller hung up"]
        assert hung_up["status"] == "completed"
        assert hung_up["room"] == f"{run}-callback-1"
        [unserved] = [r for r in reports if "billing-agent" in (r.get("error") or "")]
        assert unserved["status"] == "failed"
        assert "no agent worker accepted agent_name='billing-agent'" in unserved["error"]
    finally:
        await redis.aclose()

    headers = {"Authorization": f"Bearer {state['api_token']}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(state["http_url"] + "/v1/sessions", headers=headers) as answer:
            assert answer.status == 200
            assert await answer.json()
        async with http.get(state["dashboard_url"]) as answer:
            assert answer.status == 200
        async with http.get(state["http_url"] + "/healthz") as answer:
            assert answer.status == 200

    children = descendants(proc.pid)
    assert len(children) >= 6  # redis, sim, worker, http, agent and its job processes
    proc.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(proc.wait, 90)
    assert code == 0, out_path.read_text()
    assert "stopped; the logs stay in" in out_path.read_text()
    left = [pid for pid in children if alive(pid)]
    assert left == [], f"processes left running: {left}"


async def test_the_demos_processes_do_not_outlive_it_however_it_is_stopped(
    demo: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, out_path = demo
    await eventually(
        lambda: "ready  the agent worker" in out_path.read_text(errors="replace"),
        timeout_s=150,
        what="the demo started",
    )
    children = descendants(proc.pid)
    assert len(children) >= 6
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)  # the fault: SIGKILL before it could stop them in order
    proc.kill()
    proc.wait()
    await eventually(
        lambda: not [pid for pid in children if alive(pid)],
        timeout_s=60,
        what=f"the demo's processes to stop: {[p for p in children if alive(p)]}",
    )
