"""Export: the sinks against real local receivers, the outbox exporter, OCSF rendering."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callgate.audit import AuditExporter, AuditService, ExportTarget, JsonlSink, SyslogSink
from callgate.audit.export import event_json, ocsf_event
from callgate.audit.sinks import SIGNATURE_HEADER, TIMESTAMP_HEADER, SinkError, WebhookSink
from callgate.model import ALLOW_ALL, Decision, SessionInfo, SqlCommand, Verdict
from callgate.secrets import SecretRef
from callgate.store import Store, canonical_event, canonical_json, chain_hash
from tests.audit.recording import ALICE, Clock

# --- receivers -----------------------------------------------------------------------------------


class WebhookReceiver:
    """A minimal HTTP/1.1 server: answers ``status()`` (503 while ``down``), keeps the bodies."""

    def __init__(self) -> None:
        self.down = False
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/ingest"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                if self.down:
                    status = b"503 Service Unavailable"
                else:
                    status = b"200 OK"
                    self.bodies.append(body)
                    self.headers.append(headers)
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def event_ids(self) -> list[int]:
        return [e["id"] for body in self.bodies for e in json.loads(body)["events"]]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _record(audit: AuditService, sid: str, statements: int) -> None:
    info = SessionInfo(sid, ALICE, "orders", "postgres", "10.0.0.1:4000", True, "app", "psql")
    rec = await audit.open_session(info)
    for i in range(statements):
        seq = await rec.statement(SqlCommand(f"SELECT {i}"), ALLOW_ALL)
        rec.statement_done(seq, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None,
                           duration_ms=0.1)  # fmt: skip
    await rec.end("client closed", bytes_from_client=1, bytes_to_client=2)
    await audit.flush()  # the end is queued, not waited for


async def _all_ids(store: Store) -> list[int]:
    return [e.id for e in await store.events_page(0, 100_000)]


# --- the outbox, end to end -----------------------------------------------------------------------


def test_a_sink_down_for_a_while_gets_every_event_once_by_id(
    open_backend: Callable[[], Store],
) -> None:
    async def main() -> None:
        receiver = WebhookReceiver()
        url = await receiver.start()
        sink = WebhookSink(url, secret=SecretRef("literal", "hush"), name="hook")
        store = open_backend()
        audit = AuditService(store, sinks=["hook"], close_store=False)
        exporter = AuditExporter(
            store, [ExportTarget(sink, batch=7)], audit=audit, poll_interval=0.05,
            backoff_base=0.05, backoff_max=0.2,
        )  # fmt: skip
        receiver.down = True
        await exporter.start()
        await _record(audit, "s1", 10)
        await asyncio.sleep(0.5)  # several failed attempts meanwhile
        assert receiver.requests >= 2 and receiver.bodies == []
        backlog = {s.sink: s for s in await store.outbox_status()}["hook"]
        assert backlog.pending == 22 and backlog.last_error == "webhook hook: HTTP 503"
        await _record(audit, "s2", 5)  # the data path does not wait for the dead sink
        receiver.down = False
        expected = await _all_ids(store)
        for _ in range(100):
            if sorted(set(receiver.event_ids())) == expected:
                break
            await asyncio.sleep(0.05)
        await exporter.close()
        await audit.close()
        await store.close()
        await receiver.close()
        ids = receiver.event_ids()
        assert sorted(set(ids)) == expected  # every event, deduplicable by id
        assert len(ids) == len(set(ids))  # and here, with one exporter, exactly once
        assert ids == sorted(ids)  # oldest first
        # each body is signed: HMAC-SHA256 over "<timestamp>.<body>"
        for body, headers in zip(receiver.bodies, receiver.headers, strict=True):
            ts = headers[TIMESTAMP_HEADER.lower()]
            mac = hmac.new(b"hush", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            assert headers[SIGNATURE_HEADER.lower()] == f"sha256={mac}"

    asyncio.run(main())


def test_undelivered_events_survive_a_restart(open_backend: Callable[[], Store]) -> None:
    delivered: list[int] = []

    class Collect:
        name = "c"

        async def send(self, events: Any) -> None:
            delivered.extend(e["id"] for e in events)

        async def close(self) -> None:
            return None

    async def before_crash() -> list[int]:
        store = open_backend()
        audit = AuditService(store, sinks=["c"])
        await _record(audit, "s1", 3)
        ids = await _all_ids(store)
        await audit.close()  # nothing exported before the "crash"
        return ids

    async def after_restart() -> None:
        store = open_backend()
        audit = AuditService(store, sinks=["c"], close_store=False)
        exporter = AuditExporter(store, [ExportTarget(Collect())], poll_interval=0.02)  # type: ignore[list-item]
        await exporter.start()
        for _ in range(100):
            if len(delivered) >= len(ids):
                break
            await asyncio.sleep(0.02)
        await exporter.close()
        await audit.close()
        await store.close()

    ids = asyncio.run(before_crash())
    asyncio.run(after_restart())
    assert delivered == ids


def test_a_dead_sinks_backlog_is_bounded_and_the_drop_is_audited(store: Store) -> None:
    class Dead:
        name = "dead"

        async def send(self, events: Any) -> None:
            raise SinkError("connection refused")

        async def close(self) -> None:
            return None

    async def main() -> None:
        audit = AuditService(store, sinks=["dead"], close_store=False)
        target = ExportTarget(Dead(), max_backlog=5)  # type: ignore[arg-type]
        exporter = AuditExporter(store, [target], audit=audit)
        await _record(audit, "s1", 5)  # 12 events
        assert await exporter.trim_once(target) == 7
        await store.flush()
        (dropped,) = await store.session_events(None)
        data = json.loads(dropped.payload)
        assert dropped.type == "export.backlog_dropped"
        assert (data["sink"], data["dropped"], data["max_backlog"]) == ("dead", 7, 5)
        ids = [e.id for e in await store.session_events("s1")]
        assert (data["first_event_id"], data["last_event_id"]) == (ids[0], ids[6])
        with pytest.raises(SinkError):
            await exporter.deliver_once(target)
        status = {s.sink: s for s in await store.outbox_status()}["dead"]
        assert status.max_attempts == 1 and status.last_error == "connection refused"

    asyncio.run(main())


# --- sinks ---------------------------------------------------------------------------------------


def test_jsonl_sink_appends_and_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "out" / "audit.jsonl"
    sink = JsonlSink(path, max_bytes=300, keep=2)

    async def main() -> None:
        for batch in range(6):
            await sink.send([{"id": batch * 2 + i, "pad": "x" * 60} for i in range(2)])

    asyncio.run(main())
    files = [path, path.with_name("audit.jsonl.1"), path.with_name("audit.jsonl.2")]
    assert all(f.exists() for f in files)
    assert not path.with_name("audit.jsonl.3").exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for f in files:
        assert f.stat().st_size <= 300
    ids = [json.loads(line)["id"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert ids == list(range(ids[0], 12))  # newest kept, in order; the oldest rotated away


_RFC5424 = re.compile(
    rb"<(?P<pri>\d+)>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) callgate"
    rb" (?P<pid>\d+) (?P<msgid>\S+) \[callgate@32473 id=\"(?P<id>\d+)\"[^\]]*\]"
    rb" \xef\xbb\xbf(?P<msg>.*)",
    re.S,
)


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "session_id": "s", "seq": i, "ts": 1.5, "type": "auth.failure" if i else "query",
         "payload": {"sql": "SELECT ']\"'"}}
        for i in range(n)
    ]  # fmt: skip


def test_syslog_over_udp_is_rfc5424() -> None:
    async def main() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        class Receive(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.append(data)
                if len(got) == 2:
                    done.set()

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Receive, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        sink = SyslogSink("udp", "127.0.0.1", port)
        await sink.send(_events(2))
        await asyncio.wait_for(done.wait(), 5)
        await sink.close()
        transport.close()
        return got

    messages = asyncio.run(main())
    first, second = (_RFC5424.fullmatch(m) for m in messages)
    assert first is not None and second is not None
    assert first["pri"] == b"110" and second["pri"] == b"109"  # log audit: info, notice
    assert first["msgid"] == b"query" and first["id"] == b"0"
    assert json.loads(first["msg"])["payload"]["sql"] == "SELECT ']\"'"


def test_syslog_over_tcp_uses_octet_counting_and_reconnects() -> None:
    async def main() -> bytes:
        received = bytearray()
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            received.extend(await reader.read(1 << 16))
            writer.close()  # drop the connection after one read: the sink must reconnect

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = SyslogSink("tcp", "127.0.0.1", port)
        await sink.send(_events(3))
        await asyncio.sleep(0.2)
        for _ in range(3):
            try:
                await sink.send(_events(1))
                break
            except SinkError:
                continue  # the closed connection is noticed on a write; the retry reconnects
        await asyncio.sleep(0.2)
        await sink.close()
        server.close()
        assert connections >= 2
        return bytes(received)

    data = asyncio.run(main())
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    assert len(frames) == 4
    assert all(_RFC5424.fullmatch(f) for f in frames)


def test_webhook_errors_are_sink_errors() -> None:
    async def main() -> None:
        sink = WebhookSink("http://127.0.0.1:1/x", name="nowhere", timeout=2)
        with pytest.raises(SinkError, match="nowhere"):
            await sink.send(_events(1))
        await sink.close()

    asyncio.run(main())


# --- formats -------------------------------------------------------------------------------------


def test_exported_events_can_be_rechecked_outside_callgate(store: Store) -> None:
    async def main() -> None:
        audit = AuditService(store, clock=Clock(), close_store=False)
        await _record(audit, "s1", 2)
        await store.flush()
        prev = "0" * 64
        for event in await store.session_events("s1"):
            out = json.loads(json.dumps(event_json(event)))
            canonical = canonical_event(
                out["session_id"], out["seq"], out["ts"], out["type"],
                canonical_json(out["payload"]),
            )  # fmt: skip
            assert out["prev_hash"] == prev and chain_hash(prev, canonical) == out["hash"]
            prev = out["hash"]

    asyncio.run(main())


def test_ocsf_datastore_activity(store: Store) -> None:
    async def main() -> None:
        audit = AuditService(store, clock=Clock(), close_store=False)
        info = SessionInfo("s1", ALICE, "orders", "postgres", "10.0.0.1:4000", True, "app", "psql")
        rec = await audit.open_session(info)
        ok = await rec.statement(SqlCommand("SELECT 1"), ALLOW_ALL)
        rec.statement_done(ok, tag="SELECT 1", rows=1, error_sqlstate=None, error_message=None,
                           duration_ms=3.0)  # fmt: skip
        await rec.statement(SqlCommand("DROP TABLE t"), Decision(Verdict.DENY, ("no ddl",), "ddl"))
        await rec.end("client closed", bytes_from_client=1, bytes_to_client=2)
        await store.flush()
        session = await store.get_session("s1")
        events = {e.seq: ocsf_event(e, session) for e in await store.session_events("s1")}
        start, query, result, denied, end = (events[i] for i in (1, 2, 3, 4, 5))
        for out in events.values():
            assert out["class_uid"] == 6005 and out["category_uid"] == 6
            assert out["type_uid"] == 600500 + out["activity_id"]
            assert out["metadata"]["version"].startswith("1.")
            assert out["actor"]["user"]["name"] == "alice"
            assert out["actor"]["session"]["uid"] == "s1"
            assert out["src_endpoint"] == {"ip": "10.0.0.1", "port": 4000}
            assert out["database"]["name"] == "orders"
            assert isinstance(out["time"], int)
        assert (start["activity_id"], start["activity_name"]) == (3, "Connect")
        assert query["query_info"]["query_string"] == "SELECT 1"
        assert (query["activity_id"], query["disposition_id"]) == (4, 1)
        assert result["query_info"]["uid"] == query["query_info"]["uid"]
        assert result["status_id"] == 1 and result["duration"] == 3
        assert (denied["disposition_id"], denied["status_id"]) == (2, 2)
        assert end["activity_name"] == "Disconnect"
        ids = {int(o["metadata"]["uid"]) for o in events.values()}
        assert ids == {e.id for e in await store.session_events("s1")}

    asyncio.run(main())
