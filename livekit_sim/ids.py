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


_BASE = len(ALPHABET)
# 57**12 < 2**71: 80 random bits reduced modulo 57**12 keep the bias below 2**-9 per id.
_RANDOM_BITS = 80


def new_id(prefix: str) -> str:
    """`prefix` + 12 random base57 characters, like livekit's guid.New."""
    n = secrets.randbits(_RANDOM_BITS)
    chars = []
    for _ in range(SIZE):
        n, r = divmod(n, _BASE)
        chars.append(ALPHABET[r])
    return prefix + "".join(chars)
