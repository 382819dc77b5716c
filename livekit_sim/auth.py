"""Access-token checks as livekit-server does them (pkg/service/auth.go).

Two layers, as on the real server:
- the HTTP middleware: a present but malformed, badly signed or unknown-key token is a
  plain-text HTTP 401 before any Twirp handling; no token at all passes through with no claims;
- the service checks: a missing grant (or a token for another room) is a Twirp
  `unauthenticated` error with msg "permissions denied".
"""

from __future__ import annotations

from collections.abc import Mapping

import jwt
from aiohttp import web
from livekit import api

PERMISSION_DENIED = "permissions denied"


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
