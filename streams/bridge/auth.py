"""JWT authentication of bridge clients: the token alone decides the tenant.

Tokens are verified with an HS256 shared secret, an RS256 PEM public key, or a JWKS file of RS256 keys
(picked by the token's ``kid``). Claims:

- ``tenant`` (required): every event the client receives has this tenant; nothing in the request can
  widen it.
- ``scope`` (space-separated, OAuth 2 style) or ``scopes`` (list): ``events:read`` to follow streams,
  ``turns:write`` to post turns.
- ``exp`` (required): expired tokens are refused; ``aud``/``iss`` when the bridge is configured to check them.

Browsers' EventSource cannot send headers, so GET streams also accept the token as ``?access_token=`` or
the ``soma_token`` cookie; POSTs take it from the ``Authorization: Bearer`` header (or the cookie).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from streams.bridge.exceptions import Forbidden, Unauthorized
from streams.settings import Settings

__all__ = ["SCOPE_EVENTS_READ", "SCOPE_TURNS_WRITE", "Principal", "TokenVerifier", "mint_token"]

logger = logging.getLogger(__name__)

SCOPE_EVENTS_READ = "events:read"
SCOPE_TURNS_WRITE = "turns:write"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and scopes from a verified token."""

    tenant: str
    scopes: frozenset[str]
    subject: str | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"token lacks the {scope!r} scope")

    def require_tenant(self, tenant: str) -> None:
        if tenant != self.tenant:
            raise Forbidden(f"tenant {tenant!r} is not the token's tenant")


class TokenVerifier:
    """Verifies tokens with the key material the settings name (exactly one kind must be configured)."""

    def __init__(self, settings: Settings) -> None:
        self.audience = settings.bridge_jwt_audience
        self.issuer = settings.bridge_jwt_issuer
        self._keys: dict[str | None, Any] = {}
        configured = [name for name, value in (
            ("SOMA_BRIDGE_JWT_SECRET", settings.bridge_jwt_secret),
            ("SOMA_BRIDGE_JWT_PUBLIC_KEY_FILE", settings.bridge_jwt_public_key_file),
            ("SOMA_BRIDGE_JWT_JWKS_FILE", settings.bridge_jwt_jwks_file),
        ) if value]
        if len(configured) != 1:
            raise ValueError("the bridge needs exactly one of SOMA_BRIDGE_JWT_SECRET, SOMA_BRIDGE_JWT_PUBLIC_KEY_FILE, "
                             f"SOMA_BRIDGE_JWT_JWKS_FILE (got: {configured or 'none'})")
        if settings.bridge_jwt_secret:
            self.algorithms = ["HS256"]
            self._keys[None] = settings.bridge_jwt_secret
        elif settings.bridge_jwt_public_key_file:
            self.algorithms = ["RS256"]
            self._keys[None] = Path(settings.bridge_jwt_public_key_file).read_text()
        else:
            assert settings.bridge_jwt_jwks_file is not None
            self.algorithms = ["RS256"]
            jwks = jwt.PyJWKSet.from_dict(json.loads(Path(settings.bridge_jwt_jwks_file).read_text()))
            for key in jwks.keys:
                self._keys[key.key_id] = key.key
            if len(jwks.keys) == 1:
                self._keys[None] = jwks.keys[0].key

    def _key_for(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from None
        key = self._keys.get(kid) if kid is not None else self._keys.get(None)
        if key is None:
            key = self._keys.get(None)
        if key is None:
            raise Unauthorized(f"unknown signing key {kid!r}")
        return key

    def verify(self, token: str | None) -> Principal:
        """The principal of a token; :class:`Unauthorized` says why a token is refused."""
        if not token:
            raise Unauthorized("missing token: send 'Authorization: Bearer <jwt>' (or ?access_token= on GET streams)")
        try:
            claims = jwt.decode(
                token, self._key_for(token), algorithms=self.algorithms, audience=self.audience,
                issuer=self.issuer, leeway=_LEEWAY_SECONDS,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise Unauthorized("token has no valid 'tenant' claim")
        raw = claims.get("scopes", claims.get("scope", ""))
        scopes = frozenset(raw.split() if isinstance(raw, str) else (str(s) for s in raw or ()))
        return Principal(tenant, scopes, claims.get("sub"))


def mint_token(secret: str, tenant: str, scopes: list[str], ttl_seconds: int = 3600, subject: str | None = None,
               audience: str | None = None, issuer: str | None = None) -> str:
    """An HS256 token for development and tests (production tokens come from the identity provider)."""
    now = int(time.time())
    claims: dict[str, Any] = {"tenant": tenant, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_seconds}
    if subject:
        claims["sub"] = subject
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
