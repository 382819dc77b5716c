"""Who held a room's claim over time, read every few milliseconds: to show that a room never
went without its holder while one session took over from another."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tasks.keys import room_claim_key


class ClaimWatch:
    """Each holder of the room's claim in turn (None: nobody), from now until `stop()`."""

    def __init__(self, redis: Redis, room: str) -> None:
        self.redis, self.room = redis, room
        self.holders: list[str | None] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            raw = await self.redis.get(room_claim_key(self.room))
            holder = raw.decode() if raw else None
            if not self.holders or self.holders[-1] != holder:
                self.holders.append(holder)
            await asyncio.sleep(0.002)

    async def stop(self) -> list[str | None]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.holders
