"""Caller identity end to end: a real OpenID provider's JWTs as PostgreSQL passwords through
``callgate serve``, groups deciding access, key rotation, forged tokens refused and recorded with
their reason, revoked API keys and session tokens, and the ``callgate token`` round trip.

The provider is this module's own instance of tests/identity_oidc/provider.py (its keys are
rotated here, which must not disturb other tests); a second issuer served from the test process
(tests/identity_oidc/issuer.py) signs the tokens a real provider would never issue.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm

from callgate.protocols.postgres import messages as m
from tests.conftest import GatewayFactory, unavailable
from tests.engines.postgres.conftest import ALLOW_APPS, Through, main_connection
from tests.identity_oidc.issuer import (
    LocalIssuer,
    SigningKey,
    header_of,
    hmac_signed,
    payload_of,
    replace_payload,
    sign,
    unsigned,
)
from tests.identity_oidc.provider import Client, OIDCProvider, ProviderUnavailable
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.integration

CLIENTS = (
    Client("fn-billing", {"groups": ["functions", "billing"]}),
    Client("fn-reports", {"groups": ["reports"]}),
)
ALLOW_FUNCTIONS = {
    "name": "functions use main",
    "subjects": {"groups": ["functions"]},
    "connections": ["main"],
    "rules": [{"allow": {}}],
}
#: Seconds a revocation may take to bite for new connections (the verified-credential caches
#: live 5 s), plus slack for a loaded machine.
REVOCATION_WAIT = 10.0
EVENT_WAIT = 10.0
#: ``KeyFetchLimits.min_refresh_interval``: how often an unknown kid may refetch an issuer's keys
KEY_REFRESH_INTERVAL = 30.0


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    instance = OIDCProvider(tmp_path_factory.mktemp("oidc-provider-e2e"), CLIENTS)
    try:
        instance.start()
    except ProviderUnavailable as exc:
        unavailable(str(exc))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def local_issuer() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def oidc_through(
    gateway: GatewayFactory,
    pg_local: PgServer,
    pg_db: str,
    provider: OIDCProvider,
    local_issuer: LocalIssuer,
) -> Through:
    """A gateway trusting the provider (``corp``) and the in-test issuer (``local``); group
    ``functions`` (and ``apps``, the API key's) may use connection ``main``."""
    gw = gateway(
        {
            "connections": [main_connection(pg_local, pg_db)],
            "policies": [ALLOW_FUNCTIONS, ALLOW_APPS],
            "identity": {
                "oidc": [
                    {"name": "corp", "issuer": provider.issuer, "audience": "callgate"},
                    {"name": "local", "issuer": local_issuer.issuer, "audience": "callgate"},
                ],
                # Every attack below comes from 127.0.0.1: do not let the throttle answer for
                # the verifier (it has its own tests).
                "failures": {"slow_after": 1000, "lockout_after": 1000},
            },
        }
    )
    return Through(gw, gw.create_key("fn1", ["apps"]), pg_db, pg_local)


# --- helpers --------------------------------------------------------------------------------------


def _read_messages(s: socket.socket, until: bytes = b"ZE") -> list[tuple[int, bytes]]:
    """Backend messages until one of type ``until``, or the end of the stream."""
    out: list[tuple[int, bytes]] = []
    buf = b""
    while True:
        while len(buf) >= 5:
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            out.append((buf[0], buf[5 : 1 + length]))
            buf = buf[1 + length :]
            if out[-1][0] in until:
                return out
        chunk = s.recv(65536)
        if not chunk:
            return out
        buf += chunk


def attempt(through: Through, password: str) -> str | None:
    """Log in with ``password`` on a raw socket: ``None`` when the gateway says ReadyForQuery,
    else the SQLSTATE of its error."""
    with socket.create_connection(("127.0.0.1", through.gw.port), timeout=15) as s:
        s.sendall(m.encode_startup((("user", "whoever"), ("database", "main"))))
        first = _read_messages(s, b"RE")
        assert first and first[-1][0] == ord("R"), first
        s.sendall(m.encode_password(password.encode()))
        reply = _read_messages(s)
        assert reply, "the gateway closed the connection without a word"
        kind, body = reply[-1]
        if kind == ord("Z"):
            return None
        assert kind == ord("E"), reply
        return m.decode_error_fields(body).sqlstate


def connect(through: Through, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(through.dsn(password=password), connect_timeout=15)


def auth_failures(through: Through) -> list[dict[str, Any]]:
    """The recorded authentication failures (non-session ``auth.failure`` events), read from the
    gateway's SQLite store while it runs."""
    path = through.gw.workdir / "callgate.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT payload FROM events WHERE session_id IS NULL AND type = 'auth.failure'"
            " ORDER BY seq"
        ).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def wait_for_failures(through: Through, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + EVENT_WAIT
    while True:
        found = auth_failures(through)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def exchange(through: Through, oidc_token: str, *args: str) -> dict[str, Any]:
    """``callgate token --json`` with the OIDC token on stdin."""
    done = through.gw.cli("token", "--json", *args, input=oidc_token)
    assert done.returncode == 0, done.stderr
    assert oidc_token not in done.stdout + done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def provider_claims(provider: OIDCProvider, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": provider.issuer,
        "aud": "callgate",
        "sub": "fn-billing",
        "groups": ["functions"],
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


# --- the tests ------------------------------------------------------------------------------------


def test_jwt_as_password_and_groups_decide(oidc_through: Through, provider: OIDCProvider) -> None:
    token = provider.token("fn-billing")
    assert len(token) > 100  # why session tokens exist
    with connect(oidc_through, token) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    (session,) = [s for s in oidc_through.sessions() if s["auth_method"] == "oidc"]
    assert session["subject"] == "fn-billing"
    assert session["issuer"] == "corp"
    assert set(session["groups"]) == {"functions", "billing"}
    assert session["client_user"] == "whoever"  # recorded, never trusted

    # another client's groups have no policy for the connection
    assert attempt(oidc_through, provider.token("fn-reports")) == "42501"
    # the same gateway still takes API keys
    assert attempt(oidc_through, oidc_through.key) is None


def test_key_rotation_is_picked_up_without_restart(
    oidc_through: Through, provider: OIDCProvider
) -> None:
    before = provider.token("fn-billing")
    assert attempt(oidc_through, before) is None
    pid = oidc_through.gw.proc.pid if oidc_through.gw.proc else None
    old_kid = header_of(before)["kid"]

    new_kid = provider.rotate_keys("RS256")
    rotated_at = time.monotonic()
    after = provider.token("fn-billing")
    assert header_of(after)["kid"] == new_kid != old_kid
    # An unknown kid makes the gateway refetch the keys, at most once per 30 s per issuer (its
    # start-up fetch counts): a key that signs the moment it is made may wait that long.
    deadline = rotated_at + KEY_REFRESH_INTERVAL + 15
    while (outcome := attempt(oidc_through, after)) is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert outcome is None
    assert attempt(oidc_through, before) is None  # the old key is still published
    assert oidc_through.gw.running and oidc_through.gw.proc and oidc_through.gw.proc.pid == pid
    assert {r["reason"] for r in auth_failures(oidc_through)} <= {"unknown key id"}


def test_attacks_are_refused_and_recorded(
    oidc_through: Through, provider: OIDCProvider, local_issuer: LocalIssuer
) -> None:
    now = int(time.time())
    kid = provider.active_kid("RS256")
    jwk = next(k for k in provider.jwks()["keys"] if k["kid"] == kid)
    public_pem = RSAAlgorithm.from_jwk(jwk).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    genuine = provider.token("fn-reports")
    claims = provider_claims(provider)
    # (what, token, recorded reason, recorded issuer)
    attacks: list[tuple[str, str, str, str | None]] = [
        ("alg none", unsigned({"alg": "none", "kid": kid}, claims), "algorithm not allowed", None),
        (
            "HS256 with the public key",
            hmac_signed({"alg": "HS256", "kid": kid}, claims, public_pem),
            "algorithm not allowed",
            None,
        ),
        ("expired", local_issuer.token(exp=now - 3600), "expired", "local"),
        ("nbf in the future", local_issuer.token(nbf=now + 3600), "not yet valid", "local"),
        ("wrong audience", local_issuer.token(aud="another-service"), "wrong audience", "local"),
        ("wrong issuer", local_issuer.token(iss="https://evil.example"), "unknown issuer", None),
        (
            "unknown kid",
            sign(claims, SigningKey.generate("RS256", kid="made-up")),
            "unknown key id",
            "corp",
        ),
        (
            "tampered payload",
            replace_payload(genuine, {**payload_of(genuine), "groups": ["functions"]}),
            "bad signature",
            "corp",
        ),
        (
            "issuer A's claims, issuer B's key and kid",
            sign(claims, local_issuer.key),
            "unknown key id",
            "corp",
        ),
        (
            "issuer A's claims and kid, issuer B's key",
            sign(claims, local_issuer.key, headers={"kid": kid}),
            "bad signature",
            "corp",
        ),
    ]
    for what, token, _, _ in attacks:
        assert attempt(oidc_through, token) == "28P01", what

    recorded = wait_for_failures(oidc_through, len(attacks))
    assert [(r["reason"], r["issuer"]) for r in recorded] == [(a[2], a[3]) for a in attacks]
    assert all(r["protocol"] == "postgres" and r["source"] == "127.0.0.1" for r in recorded)
    # nothing of a token is kept: not in the events, not in the log
    log = oidc_through.gw.log_text()
    for _, token, _, _ in attacks:
        for part in token.split("."):
            if len(part) >= 16:
                assert part not in json.dumps(recorded) and part not in log
    # the genuine token behind the tampered one was good, and a good token still gets in
    assert attempt(oidc_through, provider.token("fn-billing")) is None
    assert not [s for s in oidc_through.sessions() if s["subject"] != "fn-billing"]


def test_session_token_round_trip(oidc_through: Through, provider: OIDCProvider) -> None:
    issued = exchange(oidc_through, provider.token("fn-billing"), "--ttl", "30m")
    token = issued["token"]
    assert token.startswith("cgt_") and len(token) <= 99
    assert (issued["subject"], set(issued["groups"]), issued["issuer"]) == (
        "fn-billing",
        {"functions", "billing"},
        "corp",
    )
    with connect(oidc_through, token) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    (session,) = [s for s in oidc_through.sessions() if s["auth_method"] == "session_token"]
    assert session["subject"] == "fn-billing" and session["credential_id"] == issued["id"]
    assert set(session["groups"]) == {"functions", "billing"} and session["issuer"] == "corp"

    # the groups travel with the token: fn-reports' token gets fn-reports' refusal
    other = exchange(oidc_through, provider.token("fn-reports"))
    assert attempt(oidc_through, other["token"]) == "42501"

    done = oidc_through.gw.cli("token", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert {t["id"] for t in json.loads(done.stdout)} == {issued["id"], other["id"]}
    assert token not in done.stdout

    # a token the provider did not sign is not exchanged
    forged = replace_payload(provider.token("fn-reports"), provider_claims(provider))
    done = oidc_through.gw.cli("token", input=forged)
    assert done.returncode == 1 and "bad signature" in done.stderr and done.stdout == ""


def test_revoked_api_key_and_session_token_are_refused(
    oidc_through: Through, provider: OIDCProvider
) -> None:
    key = oidc_through.gw.create_key("fn-revoked", ["apps"])
    issued = exchange(oidc_through, provider.token("fn-billing"))
    token = issued["token"]
    assert attempt(oidc_through, key) is None
    assert attempt(oidc_through, token) is None  # both are now in the gateway's caches

    done = oidc_through.gw.cli("keys", "revoke", "fn-revoked")
    assert done.returncode == 0, done.stderr
    done = oidc_through.gw.cli("token", "revoke", issued["id"])
    assert done.returncode == 0, done.stderr

    deadline = time.monotonic() + REVOCATION_WAIT
    refused: dict[str, str | None] = {"key": None, "token": None}
    while time.monotonic() < deadline and None in refused.values():
        for name, credential in (("key", key), ("token", token)):
            if refused[name] is None:
                refused[name] = attempt(oidc_through, credential)
        time.sleep(0.5)
    assert refused == {"key": "28P01", "token": "28P01"}
    reasons = {r["reason"] for r in auth_failures(oidc_through)}
    assert "revoked API key 'fn-revoked'" in reasons
    assert f"revoked session token {issued['id']}" in reasons
    # other credentials are unaffected
    assert attempt(oidc_through, oidc_through.key) is None
