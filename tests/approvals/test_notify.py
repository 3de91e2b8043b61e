"""Webhook notifications to a real local HTTP receiver: signatures, retries, Slack format."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from callgate.approvals import WebhookNotifier, sign, verify_signature
from callgate.approvals.notify import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.approvals.conftest import ALICE, base_config, run, running

SECRET = "whsec-test-0123456789"


@dataclass
class Receiver:
    """Answers with ``statuses`` in turn (then 200); keeps every request and what it accepted."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        self.requests.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            # A receiver verifies before accepting, and drops a delivery id it already has.
            ok = verify_signature(
                SECRET.encode(), body, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
            )
            if not ok:
                return 401
            if any(h[DELIVERY_HEADER] == headers[DELIVERY_HEADER] for h, _ in self.accepted):
                return 200
            self.accepted.append((headers, body))
        return status


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k: v for k, v in self.headers.items()}
            status = state.handle(headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _config(url: str, fmt: str = "json", **extra: Any) -> dict[str, Any]:
    return base_config(
        [
            {
                "connections": ["orders"],
                "approvers": {"groups": ["dba"]},
                "notify": [{"webhook": url, "format": fmt, "secret": "env:CG_TEST_HOOK", **extra}],
            }
        ]
    )


def _notify_once(tmp_path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Create one review with the service running; return the review.notified deliveries."""

    async def main() -> list[dict[str, Any]]:
        notifier = WebhookNotifier(base_delay=0.01, max_delay=0.05)
        async with running(tmp_path, data, notifier=notifier) as (service, store):
            await service.request(
                ALICE, connection="orders", statement_sql="INSERT INTO t VALUES (1)",
                policy_version="v1",
            )  # fmt: skip
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await service.flush()
                events = [e for e in await store.session_events(None)]
                notified = [e.data() for e in events if e.type == "review.notified"]
                if notified:
                    return list(notified[0]["deliveries"])
                await asyncio.sleep(0.02)
            raise AssertionError("no review.notified event")

    return run(main)


def test_signed_json_webhook(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_HOOK", SECRET)
    (delivery,) = _notify_once(tmp_path, _config(receiver.url))
    assert delivery["delivered"] and delivery["attempts"] == 1
    (headers, body), = receiver.accepted  # fmt: skip
    data = json.loads(body)
    assert data["event"] == "review.requested"
    assert data["review"]["statement"] == "INSERT INTO t VALUES (1)"
    assert data["review"]["requester"] == "alice"
    assert data["delivery_id"] == headers[DELIVERY_HEADER]
    signature, timestamp = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET.encode(), body, timestamp, signature)
    # what a receiver must refuse: a changed body, another key, a replay later on
    assert not verify_signature(SECRET.encode(), body + b" ", timestamp, signature)
    assert not verify_signature(b"other-secret", body, timestamp, signature)
    assert not verify_signature(SECRET.encode(), body, timestamp, "sha256=" + "0" * 64)
    assert not verify_signature(
        SECRET.encode(), body, timestamp, signature, now=int(timestamp) + 3600
    )
    assert sign(SECRET.encode(), int(timestamp), body) == signature


def test_receiver_failing_twice_gets_it_exactly_once(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_HOOK", SECRET)
    receiver.statuses = [500, 503]
    (delivery,) = _notify_once(tmp_path, _config(receiver.url))
    assert delivery["delivered"] and delivery["attempts"] == 3
    assert len(receiver.requests) == 3
    assert len(receiver.accepted) == 1
    ids = {h[DELIVERY_HEADER] for h, _ in receiver.requests}
    assert len(ids) == 1  # one delivery id across retries: a receiver can deduplicate
    time.sleep(0.2)
    assert len(receiver.requests) == 3  # nothing more after the success


def test_retries_stop_at_max_attempts_and_on_a_client_error(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_HOOK", SECRET)
    receiver.statuses = [500, 500, 500, 500]
    (tmp_path / "a").mkdir()
    (delivery,) = _notify_once(tmp_path / "a", _config(receiver.url, max_attempts=2))
    assert not delivery["delivered"] and delivery["attempts"] == 2 and delivery["status"] == 500
    assert len(receiver.requests) == 2

    receiver.requests.clear()
    receiver.statuses = [400]
    (tmp_path / "b").mkdir()
    (delivery,) = _notify_once(tmp_path / "b", _config(receiver.url))
    assert not delivery["delivered"] and delivery["attempts"] == 1
    assert len(receiver.requests) == 1


def test_slack_format(tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_HOOK", SECRET)
    (delivery,) = _notify_once(tmp_path, _config(receiver.url, "slack"))
    assert delivery["delivered"]
    (_, body), = receiver.accepted  # fmt: skip
    data = json.loads(body)
    assert "alice" in data["text"] and "orders" in data["text"]
    assert [b["type"] for b in data["blocks"]] == ["section", "section", "context"]
    assert "INSERT INTO t VALUES (1)" in data["blocks"][1]["text"]["text"]
    assert "callgate reviews approve rv_" in data["blocks"][2]["elements"][0]["text"]


def test_unreachable_webhook_is_reported_without_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_HOOK", SECRET)
    (delivery,) = _notify_once(tmp_path, _config("http://127.0.0.1:9/secret-path", max_attempts=2))
    assert not delivery["delivered"] and delivery["attempts"] == 2
    assert "secret-path" not in (delivery["error"] or "")
