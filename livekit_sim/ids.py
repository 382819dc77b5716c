"""LiveKit-format identifiers: a prefix and 12 characters of the shortuuid (base57) alphabet."""

from __future__ import annotations

import secrets

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SIZE = 12

DISPATCH = "AD_"
JOB = "AJ_"
WORKER = "AW_"
ROOM = "RM_"
PARTICIPANT = "PA_"
TRACK = "TR_"
EVENT = "EV_"


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(SIZE))
