"""Events as a producer sends them, for tests that follow one through the whole pipeline."""

from __future__ import annotations

import uuid
from typing import Any

from arq import ArqRedis

from tasks import DispatchRequest, enqueue_dispatch
from tasks.models import session_id_for


def new_event_id() -> str:
    return f"ev-{uuid.uuid4().hex[:12]}"


async def send_event(
    queue: ArqRedis, room: str, metadata: dict[str, Any] | None = None, **fields: Any
) -> str:
    """Enqueue a fresh event for `room` with the producer helper (with the event's other
    `fields`); its session id."""
    event_id = new_event_id()
    await enqueue_dispatch(
        queue, DispatchRequest(event_id=event_id, room=room, metadata=metadata or {}, **fields)
    )
    return session_id_for(event_id)
