"""What every handler of the HTTP service shares, built when the app starts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from arq import ArqRedis
from livekit import api

from orchestrator.settings import Settings
from orchestrator.store.sessions import SessionStore
from tasks import keys


@dataclass
class Service:
    settings: Settings
    redis: ArqRedis
    store: SessionStore
    webhook_receiver: api.WebhookReceiver
    worker_seen_at: float | None = field(default=None)
    """time.monotonic() when this process last saw a worker's health-check key."""
    redis_down_since: float | None = field(default=None)
    """time.monotonic() when this process first found Redis unreachable, while it is."""

    async def worker_check(self) -> tuple[bool, str]:
        """Whether an orchestrator worker checked in within worker_heartbeat_max_age_s."""
        info = await self.redis.get(keys.WORKER_HEALTH_CHECK)
        now = time.monotonic()
        if info is not None:
            self.worker_seen_at = now
            return True, info.decode(errors="replace")
        max_age = self.settings.worker_heartbeat_max_age_s
        if self.worker_seen_at is not None and now - self.worker_seen_at <= max_age:
            ago = now - self.worker_seen_at
            return True, f"last worker check-in seen {ago:.0f} s ago"
        return False, (
            f"no orchestrator worker has checked in (arq key {keys.WORKER_HEALTH_CHECK} absent) "
            f"within {max_age:g} s: is `arq orchestrator.WorkerSettings` running against "
            "this REDIS_URL?"
        )


SERVICE = web.AppKey("lkd_service", Service)


def of(request: web.Request) -> Service:
    return request.app[SERVICE]
