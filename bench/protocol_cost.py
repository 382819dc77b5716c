"""What the hand-written protocol code saves against the libraries it stands in for, in client
CPU on this machine: call tokens (`orchestrator/gateway/tokens.py`), RESP packing and Lua
script calls (`orchestrator/store/script_pipe.py`), and CreateDispatch calls
(`orchestrator/gateway/twirp.py`). Each module's docstring quotes these figures.

- Tokens: timeit of CPU time, best of 7, against livekit-api's `AccessToken` and PyJWT's
  `jwt.encode` of the same claims.
- RESP packing: the same, against redis-py's `Connection.pack_commands`.
- Scripts: the session transition script from 200 concurrent callers to a local redis-server,
  uvloop; this process's CPU (`time.process_time`) per call, against redis-py's
  `register_script` over a 300-connection pool.
- CreateDispatch: `python -m livekit_sim` in its own process, 50 concurrent callers x 20
  rounds, a new room per call, uvloop; this process's CPU per call, against
  `LiveKitAPI.agent_dispatch.create_dispatch`.

    .venv/bin/python -m bench.protocol_cost
"""

from __future__ import annotations

import asyncio
import functools
import time
import timeit
from collections.abc import Awaitable, Callable

import jwt
import uvloop
from livekit import api
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from bench.sim_rps import API_KEY, API_SECRET, free_port, start_sim, wait_ready
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.gateway.tokens import DEFAULT_GRANTS, TOKEN_TTL_S, ApiTokenSigner
from orchestrator.gateway.twirp import TwirpClient
from orchestrator.store import lua
from orchestrator.store.script_pipe import ScriptPipe, _resp

SCRIPT_CALLERS, SCRIPT_ROUNDS = 200, 50
DISPATCH_CALLERS, DISPATCH_ROUNDS = 50, 20


def best_us(fn: Callable[[], object], run_s: float = 0.05) -> float:
    """CPU microseconds per call, best of 7 runs of about `run_s` each (CPU time, not wall
    time, so that other work on a shared machine weighs less)."""
    timer = timeit.Timer(fn, timer=time.process_time)
    number = max(10, int(run_s / (timer.timeit(10) / 10)))
    return min(timer.repeat(repeat=7, number=number)) / number * 1e6


def line(what: str, ours: float, theirs: dict[str, float]) -> None:
    others = ", ".join(
        f"{name} {us:6.1f} us ({us / ours:4.1f}x ours)" for name, us in theirs.items()
    )
    print(f"  {what:<30} ours {ours:6.1f} us; {others}")


def tokens() -> None:
    signer = ApiTokenSigner(API_KEY, API_SECRET)

    def access_token() -> str:
        grants = api.VideoGrants(room_admin=True, room="r1")
        return api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt()

    def pyjwt() -> str:
        now = int(time.time())
        claims = {
            "video": {**DEFAULT_GRANTS, "roomAdmin": True, "room": "r1"},
            "sub": "",
            "iss": API_KEY,
            "nbf": now,
            "exp": now + TOKEN_TTL_S,
        }
        return jwt.encode(claims, API_SECRET, algorithm="HS256")

    print("call token, per token (timeit, CPU time, best of 7)")
    line(
        "roomAdmin token",
        best_us(lambda: signer.authorization(roomAdmin=True, room="r1")),
        {"AccessToken": best_us(access_token), "PyJWT": best_us(pyjwt)},
    )


def packing() -> None:
    redis_py = Connection()
    sha = "0" * 40
    short = ("EVALSHA", sha, 1, "lkd:session:S_1", "dispatching,dispatched", "")
    claim = (
        "EVALSHA", sha, 8, *(f"lkd:key-{i}:S_bench1" for i in range(8)),
        "S_bench1", 0, 1_765_000_000_000, 86400, 604800, "bench-1", "bench-room-1",
        "bench-agent", 1_765_000_000_000, "lkd:session:", 1_765_000_005_000,
        "dispatch:bench-1", "0123456789abcdef", 30_000,
    )  # fmt: skip
    batch = [claim if i % 2 else short for i in range(10)]
    assert _resp([claim]) == b"".join(redis_py.pack_commands([claim]))
    print("RESP packing, per packing (timeit, CPU time, best of 7)")
    for what, commands in (
        (f"EVALSHA, {len(short)} arguments", [short]),
        (f"claim's EVALSHA, {len(claim)} arguments", [claim]),
        ("batch of 10 EVALSHAs", batch),
    ):
        line(
            what,
            best_us(functools.partial(_resp, commands)),
            {"redis-py": best_us(functools.partial(redis_py.pack_commands, commands))},
        )


