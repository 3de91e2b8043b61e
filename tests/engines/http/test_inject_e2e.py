"""Every static injection kind and OAuth2 through the running gateway: the credential arrives at
the API, the caller's never does, and no response, even one that echoes the request, shows it."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callgate.engines.http.inject import SECRET_REFRESH_SECONDS
from tests.engines.http.conftest import MakeThrough, Upstream, api_connection
from tests.engines.http.test_inject_oauth2 import TokenEndpoint

pytestmark = pytest.mark.integration

USER, PASSWORD = "svc-user", "basic-password-9f3a1c77e2"
QUERY_SECRET = "query-key-5be1d0c2a9f4+/="


def echoed(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def seen_headers(entry: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in entry["headers"]}


def test_basic(make_through: MakeThrough, upstream_api: Upstream) -> None:
    conn = api_connection(
        upstream_api, inject={"basic": {"user": USER, "password": "env:BASIC_PW"}}
    )
    th = make_through({"connections": [conn]}, env={"BASIC_PW": PASSWORD})
    with th.client() as c:
        r = c.get("/api/echo/basic")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    [entry] = th.upstream.log()
    assert seen_headers(entry)["authorization"] == f"Basic {token}"
    body = json.dumps(echoed(r))
    assert token not in body and PASSWORD not in body
    assert r.headers.get("x-echo-auth") == "Basic [redacted by callgate]"


def test_query(make_through: MakeThrough, upstream_api: Upstream) -> None:
    conn = api_connection(upstream_api, inject={"query": {"api_key": "env:QUERY_SECRET"}})
    th = make_through({"connections": [conn]}, env={"QUERY_SECRET": QUERY_SECRET})
    with th.client() as c:
        r = c.get("/api/echo/query", params={"q": "x", "api_key": "caller-chosen"})
    [entry] = th.upstream.log()
    assert "q=x" in entry["query"]
    assert "caller-chosen" not in entry["query"]  # the caller's copy was replaced
    assert "api_key=query-key-5be1d0c2a9f4%2B%2F%3D" in entry["query"]
    text = json.dumps(echoed(r))
    assert QUERY_SECRET not in text and "query-key-5be1d0c2a9f4%2B%2F%3D" not in text
    # audit records the caller's request, not the injected parameter
    [session] = [s for s in th.sessions() if s["protocol"] == "http"]
    events = json.dumps(th.events(session["id"]))
    assert "query-key-5be1d0c2a9f4" not in events


def replace_file(path: Path, text: str) -> None:
    """Write ``path`` the way a secret should be rotated: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def test_a_rotated_file_secret_is_sent_within_the_refresh_interval(
    make_through: MakeThrough, upstream_api: Upstream, tmp_path: Path
) -> None:
    first, rotated = "file-secret-first-8c1d5e0a", "file-secret-rotated-3f7b9e21"
    key = tmp_path / "api-key"
    replace_file(key, first + "\n")
    conn = api_connection(upstream_api, inject={"headers": {"X-Api-Key": f"file:{key}"}})
    th = make_through({"connections": [conn]})
    with th.client() as c:
        body = json.dumps(echoed(c.get("/api/echo/rotation")))
        assert seen_headers(th.upstream.log()[-1])["x-api-key"] == first
        replace_file(key, rotated + "\n")
        changed = time.monotonic()
        while True:
            body = json.dumps(echoed(c.get("/api/echo/rotation")))
            assert first not in body and rotated not in body  # the echo is scrubbed either way
            seen = seen_headers(th.upstream.log()[-1])["x-api-key"]
            if seen == rotated:
                break
            assert seen == first
            # The gateway reads the file again SECRET_REFRESH_SECONDS after it last did (the
            # fake-clock tests in test_inject.py hold it to that); the margin is for a slow CI.
            assert time.monotonic() - changed < SECRET_REFRESH_SECONDS + 10, "still the old key"
            time.sleep(0.05)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint().start()
    try:
        yield server
    finally:
        server.stop()


def test_oauth2_client_credentials(
    make_through: MakeThrough, upstream_api: Upstream, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.expires_in = 3600
    conn = api_connection(
        upstream_api,
        inject={
            "oauth2_client_credentials": {
                "token_url": token_endpoint.url,
                "client_id": TokenEndpoint.CLIENT_ID,
                "client_secret": "env:OAUTH_SECRET",
            }
        },
    )
    th = make_through({"connections": [conn]}, env={"OAUTH_SECRET": TokenEndpoint.CLIENT_SECRET})
    with th.client() as c:
        bodies = [json.dumps(echoed(c.get("/api/echo/oauth"))) for _ in range(3)]
    tokens = {seen_headers(e)["authorization"] for e in th.upstream.log()}
    assert len(tokens) == 1  # one token, fetched once, for every request
    [bearer] = tokens
    assert bearer.startswith("Bearer local-token-1-")
    assert token_endpoint.issued == 1
    for body in bodies:
        assert bearer.split()[1] not in body
        assert TokenEndpoint.CLIENT_SECRET not in body
