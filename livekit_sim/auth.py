"""Access-token checks as livekit-server does them (pkg/service/auth.go).

Two layers, as on the real server:
- the HTTP middleware: a present but malformed, badly signed or unknown-key token is a
  plain-text HTTP 401 before any Twirp handling; no token at all passes through with no claims;
- the service checks: a missing grant (or a token for another room) is a Twirp
  `unauthenticated` error with msg "permissions denied".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
from aiohttp import web
from livekit import api

PERMISSION_DENIED = "permissions denied"
_LEEWAY_S = 60.0  # TokenVerifier's default leeway


class InvalidToken(Exception):
    """The token is present but unusable; the server answers plain-text 401."""


def token_from_request(request: web.Request) -> str | None:
    """The bearer token from the Authorization header or the `access_token` query parameter.

    Raises InvalidToken when an Authorization header is present without the Bearer prefix.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        if not header.startswith("Bearer "):
            raise InvalidToken("invalid authorization header. Must start with Bearer ")
        return header[len("Bearer ") :]
    return request.query.get("access_token") or None


def verify_token(token: str, keys: Mapping[str, str]) -> api.access_token.Claims:
    """Verify a JWT against the key named by its issuer; raise InvalidToken otherwise."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid authorization token: {exc}") from exc
    api_key = unverified.get("iss", "")
    secret = keys.get(api_key)
    if secret is None:
        raise InvalidToken("invalid API key")
    try:
        return api.TokenVerifier(api_key, secret).verify(token)
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidToken(f"invalid authorization token: {exc}") from exc


def request_claims(request: web.Request, keys: Mapping[str, str]) -> api.access_token.Claims | None:
    """Claims of the request's token, None when it carries none; plain-text 401 when invalid."""
    try:
        token = token_from_request(request)
        return verify_token(token, keys) if token is not None else None
    except InvalidToken as exc:
        raise web.HTTPUnauthorized(text=str(exc)) from exc


def api_key_of(token: str) -> str:
    """The issuer (API key) of an already verified token."""
    return str(jwt.decode(token, options={"verify_signature": False}).get("iss", ""))


_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify_video_grants(token: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """The `video` claim (camelCase keys) of a verified token.

    The same checks as the real server (go-jose with HS256/384/512, issuer a known key,
    `exp` required, 60 s leeway on exp and nbf), done directly because PyJWT's per-call
    overhead dominated the Twirp hot path.
    """
    try:
        header_seg, payload_seg, signature_seg = token.split(".")
        header = json.loads(_b64decode(header_seg))
        claims = json.loads(_b64decode(payload_seg))
        signature = _b64decode(signature_seg)
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken(f"invalid authorization token: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("invalid authorization token: not a JWT")
    digest = _DIGESTS.get(header.get("alg", ""))
    if digest is None:
        raise InvalidToken("invalid authorization token: unsupported signing algorithm")
    secret = keys.get(claims.get("iss", ""))
    if secret is None:
        raise InvalidToken("invalid API key")
    signed = f"{header_seg}.{payload_seg}".encode()
    if not hmac.compare_digest(hmac.new(secret.encode(), signed, digest).digest(), signature):
        raise InvalidToken("invalid authorization token: signature is invalid")
    now = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or now > exp + _LEEWAY_S:
        raise InvalidToken("invalid authorization token: token is expired or has no exp")
    if isinstance(nbf, int | float) and now < nbf - _LEEWAY_S:
        raise InvalidToken("invalid authorization token: token is not valid yet")
    video = claims.get("video")
    return video if isinstance(video, dict) else {}


def request_video_grants(request: web.Request, keys: Mapping[str, str]) -> dict[str, Any] | None:
    """The verified `video` grants of the request, None without a token; plain-text 401 if bad."""
    try:
        token = token_from_request(request)
        return verify_video_grants(token, keys) if token is not None else None
    except InvalidToken as exc:
        raise web.HTTPUnauthorized(text=str(exc)) from exc


def has_admin(video: Mapping[str, Any] | None, room: str) -> bool:
    """EnsureAdminPermission: roomAdmin and the token's room equal to the request's room."""
    return video is not None and bool(video.get("roomAdmin")) and video.get("room", "") == room


def has_grant(video: Mapping[str, Any] | None, grant: str) -> bool:
    """A boolean video grant such as roomCreate (EnsureCreatePermission) or roomList."""
    return video is not None and bool(video.get(grant))
