"""JWT verification, where a token may come from, and which pages may open a socket."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from strawberry.http.websocket_origin import (
    is_same_origin,
    normalize_allowed_origins,
    normalize_origin,
)

from ..resolvers.context import Principal
from ..streaming.keys import is_valid_id
from .jwks import JwksKeys
from .settings import Settings, SettingsError

_BEARER = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)


class AuthFailure(StrEnum):
    """Why a token was refused: the `reason` label of `ragline_auth_failures_total`."""

    MISSING = "missing"
    MALFORMED = "malformed"
    ALGORITHM = "algorithm"
    UNKNOWN_KEY = "unknown_key"
    SIGNATURE = "signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    CLAIMS = "claims"
    LIFETIME = "lifetime"
    REVOKED = "revoked"
    INVALID = "invalid"


class AuthError(Exception):
    """The token is missing or not acceptable; `reason` is safe to log (no token)."""

    def __init__(self, reason: str, failure: AuthFailure = AuthFailure.INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


# Most specific first: InvalidSignatureError is a DecodeError, all are InvalidTokenErrors.
_FAILURES: tuple[tuple[type[Exception], AuthFailure], ...] = (
    (jwt.ExpiredSignatureError, AuthFailure.EXPIRED),
    (jwt.ImmatureSignatureError, AuthFailure.NOT_YET_VALID),
    (jwt.InvalidSignatureError, AuthFailure.SIGNATURE),
    (jwt.InvalidAlgorithmError, AuthFailure.ALGORITHM),
    (jwt.DecodeError, AuthFailure.MALFORMED),
    (jwt.MissingRequiredClaimError, AuthFailure.CLAIMS),
    (jwt.InvalidAudienceError, AuthFailure.CLAIMS),
    (jwt.InvalidIssuerError, AuthFailure.CLAIMS),
    (jwt.InvalidIssuedAtError, AuthFailure.CLAIMS),
)


@dataclass(frozen=True)
class Authenticator:
    """Verifies tokens against an explicit algorithm allowlist.

    HS* tokens are checked with the secret, RS*/ES*/PS* ones with the public
    key or the JWKS, each only for the algorithms allowed: a token signed
    with HS256 using the public key as secret fails like any bad signature."""

    secret: str
    algorithms: tuple[str, ...]
    public_key: Any = None                  # a parsed public key (RAGLINE_JWT_PUBLIC_KEY_FILE)
    jwks: JwksKeys | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0
    max_lifetime: float | None = None       # longest accepted `exp - iat` (revocations expire after it)
    failures: dict[str, int] = field(default_factory=dict, compare=False)  # by AuthFailure

    @classmethod
    def from_settings(cls, settings: Settings, secret: str) -> Authenticator:
        jwks = None
        if settings.jwt_jwks_url is not None:
            jwks = JwksKeys(settings.jwt_jwks_url, ttl=settings.jwt_jwks_ttl, min_refresh=settings.jwt_jwks_min_refresh)
        return cls(
            secret, settings.jwt_algorithms, _public_key(settings.jwt_public_key_file), jwks,
            settings.jwt_audience, settings.jwt_issuer, settings.jwt_leeway, settings.max_token_lifetime,
        )

    async def authenticate(self, token: str | None) -> Principal:
        """The principal behind `token`, fetching JWKS keys without blocking; refusals are counted."""
        try:
            if token is None:
                raise AuthError("no token", AuthFailure.MISSING)
            if self.jwks is not None:
                alg, kid = _alg_and_kid(token)
                if not alg.startswith("HS"):
                    await self.jwks.ensure(kid)
            return self.verify(token)
        except AuthError as error:
            self.refused(error.failure)
            raise

    def refused(self, failure: AuthFailure) -> None:
        """Count a refusal (`ragline_auth_failures_total`)."""
        self.failures[failure] = self.failures.get(failure, 0) + 1

    def verify(self, token: str) -> Principal:
        """Synchronous check with the keys at hand (JWKS keys as last fetched)."""
        alg, kid = _alg_and_kid(token)
        if alg not in self.algorithms:
            raise AuthError("algorithm not allowed", AuthFailure.ALGORITHM)
        try:
            claims = jwt.decode(
                token,
                self._key(alg, kid),
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as error:
            failure = next((f for kind, f in _FAILURES if isinstance(error, kind)), AuthFailure.INVALID)
            raise AuthError(f"invalid token ({type(error).__name__})", failure) from None
        principal = principal_from_claims(claims)
        self._check_lifetime(principal)
        return principal

    def _check_lifetime(self, principal: Principal) -> None:
        """A token may live at most `max_lifetime` from its `iat` (without one: from now), so
        a revocation need not outlive that (`streaming.revocations`)."""
        if self.max_lifetime is None or principal.expires_at is None:
            return
        start = principal.issued_at if principal.issued_at is not None else time.time()
        if principal.expires_at - start > self.max_lifetime + self.leeway:
            raise AuthError("token lives longer than RAGLINE_MAX_TOKEN_LIFETIME", AuthFailure.LIFETIME)

    def _key(self, alg: str, kid: str | None) -> Any:
        if alg.startswith("HS"):
            return self.secret
        if self.jwks is None:
            return self.public_key
        key = self.jwks.get(kid)
        if key is None:
            raise AuthError("unknown signing key", AuthFailure.UNKNOWN_KEY)
        return key


def _alg_and_kid(token: str) -> tuple[str, str | None]:
    """The unverified header's `alg` and `kid`, refusing ones of the wrong type."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed token", AuthFailure.MALFORMED) from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        raise AuthError("malformed token header", AuthFailure.MALFORMED)
    return alg, kid


def _public_key(path: Path | None) -> Any:
    """The PEM public key, parsed once at start-up (SettingsError if it is not one)."""
    if path is None:
        return None
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise SettingsError(f"RAGLINE_JWT_PUBLIC_KEY_FILE is not a readable PEM public key: {error}") from None


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    tenant_id = claims.get("tenant_id")
    user_id = claims.get("user_id") or claims.get("sub")
    if not isinstance(tenant_id, str) or not is_valid_id(tenant_id):
        raise AuthError("invalid or missing tenant_id claim", AuthFailure.CLAIMS)
    if not isinstance(user_id, str) or not is_valid_id(user_id):
        raise AuthError("invalid or missing user_id claim", AuthFailure.CLAIMS)
    roles = claims.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("invalid roles claim", AuthFailure.CLAIMS)
    issued_at = claims.get("iat")  # PyJWT checked that it is a number, if present
    return Principal(
        tenant_id, user_id, frozenset(roles), float(claims["exp"]),
        None if issued_at is None else float(issued_at),
    )


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


def origin_allowed(headers: Mapping[str, str], allowed: Sequence[str]) -> bool:
    """Whether a WebSocket handshake may go on (every endpoint): clients without `Origin`
    (not browsers), same-origin pages, and the origins in RAGLINE_ALLOWED_ORIGINS."""
    origin = headers.get("origin")
    if origin is None or headers.get("sec-fetch-site") == "same-origin":
        return True
    if is_same_origin(origin, headers.get("host")):
        return True
    permitted = normalize_allowed_origins(allowed)
    return "*" in permitted or normalize_origin(origin) in permitted