async def cpu_per_call(
    call: Callable[[int], Awaitable[object]], callers: int, rounds: int
) -> tuple[float, float]:
    """(client CPU, wall) microseconds per call: `callers` concurrent, `rounds` calls each,
    after a warm-up round."""
    await asyncio.gather(*(call(-1 - n) for n in range(callers)))

    async def caller(n: int) -> None:
        for r in range(rounds):
            await call(r * callers + n)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    calls = callers * rounds
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


async def scripts(redis_url: str) -> None:
    redis = Redis.from_url(redis_url, max_connections=300)
    pipe = ScriptPipe(redis)
    source = lua.TRANSITION
    ours, theirs = pipe.script(source), redis.register_script(source)
    session_keys = [f"lkd:session:S_bench{n}" for n in range(SCRIPT_CALLERS)]
    for key in session_keys:
        await redis.hset(key, mapping={"status": "dispatching", "dispatch_id": ""})

    def args(i: int) -> list[object]:
        return ["dispatching,dispatched", "", "checked_at", i]

    async def through_pipe(i: int) -> object:
        return await pipe.run(ours, [session_keys[i % SCRIPT_CALLERS]], args(i))

    async def through_redis_py(i: int) -> object:
        return await theirs(keys=[session_keys[i % SCRIPT_CALLERS]], args=args(i))

    try:
        pipe_cpu, pipe_wall = await cpu_per_call(through_pipe, SCRIPT_CALLERS, SCRIPT_ROUNDS)
        py_cpu, py_wall = await cpu_per_call(through_redis_py, SCRIPT_CALLERS, SCRIPT_ROUNDS)
    finally:
        await pipe.aclose()
        await redis.aclose()
    print(
        f"Lua script call, client CPU per call ({SCRIPT_CALLERS} concurrent callers x"
        f" {SCRIPT_ROUNDS}, local redis-server, uvloop)"
    )
    print(f"  ScriptPipe.run        {pipe_cpu:6.1f} us CPU ({pipe_wall:6.1f} us wall)")
    print(
        f"  redis-py script       {py_cpu:6.1f} us CPU ({py_wall:6.1f} us wall),"
        f" {py_cpu / pipe_cpu:.1f}x ours"
    )


async def dispatches(url: str) -> None:
    await wait_ready(url)
    client = TwirpClient(url, timeout_s=10)
    signer = ApiTokenSigner(API_KEY, API_SECRET)
    lk = api.LiveKitAPI(url, API_KEY, API_SECRET)

    def request(prefix: str, i: int) -> api.CreateAgentDispatchRequest:
        return api.CreateAgentDispatchRequest(
            agent_name="bench", room=f"{prefix}-{i}", metadata="{}"
        )

    async def ours(i: int) -> object:
        asked = request("ours", i)
        return await client.call(
            "AgentDispatchService",
            "CreateDispatch",
            asked,
            api.AgentDispatch,
            signer.authorization(roomAdmin=True, room=asked.room),
        )

    async def livekit_api(i: int) -> object:
        return await lk.agent_dispatch.create_dispatch(request("livekit-api", i))

    try:
        our_cpu, our_wall = await cpu_per_call(ours, DISPATCH_CALLERS, DISPATCH_ROUNDS)
        lk_cpu, lk_wall = await cpu_per_call(livekit_api, DISPATCH_CALLERS, DISPATCH_ROUNDS)
    finally:
        await client.aclose()
        await lk.aclose()
    print(
        f"CreateDispatch, client CPU per call ({DISPATCH_CALLERS} concurrent x"
        f" {DISPATCH_ROUNDS} rounds, livekit_sim in its own process, uvloop)"
    )
    print(f"  TwirpClient + ApiTokenSigner  {our_cpu:6.1f} us CPU ({our_wall:6.1f} us wall)")
    print(
        f"  LiveKitAPI.agent_dispatch     {lk_cpu:6.1f} us CPU ({lk_wall:6.1f} us wall),"
        f" {lk_cpu / our_cpu:.1f}x ours"
    )


def main() -> None:
    tokens()
    packing()
    with LocalRedis() as server:
        uvloop.run(scripts(server.url))
    port = free_port()
    sim = start_sim(port)
    try:
        uvloop.run(dispatches(f"http://127.0.0.1:{port}"))
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    main()
