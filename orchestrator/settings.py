"""The orchestrator's settings: read from the environment once, here and nowhere else.

LiveKit and Redis use the ecosystem's variable names; everything else is `LKD_<FIELD>` with
a safe default. Durations carry their unit in the name.
"""

from __future__ import annotations

import os

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import ConfigError
from tasks.connection import check_redis_url
from tasks.models import check_agent_name
from tasks.validation import Location, problems

_HINTS = {
    "livekit_url": "LIVEKIT_URL is not set: the LiveKit server URL, e.g. ws://localhost:7880",
    "livekit_api_key": "LIVEKIT_API_KEY is not set: the API key of your LiveKit server",
    "livekit_api_secret": "LIVEKIT_API_SECRET is not set: the API secret of that key",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LKD_", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(
        "redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL", "LKD_REDIS_URL")
    )
    livekit_url: str = Field(min_length=1, validation_alias=AliasChoices("LIVEKIT_URL"))
    livekit_api_key: str = Field(min_length=1, validation_alias=AliasChoices("LIVEKIT_API_KEY"))
    livekit_api_secret: SecretStr = Field(
        min_length=1, validation_alias=AliasChoices("LIVEKIT_API_SECRET")
    )
    agent_name: str = Field(
        "support-agent", validation_alias=AliasChoices("AGENT_NAME", "LKD_AGENT_NAME")
    )
    """Agent name for events that name none; the agent worker reads the same AGENT_NAME."""

    livekit_timeout_s: float = 5.0
    """Timeout of one LiveKit API call."""
    dispatch_max_tries: int = 6
    """Tries of a dispatch on transient LiveKit errors before it fails."""
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 30.0
    assignment_check_delay_s: float = 5.0
    """How long after CreateDispatch to check that a worker took the job."""
    assignment_attempts: int = 3
    """Dispatches tried for a session before it fails with 'no agent worker accepted'."""
    report_grace_s: float = 30.0
    """How long a session whose agent is gone may wait for its report before it is `lost`."""
    agent_heartbeats: bool = True
    """Agents send heartbeats (this project's agent does): a session whose agent took the job
    but sent none within report_grace_s, and that no agent worker holds, is `lost`. Turn off
    for agents that do not."""
    agent_worker_timeout_s: float = 10.0
    """An agent worker whose record is older than this is gone, with the sessions it held
    (our agent worker refreshes its record every AGENT_WORKER_HEARTBEAT_INTERVAL_S)."""
    agent_capacity: dict[str, int] = Field(default={})
    """Sessions at once per agent name for agent workers that are not ours (they publish no
    capacity), as JSON: LKD_AGENT_CAPACITY='{"billing-agent": 20}'. Beyond it, events wait in
    a line. A name whose workers are ours is sized by their heartbeats instead; a name with
    neither is dispatched without a line."""
    waiting_line: bool = True
    """Events beyond an agent name's known capacity wait in line; false: every event is
    dispatched at once, as LiveKit may then drop it (with no worker free) and the session fail."""
    max_restarts: int = Field(2, ge=0)
    """Failover: how many times an event's session may be replaced after its agent died with
    people in the room, within restart_window_s (0: never; the session ends `lost`). While it
    is above 0 we restart, and CreateDispatch asks LiveKit not to (JRP_NEVER)."""
    restart_window_s: float = Field(3600.0, gt=0)
    """The window of max_restarts: restarts older than this no longer count."""
    worker_watch_interval_s: float = Field(0.5, gt=0)
    """How often each orchestrator worker looks for agent workers whose beat went silent
    past agent_worker_timeout_s, to replace their sessions' agents."""
    claim_stale_s: float = 60.0
    """A session still `claimed` this long after its claim (its dispatch job died) is re-checked."""
    reconcile_interval_s: int = 10
    session_retention_s: int = 7 * 24 * 3600
    event_retention_s: int = 7 * 24 * 3600
    """How long a handled event is remembered; a replay within it is not dispatched again."""
    job_timeout_s: float = 30.0
    """arq timeout of each job; a killed worker's job is retried this + 10 s later."""
    poll_delay_ms: float = 5.0
    max_jobs: int = 200
    record_linger_ms: float = 2.0
    """How long the record of a dispatch already made may wait to share a Redis write with
    other jobs' state changes: less CPU per dispatch under load. The dispatch itself is never
    delayed, only the session's `dispatched` state, by at most this."""
    backlog_linger_ms: float = 1.0
    """Under a backlog only (an event that waited over BACKLOG_WAIT_S in the queue), how long
    its room claim may wait to share a Redis write with other jobs' claims: more dispatches a
    second while the backlog drains. An event that did not wait never waits here."""

    client_url: str | None = None
    """The LiveKit URL that callers' apps connect to, handed out with join tokens, when it is
    not LIVEKIT_URL (a server reached on an internal name, a load balancer in front)."""

    http_host: str = "127.0.0.1"
    http_port: int = 8089
    api_token: SecretStr | None = None
    """Bearer token the HTTP API requires on every call but health, metrics, the LiveKit
    webhook (signed) and the dashboard page itself; unset: the API is read-only and refuses
    writes (set it, or LKD_API_TOKEN=dev for a local demo)."""
    worker_heartbeat_max_age_s: float = 30.0
    """/healthz fails when no orchestrator worker has checked in for this long."""
    metrics_flush_interval_s: float = 2.0
    """How often each worker adds its metric counts to Redis, where the HTTP service's
    /metrics reads the figures of all workers."""

    @property
    def session_check_every_s(self) -> float:
        """Longest time reconciliation leaves a live session unvisited: no rule of it applies
        sooner than this after the event it waits for (jobs/reconcile.py)."""
        return min(self.report_grace_s, self.claim_stale_s)

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str) -> str:
        return check_agent_name(value)

    @field_validator("agent_capacity")
    @classmethod
    def _agent_capacity(cls, value: dict[str, int]) -> dict[str, int]:
        for name, limit in value.items():
            check_agent_name(name)
            if limit < 0:
                raise ValueError(f"the limit of {name!r} must be 0 or more, got {limit}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @property
    def http_livekit_url(self) -> str:
        url = self.livekit_url
        for ws, http in (("ws://", "http://"), ("wss://", "https://")):
            if url.startswith(ws):
                return http + url[len(ws) :]
        return url

    @property
    def client_livekit_url(self) -> str:
        """The URL for LiveKit's client SDKs: LKD_CLIENT_URL, else LIVEKIT_URL as ws(s)://."""
        url = self.client_url or self.livekit_url
        for http, ws in (("http://", "ws://"), ("https://", "wss://")):
            if url.startswith(http):
                return ws + url[len(http) :]
        return url


class ClientSettings(BaseSettings):
    """What the command line reads before it knows its command. Nothing here is required, so
    commands that only touch Redis run without LiveKit credentials; `orchestrator demo` uses
    the LiveKit server named here, when there is one, instead of starting the sim."""

    model_config = SettingsConfigDict(
        env_prefix="LKD_", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(
        "redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL", "LKD_REDIS_URL")
    )
    livekit_url: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_URL"))
    livekit_api_key: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_API_KEY"))
    livekit_api_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVEKIT_API_SECRET")
    )
    agent_capacity: dict[str, int] = Field(default={})
    """As the orchestrator's: `orchestrator session` estimates a waiting session's wait."""
    agent_worker_timeout_s: float = 10.0
    no_color: str = Field("", validation_alias=AliasChoices("NO_COLOR"))
    """Any non-empty value turns colours off in the command line's output (no-color.org)."""


def load_client_settings() -> ClientSettings:
    """The command line's settings; a ConfigError naming the variable that is wrong."""
    try:
        return ClientSettings()
    except ValidationError as exc:
        raise ConfigError("invalid settings: " + problems(exc, where=_first)) from None


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment for a process the demo starts: this one's, with `overrides` on top
    (the settings it must use), so PATH, HOME and the user's own LKD_/AGENT_ choices pass."""
    return {**os.environ, **overrides}


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and overrides); a ConfigError naming what is missing."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        said = problems(exc, where=_variable, instead=_hint)
        raise ConfigError("invalid orchestrator settings: " + said) from None


def _first(loc: Location) -> str:
    return str(loc[0])


def _variable(loc: Location) -> str:
    """The environment variable of a field (an alias is already one)."""
    name = str(loc[0])
    return name if name.isupper() else f"LKD_{name.upper()}"


def _hint(error: ErrorDetails) -> str | None:
    """What to put in a required variable left out or empty."""
    field = str(error["loc"][0]).lower() if error["loc"] else ""
    if error["type"] in ("missing", "string_too_short", "too_short"):
        return _HINTS.get(field)
    return None
