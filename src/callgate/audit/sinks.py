"""Export sinks: where the exporter delivers audit events (``gateway.audit.export``).

- JSONL file: one event per line, appended, ``fsync``ed before the delivery counts; rotated by
  size (``FILE`` -> ``FILE.1`` -> ... -> ``FILE.<keep>``, the oldest removed).
- syslog, RFC 5424: over UDP (one message per datagram; UDP cannot confirm delivery) or TCP with
  octet-counting framing (RFC 6587 §3.4.1: ``<length> <message>``).
- webhook: one HTTP POST per batch, ``{"events": [...]}``, signed with HMAC-SHA256.

A sink raises :class:`SinkError` when a delivery fails; the exporter then retries the batch with
exponential backoff. Sinks never see a secret other than their own (the webhook's HMAC key).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import httpx

from callgate.errors import CallgateError

if TYPE_CHECKING:
    from callgate.config.gateway import ExportSinkConfig
    from callgate.secrets import SecretRef

#: Seconds a webhook POST or a syslog TCP connect may take before the delivery counts as failed.
SEND_TIMEOUT: Final = 10.0
#: RFC 5424 facility 13, "log audit"
SYSLOG_FACILITY: Final = 13
SEVERITY_INFO: Final = 6
SEVERITY_NOTICE: Final = 5
#: RFC 5424 §6.3.2: SD-ID ``name@<private enterprise number>``; 32473 is the number reserved for
#: documentation and examples (RFC 5612).
SD_ID: Final = "callgate@32473"
SIGNATURE_HEADER: Final = "X-Callgate-Signature"
TIMESTAMP_HEADER: Final = "X-Callgate-Timestamp"

#: event types reported at syslog severity "notice" rather than "info"
_NOTICE_TYPES: Final = frozenset({"auth.failure", "export.backlog_dropped"})

Exported = dict[str, Any]


class SinkError(CallgateError):
    """A delivery failed (the message says why, never a secret)."""


class Sink(Protocol):
    name: str

    async def send(self, events: Sequence[Exported]) -> None:
        """Deliver ``events`` (in order). Raises :class:`SinkError`."""
        ...

    async def close(self) -> None: ...


def _json_line(event: Exported) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def sink_name(config: ExportSinkConfig) -> str:
    """A sink's stable name in the outbox: its kind and target (a webhook's query string, which
    may carry a token, is replaced by a short hash of the whole URL)."""
    if config.jsonl is not None:
        return f"jsonl:{config.jsonl}"
    if config.syslog is not None:
        return f"syslog:{config.syslog}"
    url = str(config.webhook)
    parts = urlsplit(url)
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"webhook:{parts.scheme}://{parts.hostname}{parts.path}#{digest}"


# --- JSONL ---------------------------------------------------------------------------------------


class JsonlSink:
    def __init__(self, path: Path, *, max_bytes: int, keep: int, name: str | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.name = name or f"jsonl:{self.path}"

    async def send(self, events: Sequence[Exported]) -> None:
        data = b"".join(_json_line(e) + b"\n" for e in events)
        try:
            await asyncio.to_thread(self._append, data)
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _append(self, data: bytes) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > 0 and size + len(data) > self.max_bytes:
            self._rotate()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)  # a delivery counts once it is on disk
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for index in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{index}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    async def close(self) -> None:
        return None


# --- syslog --------------------------------------------------------------------------------------


def _sd_escape(value: str) -> str:
    """RFC 5424 §6.3.3: ``"``, ``\\`` and ``]`` are escaped inside PARAM-VALUE."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are PRINTUSASCII (33..126); ``-`` means empty."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(
    event: Exported, *, hostname: str, procid: str, event_type: str, event_id: object
) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG``."""
    severity = SEVERITY_NOTICE if event_type in _NOTICE_TYPES else SEVERITY_INFO
    pri = SYSLOG_FACILITY * 8 + severity
    ts = event.get("ts")
    when = float(ts) if isinstance(ts, int | float) else time.time()
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="microseconds")
    stamp = stamp.replace("+00:00", "Z")
    params = [f'id="{_sd_escape(str(event_id))}"']
    session = event.get("session_id")
    if session is not None:
        params.append(f'session="{_sd_escape(str(session))}"')
    if "seq" in event:
        params.append(f'seq="{_sd_escape(str(event["seq"]))}"')
    header = (
        f"<{pri}>1 {stamp} {_printable(hostname, 255)} callgate {_printable(procid, 128)}"
        f" {_printable(event_type, 32)} [{SD_ID} {' '.join(params)}] "
    )
    # the BOM says the MSG is UTF-8 (RFC 5424 §6.4); ours is ASCII JSON, a subset
    return header.encode("ascii") + b"\xef\xbb\xbf" + _json_line(event)


class SyslogSink:
    def __init__(self, transport: str, host: str, port: int, *, name: str | None = None) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError("transport must be udp or tcp")
        self.transport = transport
        self.host = host
        self.port = port
        self.name = name or f"syslog:{transport}://{host}:{port}"
        self._hostname = socket.gethostname()
        self._procid = str(os.getpid())
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._udp: asyncio.DatagramTransport | None = None

    def _messages(self, events: Sequence[Exported]) -> list[bytes]:
        out = []
        for event in events:
            metadata = event.get("metadata")
            meta = metadata if isinstance(metadata, dict) else {}
            event_type = str(event.get("type") or event.get("type_name") or "event")
            event_id = event.get("id", meta.get("uid"))
            out.append(
                syslog_message(
                    event,
                    hostname=self._hostname,
                    procid=self._procid,
                    event_type=event_type,
                    event_id=event_id,
                )
            )
        return out

    async def send(self, events: Sequence[Exported]) -> None:
        messages = self._messages(events)
        try:
            if self.transport == "udp":
                await self._send_udp(messages)
            else:
                await self._send_tcp(messages)
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise SinkError(f"syslog {self.transport}://{self.host}:{self.port}: {exc}") from exc

    async def _send_udp(self, messages: list[bytes]) -> None:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self.host, self.port)
            )
            self._udp = transport
        for message in messages:
            self._udp.sendto(message)

    async def _send_tcp(self, messages: list[bytes]) -> None:
        if self._reader is not None and self._reader.at_eof():
            # the receiver closed the connection: what we wrote now would vanish without error
            await self.close()
        if self._writer is None or self._writer.is_closing():
            self._reader, opened = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), SEND_TIMEOUT
            )
            self._writer = opened
        writer: asyncio.StreamWriter = self._writer
        # RFC 6587 §3.4.1 octet counting: MSG-LEN SP SYSLOG-MSG
        writer.write(b"".join(b"%d %s" % (len(m), m) for m in messages))
        await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        writer, self._writer = self._writer, None
        self._reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)


# --- webhook -------------------------------------------------------------------------------------


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` (the timestamp is in the
    signed text so a captured request cannot be replayed later with a new timestamp)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookSink:
    def __init__(
        self,
        url: str,
        *,
        secret: SecretRef | None = None,
        name: str | None = None,
        timeout: float = SEND_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self._secret = secret
        self.name = name or f"webhook:{url}"
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None

    async def send(self, events: Sequence[Exported]) -> None:
        body = json.dumps({"events": list(events)}, separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
        if self._secret is not None:
            key = self._secret.resolve().encode("utf-8")
            headers[SIGNATURE_HEADER] = webhook_signature(key, timestamp, body)
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"webhook {self.name}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise SinkError(f"webhook {self.name}: HTTP {response.status_code}")

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()


def sink_from_config(config: ExportSinkConfig) -> Sink:
    name = sink_name(config)
    if config.jsonl is not None:
        return JsonlSink(config.jsonl, max_bytes=config.max_bytes, keep=config.keep, name=name)
    target = config.syslog_target
    if target is not None:
        transport, host, port = target
        return SyslogSink(transport, host, port, name=name)
    return WebhookSink(str(config.webhook), secret=config.secret, name=name)
