"""Token verification: HS256 secret, RS256 public key, RS256 JWKS; every refusal is a 401 with a reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from streams.bridge.auth import Principal, TokenVerifier, mint_token
from streams.bridge.exceptions import Forbidden, Unauthorized
from streams.settings import Settings

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def _settings(**env: str) -> Settings:
    return Settings.from_env(env)


def test_hs256_token_gives_tenant_and_scopes() -> None:
    verifier = TokenVerifier(_settings(SOMA_BRIDGE_JWT_SECRET=SECRET))
    principal = verifier.verify(mint_token(SECRET, "acme", ["events:read", "turns:write"], subject="ann"))
    assert principal == Principal("acme", frozenset({"events:read", "turns:write"}), "ann")
    principal.require("events:read")
    with pytest.raises(Forbidden):
        principal.require("admin")
    with pytest.raises(Forbidden):
        principal.require_tenant("globex")


@pytest.mark.parametrize("token,reason", [
    (None, "missing token"),
    ("garbage", "malformed"),
    (mint_token("another-secret-0123456789abcdef0123456", "acme", ["events:read"]), "invalid token"),
    (mint_token(SECRET, "acme", ["events:read"], ttl_seconds=-60), "expired"),
    (jwt.encode({"scope": "events:read", "exp": int(time.time()) + 86_400}, SECRET), "tenant"),
    (jwt.encode({"tenant": "acme", "scope": "events:read"}, SECRET), "exp"),
    (jwt.encode({"tenant": "../etc", "exp": int(time.time()) + 86_400}, SECRET), "tenant"),
])
def test_bad_tokens_are_refused_with_a_reason(token: str | None, reason: str) -> None:
    verifier = TokenVerifier(_settings(SOMA_BRIDGE_JWT_SECRET=SECRET))
    with pytest.raises(Unauthorized, match=reason):
        verifier.verify(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier(_settings(SOMA_BRIDGE_JWT_SECRET=SECRET, SOMA_BRIDGE_JWT_AUDIENCE="soma",
                                       SOMA_BRIDGE_JWT_ISSUER="https://id.example"))
    good = mint_token(SECRET, "acme", ["events:read"], audience="soma", issuer="https://id.example")
    assert verifier.verify(good).tenant == "acme"
    with pytest.raises(Unauthorized):
        verifier.verify(mint_token(SECRET, "acme", ["events:read"], audience="other", issuer="https://id.example"))
    with pytest.raises(Unauthorized):
        verifier.verify(mint_token(SECRET, "acme", ["events:read"]))


def _rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


def _claims(**extra: object) -> dict[str, object]:
    return {"tenant": "acme", "scopes": ["events:read"], "exp": int(time.time()) + 60, **extra}


def test_rs256_public_key_file(tmp_path: Path) -> None:
    key, public = _rsa()
    (tmp_path / "key.pem").write_text(public)
    verifier = TokenVerifier(_settings(SOMA_BRIDGE_JWT_PUBLIC_KEY_FILE=str(tmp_path / "key.pem")))
    assert verifier.verify(jwt.encode(_claims(), key, algorithm="RS256")).scopes == {"events:read"}
    other, _ = _rsa()
    with pytest.raises(Unauthorized):
        verifier.verify(jwt.encode(_claims(), other, algorithm="RS256"))
    with pytest.raises(Unauthorized):  # an HS256 token signed with the public key text: algorithm confusion
        verifier.verify(jwt.encode(_claims(), "x" * 64, algorithm="HS256"))


def test_rs256_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    first, _ = _rsa()
    second, _ = _rsa()
    keys = []
    for kid, key in (("one", first), ("two", second)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    verifier = TokenVerifier(_settings(SOMA_BRIDGE_JWT_JWKS_FILE=str(tmp_path / "jwks.json")))
    assert verifier.verify(jwt.encode(_claims(), second, algorithm="RS256", headers={"kid": "two"})).tenant == "acme"
    with pytest.raises(Unauthorized):
        verifier.verify(jwt.encode(_claims(), second, algorithm="RS256", headers={"kid": "one"}))
    with pytest.raises(Unauthorized, match="unknown signing key"):
        verifier.verify(jwt.encode(_claims(), first, algorithm="RS256", headers={"kid": "three"}))


def test_exactly_one_kind_of_key_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(_settings())
    (tmp_path / "k.pem").write_text("x")
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(_settings(SOMA_BRIDGE_JWT_SECRET=SECRET, SOMA_BRIDGE_JWT_PUBLIC_KEY_FILE=str(tmp_path / "k.pem")))
