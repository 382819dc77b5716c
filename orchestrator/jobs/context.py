"""What every job function needs, built once per worker process at start-up."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from arq import ArqRedis

from orchestrator.gateway import LiveKitGateway
from orchestrator.settings import Settings
from orchestrator.store.sessions import SessionStore

CTX_KEY = "lkd"


@dataclass
class Context:
    settings: Settings
    redis: ArqRedis
    store: SessionStore
    livekit: LiveKitGateway

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
        ceiling = min(
            self.settings.retry_max_delay_s, self.settings.retry_base_delay_s * 2 ** (attempt - 1)
        )
        return random.uniform(ceiling / 2, ceiling)


def of(ctx: dict[str, Any]) -> Context:
    context: Context = ctx[CTX_KEY]
    return context
