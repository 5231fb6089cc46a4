"""JWT verification and where a token may come from (contract section 5)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from resolvers.context import Principal
from streaming.keys import is_valid_id

from .settings import Settings

_BEARER = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)


class AuthError(Exception):
    """The token is missing or not acceptable; `reason` is safe to log (no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Authenticator:
    """Verifies tokens against an explicit algorithm allowlist."""

    key: str | bytes
    algorithms: tuple[str, ...]
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, secret: str) -> Authenticator:
        key: str | bytes = secret
        if settings.jwt_public_key_file is not None:
            key = settings.jwt_public_key_file.read_bytes()
        return cls(key, settings.jwt_algorithms, settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token ({type(error).__name__})") from None
        return principal_from_claims(claims)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    tenant_id = claims.get("tenant_id")
    user_id = claims.get("user_id") or claims.get("sub")
    if not isinstance(tenant_id, str) or not is_valid_id(tenant_id):
        raise AuthError("invalid or missing tenant_id claim")
    if not isinstance(user_id, str) or not is_valid_id(user_id):
        raise AuthError("invalid or missing user_id claim")
    roles = claims.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("invalid roles claim")
    return Principal(tenant_id, user_id, frozenset(roles), float(claims["exp"]))


def token_from_params(params: Mapping[str, Any] | None) -> str | None:
    """`{"authorization": "Bearer <jwt>"}` (any case of the key) or `{"token": "<jwt>"}`."""
    if not params:
        return None
    for name, value in params.items():
        if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str):
            return bearer(value)
    token = params.get("token")
    return token if isinstance(token, str) and token else None


def bearer(header: str | None) -> str | None:
    match = _BEARER.fullmatch(header or "")
    return match.group(1) if match else None


def token_from_request(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The `Authorization: Bearer` header, else the `token` query parameter."""
    return bearer(headers.get("authorization")) or (query.get("token") or None)
