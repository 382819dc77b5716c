"""The agent's settings: read from the environment once, here and nowhere else.

LiveKit and Redis use the ecosystem's variable names (`LIVEKIT_URL`, `LIVEKIT_API_KEY`,
`LIVEKIT_API_SECRET`, `REDIS_URL`); the agent name is `AGENT_NAME`, shared with the
orchestrator; everything else is `AGENT_<FIELD>` with a safe default. Durations carry their
unit in the name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.errors import ConfigError
from tasks.connection import check_redis_url
from tasks.keys import AGENT_HEARTBEAT_INTERVAL_S, AGENT_WORKER_HEARTBEAT_INTERVAL_S
from tasks.models import check_agent_name
from tasks.validation import problems

DEFAULT_AGENT_NAME = "support-agent"
"""The orchestrator's default too: a worker and the orchestrator must agree on it."""
DEFAULT_HANDLER = "agent.handlers:greeter"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENT_", extra="ignore", frozen=True, populate_by_name=True
    )

    livekit_url: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_URL"))
    """LiveKit server URL; may also come from `--url` on the command line."""
    livekit_api_key: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_API_KEY"))
    livekit_api_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LIVEKIT_API_SECRET")
    )
    agent_name: str = Field(DEFAULT_AGENT_NAME, validation_alias=AliasChoices("AGENT_NAME"))
    """The name this worker registers with; it only receives dispatches for this name."""
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL"))
    """Where session reports are enqueued (the orchestrator's Redis)."""

    session_handler: str = DEFAULT_HANDLER
    """`package.module:function` of the session handler (AGENT_SESSION_HANDLER)."""

    agent_name_override: str | None = Field(
        None, validation_alias=AliasChoices("LIVEKIT_AGENT_NAME_OVERRIDE")
    )
    """livekit-agents' own override of the agent name (set by LiveKit tooling); wins."""

    job_type: Literal["room", "publisher"] = "room"
    """`room`: one job per dispatch, the session's agent. `publisher`: LiveKit starts one job
    per participant that publishes in the dispatch's room; each is a part of the event's
    session, with its own report (README, "One agent per publisher")."""
    max_sessions: int = Field(10, ge=1)
    """Sessions one worker runs at once; its request handler declines the rest."""
    load_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """CPU load (0-1) at which the worker reports itself full (its sessions keep the load
    just under it). Keep it at or under the server's `agents.target_load` (0.7 by default),
    above which LiveKit sends the worker no jobs anyway."""
    count_cpu_load: bool = True
    """Whether CPU use counts towards the load (AGENT_COUNT_CPU_LOAD=false: sessions only)."""
    num_idle_processes: int | None = Field(None, ge=0)
    """Warm job processes kept ready (livekit-agents' default when unset)."""
    health_host: str = ""
    """Address of the worker's health endpoint; empty: every interface. With port 0 and
    every interface, IPv4 and IPv6 get different ports: name one address in that case."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """Port of the worker's health endpoint (`GET /`); 0 picks a free one. livekit-agents'
    default when unset: 8081 with `start`, a free port with `dev`."""

    can_publish: bool = True
    """The agent may publish audio and video (LiveKit puts this in the agent's token)."""
    can_subscribe: bool = True
    """The agent may subscribe to the others' tracks."""
    can_publish_data: bool = True
    """The agent may send data and text (the default handler's greeting needs it)."""
    can_update_metadata: bool = True
    """The agent may change its own name, metadata and attributes."""
    hidden: bool = False
    """The agent is listed to nobody in the room (a silent observer or recorder)."""

    shutdown_process_timeout_s: float = Field(10.0, gt=0)
    """How long a job process may take to exit once the worker asks it to."""
    report_timeout_s: float = Field(15.0, gt=0)
    """Budget for enqueuing the session report, Redis retries included."""
    end_probe_timeout_s: float = Field(5.0, ge=0)
    """Budget for asking LiveKit why a session was ended from outside."""
    handler_stop_timeout_s: float = Field(5.0, ge=0)
    """How long a cancelled handler gets to clean up when the session ends from outside."""
    heartbeat_interval_s: float = Field(AGENT_HEARTBEAT_INTERVAL_S, gt=0)
    """How often a running session refreshes its heartbeat in Redis."""
    worker_heartbeat_interval_s: float = Field(AGENT_WORKER_HEARTBEAT_INTERVAL_S, gt=0)
    """How often the worker refreshes its record of the sessions it holds (starting or
    running); keep it well under the orchestrator's LKD_AGENT_WORKER_TIMEOUT_S."""

    greeting_text: str = "Hello! You are connected to the agent."
    """What the default handler sends when the first person joins."""
    resume_greeting_text: str = "Sorry, we were cut off. I'm back now."
    """The default handler's greeting in a session that replaces one whose agent died."""
    greeting_topic: str = "lkd.greeting"
    """The text-stream topic of the greeting."""
    first_participant_timeout_s: float = Field(120.0, gt=0)
    """The default handler ends the session if nobody joins within this time."""

    @property
    def permissions(self) -> dict[str, bool]:
        """What the agent may do in a room, as livekit-agents' WorkerPermissions takes it."""
        return {
            "can_publish": self.can_publish,
            "can_subscribe": self.can_subscribe,
            "can_publish_data": self.can_publish_data,
            "can_update_metadata": self.can_update_metadata,
            "hidden": self.hidden,
        }

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str) -> str:
        return check_agent_name(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("session_handler")
    @classmethod
    def _handler_path(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"{value!r} must look like 'package.module:function'")
        return value

    @property
    def effective_agent_name(self) -> str:
        """The name the worker registers with (livekit-agents gives the override priority)."""
        return self.agent_name_override or self.agent_name

    @property
    def session_end_timeout_s(self) -> float:
        """What livekit-agents allows `on_session_end`: every step it takes, plus slack."""
        return self.handler_stop_timeout_s + self.end_probe_timeout_s + self.report_timeout_s + 5.0


_ENV_NAMES = {
    "livekit_url": "LIVEKIT_URL",
    "livekit_api_key": "LIVEKIT_API_KEY",
    "livekit_api_secret": "LIVEKIT_API_SECRET",
    "agent_name": "AGENT_NAME",
    "agent_name_override": "LIVEKIT_AGENT_NAME_OVERRIDE",
    "redis_url": "REDIS_URL",
}


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return _ENV_NAMES.get(field, f"AGENT_{field.upper()}")


def load_settings(**overrides: object) -> AgentSettings:
    """Settings from the environment (and overrides); a ConfigError naming what is wrong."""
    try:
        return AgentSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        said = problems(exc, where=lambda loc: env_name(str(loc[0])))
        raise ConfigError("invalid agent settings: " + said) from None
