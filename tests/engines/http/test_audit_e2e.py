"""What the HTTP engine records: one session per caller connection, each request and its outcome,
secret-looking query values masked, masked body samples with ``record_body``; chains verify."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.engines.http.conftest import ALLOW_APPS, API_SECRET, MakeThrough

pytestmark = pytest.mark.integration

MASKING = {**ALLOW_APPS, "mask": [{"detect": ["email"], "style": "redact"}]}


def by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == kind]


def test_requests_recorded_masked_and_verifiable(make_through: MakeThrough) -> None:
    th = make_through({"policies": [MASKING], "gateway": {"audit": {"record_body": 4000}}})
    with th.client() as c:
        r = c.post(
            "/api/echo/orders",
            params={"access_token": "tok-123456789", "page": "2"},
            json={"to": "carol@example.com", "n": 1},
        )
        assert r.status_code == 200
        assert "carol@example.com" not in r.text  # the echo came back masked
        assert c.get("/api/status/404").status_code == 404
    [session] = [s for s in th.sessions() if s["protocol"] == "http"]
    assert session["connection"] == "api"
    events = th.events(session["id"])
    types = [e["type"] for e in events]
    assert types[0] == "session.start" and types[-1] == "session.end"
    requests = by_type(events, "http.request")
    assert [(q["method"], q["path"], q["verdict"]) for q in requests] == [
        ("POST", "/echo/orders", "allow"),
        ("GET", "/status/404", "allow"),
    ]
    # the query as recorded; the echo's answer quotes it back, and the sample shows that as sent
    assert "tok-123456789" not in json.dumps(requests)
    assert "access_token=***" in requests[0]["query"] and "page=2" in requests[0]["query"]
    responses = by_type(events, "http.response")
    assert [r["status"] for r in responses] == [200, 404]
    assert all(r["bytes_to_client"] > 0 and r["duration_ms"] >= 0 for r in responses)
    sample, not_found = by_type(events, "http.body")
    assert not_found["request"] is None and json.loads(not_found["response"]) == {"status": 404}
    assert "carol@example.com" not in json.dumps(sample)
    assert "[REDACTED]" in sample["request"] and "[REDACTED]" in sample["response"]
    # nothing anywhere holds a credential
    text = json.dumps(events)
    assert th.key not in text and API_SECRET not in text
    assert by_type(events, "session.end")[0]["statements"] == 2
    verify = th.gw.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    shown = th.gw.cli("sessions", "show", session["id"])
    assert "POST /echo/orders" in shown.stdout


def test_denied_request_recorded_before_the_answer(make_through: MakeThrough) -> None:
    th = make_through(
        {"policies": [{**ALLOW_APPS, "rules": [{"deny": {"paths": ["/echo/**"]}}, {"allow": {}}]}]}
    )
    with th.client() as c:
        assert c.get("/api/echo/x").status_code == 403
    [session] = [s for s in th.sessions() if s["protocol"] == "http"]
    events = th.events(session["id"])
    [request] = by_type(events, "http.request")
    assert request["verdict"] == "deny" and request["rules"]
    [response] = by_type(events, "http.response")
    assert response["status"] == 403 and "denied" in response["error"]


def test_audit_store_down_is_503(make_through: MakeThrough) -> None:
    import sqlite3

    th = make_through()
    db = th.gw.workdir / "callgate.db"
    with th.client() as c:
        assert c.get("/api/json/plain").status_code == 200
        # another process holds SQLite's write lock: the store cannot take events
        lock = sqlite3.connect(db, timeout=0.1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with th.client() as other:  # a new connection: its session cannot even start
                r = other.get("/api/json/plain", timeout=30)
                assert r.status_code == 503
                assert r.json()["error"]["code"] == "audit_unavailable"
        finally:
            lock.rollback()
            lock.close()
    assert [e["path"] for e in th.upstream.log()] == ["/json/plain"]
