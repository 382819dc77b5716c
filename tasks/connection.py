"""Connecting to Redis with the JSON serializer every part must use."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from tasks.serialization import deserialize, serialize

TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
"""What a rediss:// URL's query may set, as redis-py's `from_url` reads them: the CA bundle
that signed the server's certificate, a client certificate and its key, whether the server's
certificate is required (`required`, `optional`, `none`) and its host name checked."""


def check_redis_url(url: str) -> str:
    """`url` if it is a Redis URL this project can connect with; a ValueError saying why not
    (it never repeats the URL: it may hold a password)."""
    redis_settings(url)
    return url


def redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for `url`: `redis://[[user]:password@]host[:port][/db]`, or
    `rediss://` for TLS, whose query may carry TLS_OPTIONS (e.g.
    `rediss://:pw@redis.internal:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem`). With TLS the
    server's certificate and host name are checked unless the URL says otherwise. A ValueError
    names what is wrong."""
    try:
        settings = RedisSettings.from_dsn(url)
    except (RuntimeError, ValueError):
        raise ValueError(
            "REDIS_URL is not a Redis URL: use redis://[:password@]host:6379/0 (rediss:// for "
            "TLS, unix:///path/to/redis.sock for a socket)"
        ) from None
    query = {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}
    unknown = sorted(set(query) - {"db", *TLS_OPTIONS})
    if unknown:
        raise ValueError(
            f"REDIS_URL has unknown parameters {', '.join(unknown)} (it takes db and, with "
            f"rediss://, {', '.join(TLS_OPTIONS)})"
        )
    tls = {name: query[name] for name in TLS_OPTIONS if name in query}
    if not settings.ssl:
        if tls:
            raise ValueError(f"REDIS_URL sets {', '.join(tls)} but is not rediss:// (TLS)")
        return settings
    reqs = tls.get("ssl_cert_reqs", "required")
    if reqs not in ("required", "optional", "none"):
        raise ValueError(f"REDIS_URL ssl_cert_reqs={reqs}: use required, optional or none")
    check = tls.get("ssl_check_hostname", "true" if reqs == "required" else "false").lower()
    if check not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"REDIS_URL ssl_check_hostname={check}: use true or false")
    return dataclasses.replace(
        settings,
        ssl_ca_certs=tls.get("ssl_ca_certs"),
        ssl_certfile=tls.get("ssl_certfile"),
        ssl_keyfile=tls.get("ssl_keyfile"),
        ssl_cert_reqs=reqs,
        ssl_check_hostname=check in ("true", "1", "yes"),
    )


async def create_redis(url: str) -> ArqRedis:
    """An ArqRedis for `url` (redis://host:port/db) that writes and reads JSON jobs."""
    return await create_pool(
        redis_settings(url), job_serializer=serialize, job_deserializer=deserialize
    )


def text(value: bytes | str) -> str:
    """A Redis reply as text: the pool does not decode (job bodies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value
