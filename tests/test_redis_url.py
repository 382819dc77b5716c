"""REDIS_URL: one reading of it for every part, TLS options included (a managed Redis whose
certificate a private CA signed), and a clear error that never repeats the URL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from arq import create_pool
from redis.exceptions import ConnectionError as RedisConnectionError

from agent.errors import ConfigError as AgentConfigError
from agent.settings import load_settings as load_agent_settings
from orchestrator.demo.local_redis import LocalRedis
from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings
from orchestrator.store.connections import create_jobs_redis, worker_pool
from tasks.connection import create_redis, redis_settings
from tests.support.tls import self_signed, tls_front

pytestmark = pytest.mark.integration


def test_a_tls_url_carries_its_ca_bundle_and_client_certificate() -> None:
    settings = redis_settings(
        "rediss://:pw@redis.internal:6380/2?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem"
    )
    assert (settings.host, settings.port, settings.database, settings.ssl) == (
        "redis.internal", 6380, 2, True,
    )  # fmt: skip
    assert (settings.ssl_ca_certs, settings.ssl_certfile, settings.ssl_keyfile) == (
        "/ca.pem", "/c.pem", "/k.pem",
    )  # fmt: skip
    assert (settings.ssl_cert_reqs, settings.ssl_check_hostname) == ("required", True)
    lax = redis_settings("rediss://redis.internal?ssl_cert_reqs=none")
    assert (lax.ssl_cert_reqs, lax.ssl_check_hostname) == ("none", False)
    assert redis_settings("redis://localhost:6379/0").ssl is False


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not-a-url", "is not a Redis URL"),
        ("http://:secret@host", "is not a Redis URL"),
        ("redis://:secret@host?ssl_ca_certs=/ca.pem", "is not rediss://"),
        ("rediss://:secret@host?ssl_ca_cert=/ca.pem", "unknown parameters ssl_ca_cert"),
        ("rediss://:secret@host?ssl_cert_reqs=maybe", "use required, optional or none"),
    ],
)
def test_a_wrong_url_says_what_is_wrong_without_repeating_it(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as raised:
        redis_settings(url)
    assert "secret" not in str(raised.value)


def test_settings_refuse_a_wrong_url_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_URL: .*REDIS_URL has unknown parameters tls"):
        load_settings(
            redis_url="rediss://:secret@host?tls=1", livekit_url="ws://lk", livekit_api_key="k",
            livekit_api_secret="s",
        )  # fmt: skip
    with pytest.raises(AgentConfigError, match=r"REDIS_URL: .*is not a Redis URL"):
        load_agent_settings(redis_url="not-a-url")


async def test_every_pool_connects_over_tls_with_the_urls_ca_bundle(
    redis_server: LocalRedis, tmp_path: Path
) -> None:
    server_tls, _ = self_signed(tmp_path, "127.0.0.1")
    async with tls_front(redis_server.port, server_tls) as port:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'cert.pem'}"
        producer = await create_redis(url)
        jobs = await create_jobs_redis(url)
        worker = worker_pool(url)
        try:
            for pool in (producer, jobs, worker):
                assert await pool.ping()
        finally:
            for pool in (producer, jobs, worker):
                await pool.aclose()

        # With another CA's bundle the server's certificate is not trusted: no connection.
        (tmp_path / "other").mkdir()
        self_signed(tmp_path / "other", "127.0.0.1")
        other_ca = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'other' / 'cert.pem'}"
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await create_pool(dataclasses.replace(redis_settings(other_ca), conn_retries=0))
