"""Policy, approvals and masking through the HTTP engine, end to end with httpx and curl."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest

from tests.engines.http.conftest import MakeThrough, Through
from tests.support.gateway import Gateway

pytestmark = pytest.mark.integration


PAYMENTS = {
    "name": "apps call the api",
    "subjects": {"groups": ["apps"]},
    "connections": ["api"],
    "rules": [
        {"allow": {"methods": ["GET", "HEAD"]}},
        {"allow": {"methods": ["POST"], "paths": ["/echo/**", "/upload"]}},
        {"deny": {"methods": ["POST"], "paths": ["/echo/charges"], "json": ["$.amount > 10000"]}},
        {"review": {"methods": ["POST"], "paths": ["/echo/refunds"]}},
        {"deny": {"methods": ["DELETE"]}},
    ],
    "mask": [
        {"json": ["$.data[*].card.number"], "style": "redact"},
        {"detect": ["email"], "style": "redact"},
        {"headers": ["set-cookie"], "style": "redact"},
    ],
}


def approvals(mode: str = "hold", timeout: str = "30s") -> list[dict[str, Any]]:
    return [
        {"connections": ["api"], "approvers": {"groups": ["dba"]}, "mode": mode, "timeout": timeout}
    ]


def cli_as(gw: Gateway, credential: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(gw.exe), *args, "-c", str(gw.config_path)],
        capture_output=True,
        text=True,
        env={**gw.env, "CALLGATE_CREDENTIAL": credential},
        timeout=60,
        check=False,
    )


def pending(gw: Gateway, credential: str, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        done = cli_as(gw, credential, "reviews", "list", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        if rows:
            return rows
        assert time.monotonic() < deadline, "no pending review appeared"
        time.sleep(0.2)


@pytest.fixture
def policed(make_through: MakeThrough) -> Through:
    return make_through({"policies": [PAYMENTS]})


def test_deny_names_the_rule_and_reaches_nothing(policed: Through) -> None:
    with policed.client() as c:
        r = c.delete("/api/echo/thing")
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "denied"
    assert "apps call the api" in error["message"] and "rule 4" in error["message"]
    r = httpx.put(f"{policed.base}/api/echo", headers={"Authorization": f"Bearer {policed.key}"})
    assert r.status_code == 403 and "no rule allows" in r.json()["error"]["message"]
    assert policed.upstream.log() == []


def test_json_body_condition(policed: Through) -> None:
    with policed.client() as c:
        big = c.post("/api/echo/charges", json={"amount": 20000, "currency": "usd"})
        assert big.status_code == 403
        assert "$.amount > 10000" in big.json()["error"]["message"]
        # the same value as a string is read as a number too
        assert c.post("/api/echo/charges", json={"amount": "20000"}).status_code == 403
        small = c.post("/api/echo/charges", json={"amount": 5})
        assert small.status_code == 200
        assert json.loads(small.json()["body"]) == {"amount": 5}
    assert [e["path"] for e in policed.upstream.log()] == ["/echo/charges"]


def test_body_over_the_inspection_limit_is_413(make_through: MakeThrough) -> None:
    th = make_through(
        {"policies": [PAYMENTS], "gateway": {"limits": {"http_max_inspected_body": 1000}}}
    )
    with th.client() as c:
        r = c.post("/api/echo/charges", json={"amount": 1, "pad": "x" * 2000})
    assert r.status_code == 413
    assert "http_max_inspected_body" in r.json()["error"]["message"]
    assert th.upstream.log() == []


def test_review_hold_approved_then_forwarded(make_through: MakeThrough) -> None:
    th = make_through({"policies": [PAYMENTS], "approvals": approvals()})
    dba = th.gw.create_key("dba-1", ["dba"])
    result: dict[str, Any] = {}

    def call() -> None:
        with th.client(timeout=60) as c:
            r = c.post("/api/echo/refunds", json={"charge": "ch_1", "amount": 30})
            result["status"] = r.status_code
            result["body"] = r.json()

    t = threading.Thread(target=call)
    t.start()
    review = pending(th.gw, dba)[0]
    assert "POST /echo/refunds" in json.dumps(review)
    assert th.upstream.log() == []  # held: nothing forwarded yet
    assert cli_as(th.gw, th.key, "reviews", "approve", review["id"]).returncode != 0  # own
    done = cli_as(th.gw, dba, "reviews", "approve", review["id"], "--reason", "ok")
    assert done.returncode == 0, done.stderr
    t.join(30)
    assert result["status"] == 200
    assert json.loads(result["body"]["body"]) == {"charge": "ch_1", "amount": 30}
    assert [e["path"] for e in th.upstream.log()] == ["/echo/refunds"]


def test_review_hold_denied_is_403_with_review_id(make_through: MakeThrough) -> None:
    th = make_through({"policies": [PAYMENTS], "approvals": approvals()})
    dba = th.gw.create_key("dba-1", ["dba"])
    result: dict[str, Any] = {}

    def call() -> None:
        with th.client(timeout=60) as c:
            r = c.post("/api/echo/refunds", json={"amount": 1})
            result["status"] = r.status_code
            result["error"] = r.json()["error"]

    t = threading.Thread(target=call)
    t.start()
    review = pending(th.gw, dba)[0]
    done = cli_as(th.gw, dba, "reviews", "deny", review["id"], "--reason", "not today")
    assert done.returncode == 0, done.stderr
    t.join(30)
    assert result["status"] == 403
    assert result["error"]["review_id"] == review["id"]
    assert "not today" in result["error"]["message"]
    assert th.upstream.log() == []


def test_deferred_202_then_approved_request_goes_through(make_through: MakeThrough) -> None:
    th = make_through({"policies": [PAYMENTS], "approvals": approvals(mode="deferred")})
    dba = th.gw.create_key("dba-1", ["dba"])
    with th.client() as c:
        r = c.post("/api/echo/refunds", json={"amount": 7})
        assert r.status_code == 202
        review_id = r.json()["error"]["review_id"]
        assert r.json()["error"]["code"] == "review_pending"
        done = cli_as(th.gw, dba, "reviews", "approve", review_id, "--reason", "fine")
        assert done.returncode == 0, done.stderr
        # another body is another request: it needs its own approval
        assert c.post("/api/echo/refunds", json={"amount": 8}).status_code == 202
        again = c.post("/api/echo/refunds", json={"amount": 7})
        assert again.status_code == 200
    assert [e["path"] for e in th.upstream.log()] == ["/echo/refunds"]


def test_nested_json_and_headers_masked(policed: Through) -> None:
    with policed.client() as c:
        r = c.get("/api/json/customer")
        cookie = c.get("/api/cookie")
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["card"]["number"] for d in data] == ["[REDACTED]", "[REDACTED]"]
    assert [d["email"] for d in data] == ["[REDACTED]", "[REDACTED]"]
    assert [d["name"] for d in data] == ["Ada", "Bob"]  # the rest untouched
    assert int(r.headers["content-length"]) == len(r.content)
    assert "4111111111111111" not in r.text and "ada@example.com" not in r.text
    set_cookie = cookie.headers["set-cookie"]
    assert set_cookie.startswith("session=") and "s3cr3t-session-value" not in set_cookie
    # masking asked the upstream for an uncompressed, whole body
    seen = dict((k.lower(), v) for k, v in policed.upstream.log()[0]["headers"])
    assert seen["accept-encoding"] == "identity"


def test_jsonp_masked_and_loose_jsonp_withheld(policed: Through) -> None:
    with policed.client() as c:
        r = c.get("/api/jsonp/customer", params={"callback": "jQuery_1.cb"})
        loose = c.get("/api/jsonp/customer", params={"style": "loose"})
    assert r.status_code == 200, r.text
    assert r.text.startswith("jQuery_1.cb(") and r.text.endswith(");")
    data = json.loads(r.text[len("jQuery_1.cb(") : -2])["data"]
    assert [d["card"]["number"] for d in data] == ["[REDACTED]", "[REDACTED]"]
    assert [d["name"] for d in data] == ["Ada", "Bob"]
    assert "4111111111111111" not in r.text and "ada@example.com" not in r.text
    # a JavaScript object literal is not JSON: callgate cannot find the fields, so it fails
    assert loose.status_code == 502
    assert "4111111111111111" not in loose.text and "JSONP" in loose.text


def test_masked_with_curl(policed: Through, curl: str) -> None:
    done = subprocess.run(
        [
            curl,
            "-sS",
            "--compressed",
            "-H",
            f"Authorization: Bearer {policed.key}",
            f"{policed.base}/api/json/customer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["data"][1]["card"] == {"number": "[REDACTED]", "exp": "01/29"}


def test_response_over_the_inspection_limit_is_withheld(make_through: MakeThrough) -> None:
    th = make_through(
        {"policies": [PAYMENTS], "gateway": {"limits": {"http_max_inspected_body": 100}}}
    )
    with th.client() as c:
        r = c.get("/api/json/customer")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "response_withheld"
        assert "4111" not in r.text
        # binary bodies stream through unread, whatever their size
        big = c.get("/api/download", params={"size": "300000"})
        assert big.status_code == 200 and len(big.content) == 300000


def test_reloaded_policy_applies_to_a_live_connection(through: Through) -> None:
    with through.client() as c:
        assert c.delete("/api/echo/x").status_code == 200
        config = dict(through.gw.config)
        config["policies"] = [PAYMENTS]
        through.gw.write_config(config)
        through.gw.reload()
        deadline = time.monotonic() + 15
        while c.delete("/api/echo/x").status_code != 403:
            assert time.monotonic() < deadline, "the reloaded policy never applied"
            time.sleep(0.2)
        assert c.get("/api/json/plain").status_code == 200  # same connection, still served
