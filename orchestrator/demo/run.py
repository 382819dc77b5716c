"""`orchestrator demo` (`make demo`): the whole system on one machine, fed with sample events.

Starts a private Redis (AOF on), the LiveKit sim (or uses the server LIVEKIT_URL names), one
orchestrator worker, one agent worker and the HTTP service, each in its own process group with
its log in a fresh directory; pushes sample events; prints the dashboard URL and a live
summary until Ctrl-C (or --duration-s), then stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.cli.connect import open_redis
from orchestrator.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from orchestrator.cli.output import Output
from orchestrator.demo.events import Scenario, Tally
from orchestrator.demo.local_redis import find_redis_server, free_port
from orchestrator.demo.processes import ProcessExited, Supervisor
from orchestrator.errors import OrchestratorError
from orchestrator.settings import ClientSettings, child_environment
from tasks import keys

AGENT_NAME = "demo-agent"
API_KEY = "demo-key"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_HANDLER = "orchestrator.demo.handler:demo_session"
WEBHOOK_PATH = "/livekit/webhook"
DASHBOARD_PATH = "/"
START_TIMEOUT_S = 120.0
SUMMARY_EVERY_S = 1.0
PLAIN_SUMMARY_EVERY_S = 5.0
STOP_ORDER = [["agent", "http"], ["worker", "livekit"], ["redis"]]
"""Producers of work stop before those they hand it to; Redis, which all of them use, last."""


class DemoError(OrchestratorError):
    """The demo cannot run as configured; the message says what to change."""


def run_demo(args: argparse.Namespace, out: Output, client: ClientSettings) -> int:
    try:
        demo = Demo(args, out, client)
    except DemoError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    return asyncio.run(demo.run())


class Demo:
    def __init__(self, args: argparse.Namespace, out: Output, client: ClientSettings) -> None:
        self.args = args
        self.out = out
        self.run_id = uuid.uuid4().hex[:4]
        self.dir = Path(tempfile.mkdtemp(prefix="lkd-demo-", dir=args.log_dir))
        self.supervisor = Supervisor(self.dir)
        self.stop = asyncio.Event()
        self._started = time.monotonic()
        self.api_token = secrets.token_urlsafe(18)
        self.redis_port = free_port()
        self.http_port = args.http_port or free_port()
        if client.livekit_url:
            if not (client.livekit_api_key and client.livekit_api_secret):
                raise DemoError(
                    "LIVEKIT_URL is set, so the demo uses that server: "
                    "set LIVEKIT_API_KEY and LIVEKIT_API_SECRET too"
                )
            self.sim_url: str | None = None
            self.livekit_url = client.livekit_url
            self.api_key = client.livekit_api_key
            self.api_secret = client.livekit_api_secret.get_secret_value()
        else:
            self.sim_url = f"http://127.0.0.1:{free_port()}"
            self.livekit_url = self.sim_url
            self.api_key = API_KEY
            self.api_secret = secrets.token_urlsafe(32)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """What every child is given: the settings of both the orchestrator and the agent."""
        return {
            "REDIS_URL": self.redis_url,
            "LIVEKIT_URL": self.livekit_url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
            "AGENT_NAME": AGENT_NAME,
            "LKD_API_TOKEN": self.api_token,
            "LKD_HTTP_HOST": "127.0.0.1",
            "LKD_HTTP_PORT": str(self.http_port),
            "LKD_ASSIGNMENT_CHECK_DELAY_S": "2",
            "LKD_ASSIGNMENT_ATTEMPTS": "2",
            "LKD_REPORT_GRACE_S": "15",
            "LKD_RECONCILE_INTERVAL_S": "5",
            "AGENT_SESSION_HANDLER": DEMO_HANDLER,
            "AGENT_HEALTH_HOST": "127.0.0.1",
            "AGENT_HEALTH_PORT": "0",
            "AGENT_NUM_IDLE_PROCESSES": "1",
            "AGENT_MAX_SESSIONS": "12",
            "AGENT_COUNT_CPU_LOAD": "false",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        code = EXIT_OK
        try:
            if not await self._until_stopped(self._start()):
                return EXIT_OK
            self._write_state()
            self._banner()
            await self._until_stopped(self._feed_and_watch())
        except ProcessExited as exc:
            self.out.error(str(exc))
            code = EXIT_FAILED
        finally:
            self._line("")
            self.out.line("stopping everything the demo started ...")
            await self.supervisor.stop_all(STOP_ORDER)
            self.out.line(f"stopped; the logs stay in {self.dir}")
        return code

    async def _until_stopped(self, work: Awaitable[None]) -> bool:
        """Run `work` until it ends, Ctrl-C or --duration-s; False when stopped early."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop.wait())
        duration = self.args.duration_s
        done, _ = await asyncio.wait(
            {task, stopper},
            timeout=None if duration is None else max(0.0, duration - self._elapsed()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        stopper.cancel()
        if task in done:
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    async def _start(self) -> None:
        self.out.line(f"starting the demo; logs in {self.dir}")
        py = sys.executable
        env = child_environment(self.env())
        self.supervisor.start("redis", self._redis_argv(), env)
        await self._wait("Redis", self._redis_ready)
        if self.sim_url:
            port = self.sim_url.rsplit(":", 1)[1]
            self.supervisor.start(
                "livekit",
                [py, "-m", "livekit_sim", "--port", port,
                 "--keys", f"{API_KEY}: {self.api_secret}",
                 "--webhook-url", self.http_url + WEBHOOK_PATH,
                 "--empty-timeout-s", "60", "--departure-timeout-s", "5",
                 "--missing-room-delay-s", "1"],
                env,
            )  # fmt: skip
            await self._wait("the LiveKit sim", self._sim_ready)
        # The worker checks the LiveKit credentials as it starts: LiveKit must be up first.
        self.supervisor.start("worker", [py, "-m", "arq", "orchestrator.WorkerSettings"], env)
        self.supervisor.start("http", [py, "-m", "orchestrator", "serve"], env)
        self.supervisor.start("agent", [py, "-m", "agent", "start", "--log-level", "INFO"], env)
        await self._wait("the orchestrator worker", self._worker_ready)
        await self._wait("the HTTP service", self._http_ready)
        await self._wait(f"the agent worker ({AGENT_NAME})", self._agent_ready)

    def _redis_argv(self) -> list[str]:
        return [
            find_redis_server(),
            "--bind", "127.0.0.1", "--port", str(self.redis_port),
            "--dir", str(self.dir), "--appendonly", "yes", "--save", "",
            "--protected-mode", "no", "--loglevel", "notice",
        ]  # fmt: skip

    async def _wait(self, what: str, ready: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self.supervisor.check_all_alive()
            with contextlib.suppress(Exception):
                if await ready():
                    self.out.line(f"  {self.out.paint('ready', 'green')}  {what}")
                    return
            if time.monotonic() > deadline:
                raise ProcessExited(
                    f"{what} was not ready in {START_TIMEOUT_S:g} s: see {self.dir}"
                )
            await asyncio.sleep(0.2)

    async def _redis_ready(self) -> bool:
        redis = await open_redis(self.redis_url, timeout_s=1)
        await redis.aclose()
        return True

    async def _get_json(self, url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as answer:
            answer.raise_for_status()
            return await answer.json()

    async def _sim_ready(self) -> bool:
        return bool(await self._get_json(f"{self.sim_url}/_sim/state"))

    async def _http_ready(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=2)
        url = self.http_url + "/healthz"
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as answer:
            return answer.status < 500

    async def _worker_ready(self) -> bool:
        redis = await open_redis(self.redis_url, timeout_s=1)
        try:
            return bool(await redis.exists(keys.WORKER_HEALTH_CHECK))
        finally:
            await redis.aclose()

    async def _agent_ready(self) -> bool:
        if self.sim_url:
            state = await self._get_json(f"{self.sim_url}/_sim/state")
            return any(w.get("agent_name") == AGENT_NAME for w in state.get("workers") or [])
        log = (self.dir / "agent.log").read_text(errors="replace")
        return "registered with LiveKit" in log

    def _write_state(self) -> None:
        """`demo.json` (for tools and tests) and `env` (to point the CLI at this demo)."""
        state = {
            "redis_url": self.redis_url,
            "livekit_url": self.livekit_url,
            "sim": self.sim_url is not None,
            "http_url": self.http_url,
            "dashboard_url": self.http_url + DASHBOARD_PATH,
            "api_token": self.api_token,
            "agent_name": AGENT_NAME,
            "run_id": self.run_id,
            "log_dir": str(self.dir),
            "pids": {c.name: c.pid for c in self.supervisor.children},
        }
        (self.dir / "demo.json").write_text(json.dumps(state, indent=2))
        env_file = self.dir / "env"
        env_file.touch(mode=0o600)
        env_file.write_text(
            "".join(f"export {k}='{v}'\n" for k, v in self.env().items() if k[0] != "P")
        )

    def _banner(self) -> None:
        paint, out = self.out.paint, self.out
        out.line("")
        out.line(
            paint("lk-dispatch demo: everything runs on this machine; Ctrl-C stops it", "bold")
        )
        out.fields(
            [
                ("dashboard", paint(self.http_url + DASHBOARD_PATH, "cyan")),
                ("API token", f"{self.api_token}  (Authorization: Bearer <token>)"),
                ("LiveKit", self.livekit_url + ("  (livekit_sim)" if self.sim_url else "")),
                ("Redis", self.redis_url),
                ("agent_name", AGENT_NAME),
                ("logs", f"{self.dir}/{{redis,livekit,worker,agent,http}}.log"),
                ("use the CLI", f"source {self.dir}/env; orchestrator sessions"),
            ]
        )
        if not self.sim_url:
            out.line(
                "  (a real LiveKit server: no simulated caller; point its webhook at "
                f"{self.http_url}{WEBHOOK_PATH} to end sessions as rooms close)"
            )
        out.line("")

    def _line(self, text: str) -> None:
        """A message line; in a terminal it replaces the summary line, which is redrawn."""
        if self.out.colour:
            self.out.stream.write("\r\x1b[2K")
        if text:
            self.out.line(text)

    async def _feed_and_watch(self) -> None:
        redis = await open_redis(self.redis_url)
        scenario = Scenario(
            redis, self.run_id, AGENT_NAME, self.sim_url, lambda m: self._line(f"  * {m}")
        )
        tally = Tally()
        try:
            await scenario.opening()
            next_event = time.monotonic() + self.args.event_interval_s
            next_plain = 0.0
            while True:
                self.supervisor.check_all_alive()
                if time.monotonic() >= next_event:
                    await scenario.next_event()
                    next_event = time.monotonic() + self.args.event_interval_s
                await tally.refresh(redis, scenario.sent)
                if self.out.colour:
                    self.out.stream.write("\r\x1b[2K" + tally.line())
                    self.out.stream.flush()
                elif time.monotonic() >= next_plain:
                    self.out.line("[summary] " + tally.line())
                    next_plain = time.monotonic() + PLAIN_SUMMARY_EVERY_S
                await asyncio.sleep(SUMMARY_EVERY_S)
        finally:
            await scenario.aclose()
            await redis.aclose()
