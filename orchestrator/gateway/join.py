"""Join tokens for the people in a room: what a caller's app needs to enter the room our agent
was dispatched to, signed with our LiveKit key.

A join token never carries a room configuration. A token's `roomConfig.agents` dispatches
agents only when that join creates the room (livekit/livekit#4390), so beside our explicit
dispatch it gives zero agents or two; the agent comes from the dispatch, the token only lets
a person in. Tokens are made with livekit-api's `AccessToken` (not a hot path), and neither
a token nor its claims is ever logged.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import jwt
from livekit import api
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.settings import Settings

# Identities and attributes travel in every signalling message of the room: keep them sane.
MAX_IDENTITY_CHARS = 128
MAX_NAME_CHARS = 128
MAX_METADATA_BYTES = 16 * 1024
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_CHARS = 1024
MIN_TTL_S = 60
MAX_TTL_S = 24 * 3600
DEFAULT_TTL_S = 3600
AGENT_IDENTITY_PREFIX = "agent-"
# No control characters, which LiveKit's clients show or log verbatim.
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ParticipantGrants(_Strict):
    """What the person may do in the room; publish and subscribe by default."""

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_own_metadata: bool = False


class Participant(_Strict):
    """A person who will join the room: the token is made out to this identity."""

    identity: str = Field(min_length=1, max_length=MAX_IDENTITY_CHARS)
    """Unique within the room; a second join with the same identity replaces the first."""
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    metadata: str | None = None
    """Free text (often JSON) the other participants, the agent included, can read."""
    ttl_s: int = Field(DEFAULT_TTL_S, ge=MIN_TTL_S, le=MAX_TTL_S)
    """How long the token can be used to join; a session already joined outlives it."""
    grants: ParticipantGrants = Field(default_factory=ParticipantGrants)

    @field_validator("identity", "name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not _PRINTABLE.match(value):
            raise ValueError("may not hold control characters (tabs, line breaks, NUL)")
        return value

    @field_validator("identity")
    @classmethod
    def _not_an_agent(cls, value: str) -> str:
        # A join with an identity already in the room replaces that participant: a person
        # must not be able to take the agent's place (`agent-<session id>`, `agent-<job id>`).
        if value.startswith(AGENT_IDENTITY_PREFIX):
            raise ValueError(f"may not start with {AGENT_IDENTITY_PREFIX!r}, kept for agents")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not key or len(key) > MAX_ATTRIBUTE_CHARS or len(text) > MAX_ATTRIBUTE_CHARS:
                raise ValueError(
                    f"each attribute needs a name, and name and value may hold at most "
                    f"{MAX_ATTRIBUTE_CHARS} characters"
                )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"may hold at most {MAX_METADATA_BYTES} bytes")
        return value


class Join(_Strict):
    """How a person joins the room: connect the LiveKit client SDK to `url` with `token`."""

    url: str
    """The LiveKit URL for clients (LKD_CLIENT_URL, else LIVEKIT_URL as ws:// or wss://)."""
    token: str
    room: str
    identity: str
    expires_at: datetime
    """After this the token no longer lets anyone join."""


def join_token(settings: Settings, room: str, participant: Participant) -> Join:
    """A token for `participant` to join `room`; no room configuration, so no agents."""
    grants = participant.grants
    token = (
        api.AccessToken(settings.livekit_api_key, settings.livekit_api_secret.get_secret_value())
        .with_identity(participant.identity)
        .with_ttl(timedelta(seconds=participant.ttl_s))
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=grants.can_publish,
                can_subscribe=grants.can_subscribe,
                can_publish_data=grants.can_publish_data,
                can_update_own_metadata=grants.can_update_own_metadata,
            )
        )
    )
    if participant.name is not None:
        token = token.with_name(participant.name)
    if participant.metadata is not None:
        token = token.with_metadata(participant.metadata)
    if participant.attributes:
        token = token.with_attributes(participant.attributes)
    jwt_text = token.to_jwt()
    expires_s = jwt.decode(jwt_text, options={"verify_signature": False})["exp"]
    return Join(
        url=settings.client_livekit_url,
        token=jwt_text,
        room=room,
        identity=participant.identity,
        expires_at=datetime.fromtimestamp(expires_s, UTC),
    )
