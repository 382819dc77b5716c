"""The agent participant token sent in JobAssignment, built as livekit-server builds it
(protocol agent/token.go BuildAgentToken, signed like auth.AccessToken.ToJWT).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import jwt
from livekit.protocol import models

AGENT_TOKEN_TTL_S = 3600
AGENT_NAME_ATTRIBUTE = "lk.agent_name"


def default_permissions() -> models.ParticipantPermission:
    """A worker's permissions when it registers without allowed_permissions (HandleRegister)."""
    return models.ParticipantPermission(
        can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
    )


def build_agent_token(
    *,
    api_key: str,
    api_secret: str,
    room_name: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permissions: models.ParticipantPermission,
) -> str:
    """An HS256 JWT valid for 1 h: room join + agent grant for `room_name`, kind "agent".

    Field presence follows Go's `omitempty`: the pointer permission fields are always present
    (even when false), plain bools and strings only when set.
    """
    video: dict[str, object] = {
        "roomJoin": True,
        "room": room_name,
        "canPublish": permissions.can_publish,
        "canSubscribe": permissions.can_subscribe,
        "canPublishData": permissions.can_publish_data,
        "canUpdateOwnMetadata": permissions.can_update_metadata,
        "agent": True,
        "canSubscribeMetrics": permissions.can_subscribe_metrics,
    }
    if permissions.hidden:
        video["hidden"] = True
    if not room_name:
        del video["room"]
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": api_key,
        "exp": now + AGENT_TOKEN_TTL_S,
        "nbf": now,
        "iat": now,
        "kind": "agent",
        "video": video,
    }
    optional: dict[str, object] = {
        "sub": identity,
        "identity": identity,
        "name": name,
        "metadata": metadata,
        "attributes": dict(attributes),
    }
    claims.update({key: value for key, value in optional.items() if value})
    return jwt.encode(claims, api_secret, algorithm="HS256")
