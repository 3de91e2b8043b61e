"""``gateway:`` — the store, the gateway's own secrets, TLS, audit and limits."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator, ValidationInfo, model_validator

from callgate.config.fields import (
    ByteSize,
    ConfigModel,
    ConfigPath,
    ExistingFile,
    HttpUrl,
    NonEmptyStr,
    NonNegativeInt,
    PositiveDuration,
    PositiveInt,
    Secret,
    base_dir,
    describe_type,
    message_error,
    path_error,
)
from callgate.config.sizes import GiB, MiB

DEFAULT_STORE: Final = "sqlite:///./callgate.db"

#: Seconds between signed checkpoints (when some chain moved). A tail cut off the store after the
#: last checkpoint cannot be told from one never written, so this bounds what truncation can hide.
DEFAULT_CHECKPOINT_INTERVAL: Final = timedelta(seconds=10)
#: How often retention looks for sessions past ``retention``.
DEFAULT_RETENTION_EVERY: Final = timedelta(hours=1)
#: JSONL export file size at which it is rotated (``audit.jsonl`` -> ``audit.jsonl.1`` ...).
DEFAULT_JSONL_MAX_BYTES: Final = 100 * MiB
#: Rotated JSONL files kept beside the current one.
DEFAULT_JSONL_KEEP: Final = 5
#: Undelivered events kept per sink. A dead sink must not grow the store without bound: past
#: this, the oldest are dropped and an ``export.backlog_dropped`` event says which.
DEFAULT_MAX_BACKLOG: Final = 100_000
#: Events per delivery (one webhook POST, one file write).
DEFAULT_EXPORT_BATCH: Final = 100

#: Largest protocol frame relayed at all. PostgreSQL itself refuses anything past 1 GB
#: (MaxAllocSize), so a larger length prefix is a bug or an attack, never real traffic.
DEFAULT_MAX_MESSAGE_BYTES: Final = 1 * GiB
#: Largest frame callgate buffers in memory to decode (query text, errors, rows it masks).
#: Bigger frames are relayed in bulk without being held; this caps per-session memory.
DEFAULT_MAX_DECODED_BYTES: Final = 64 * MiB
#: Largest HTTP body callgate buffers to inspect (a policy condition on the JSON request body, a
#: masked JSON response, an approval or AWS signature that covers the body). Past it the request
#: is refused (413) or the response withheld (502): never forwarded uninspected. Bodies nobody
#: needs to read stream through whatever their size.
DEFAULT_HTTP_MAX_INSPECTED_BODY: Final = 16 * MiB

_SQLITE_PREFIX: Final = "sqlite:///"
_POSTGRES_PREFIXES: Final = ("postgresql://", "postgres://")


def _to_store(value: object, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise message_error(f"expected a store URL, got {describe_type(value)}")
    if value.startswith(_POSTGRES_PREFIXES):
        if not urlsplit(value).hostname and "host=" not in value:
            raise message_error("expected postgresql://USER@HOST/DATABASE")
        return value
    if value.startswith(_SQLITE_PREFIX):
        raw = value[len(_SQLITE_PREFIX) :]
        if not raw:
            raise message_error("expected sqlite:///PATH (relative) or sqlite:////PATH (absolute)")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (base_dir(info) / path).resolve()
        return f"{_SQLITE_PREFIX}{path}"
    raise message_error(
        "expected sqlite:///PATH (embedded; relative to the config file) or "
        "postgresql://… (shared by several gateway replicas)"
    )


StoreUrl = Annotated[str, PlainValidator(_to_store)]


class TLSConfig(ConfigModel):
    """The gateway's certificate and key (PEM); ``callgate certs dev`` writes a local pair."""

    cert: ExistingFile
    key: ExistingFile
    #: CA bundle used to verify client certificates on every TLS listener (mutual TLS)
    client_ca: ExistingFile | None = None


class ExportSinkConfig(ConfigModel):
    """One audit export destination: exactly one of ``jsonl``, ``webhook``, ``syslog``."""

    jsonl: ConfigPath | None = None
    webhook: HttpUrl | None = None
    #: HMAC key used to sign webhook bodies
    secret: Secret | None = None
    syslog: str | None = None
    #: what each exported event looks like: callgate's own JSON, or OCSF 1.x
    format: Literal["jsonl", "ocsf"] = "jsonl"
    #: jsonl: rotate the file when it reaches this size
    max_bytes: ByteSize = DEFAULT_JSONL_MAX_BYTES
    #: jsonl: rotated files kept (``FILE.1`` is the newest)
    keep: PositiveInt = DEFAULT_JSONL_KEEP
    #: undelivered events kept for this sink; past it the oldest are dropped (and audited)
    max_backlog: PositiveInt = DEFAULT_MAX_BACKLOG
    #: events per delivery
    batch: PositiveInt = DEFAULT_EXPORT_BATCH

    @model_validator(mode="after")
    def _exactly_one(self) -> ExportSinkConfig:
        chosen = [k for k in ("jsonl", "webhook", "syslog") if getattr(self, k) is not None]
        if len(chosen) != 1:
            found = " and ".join(chosen) if chosen else "none"
            raise message_error(f"expected exactly one of jsonl, webhook, syslog; found {found}")
        if self.secret is not None and self.webhook is None:
            raise path_error("secret", "secret is only used with webhook")
        for key in ("max_bytes", "keep"):
            if key in self.model_fields_set and self.jsonl is None:
                raise path_error(key, f"{key} is only used with jsonl")
        if self.syslog is not None:
            _syslog_target(self.syslog)
        return self

    @property
    def kind(self) -> Literal["jsonl", "webhook", "syslog"]:
        if self.jsonl is not None:
            return "jsonl"
        return "webhook" if self.webhook is not None else "syslog"

    @property
    def syslog_target(self) -> tuple[Literal["udp", "tcp"], str, int] | None:
        """``(transport, host, port)`` for a syslog sink; port 514 when the URL has none."""
        return _syslog_target(self.syslog) if self.syslog is not None else None


def _syslog_target(url: str) -> tuple[Literal["udp", "tcp"], str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or port == -1:
        raise path_error("syslog", f"expected udp://HOST[:PORT] or tcp://HOST[:PORT], got {url!r}")
    transport: Literal["udp", "tcp"] = "udp" if parts.scheme == "udp" else "tcp"
    return transport, parts.hostname, port or 514


class AuditConfig(ConfigModel):
    #: strict: a statement's event is committed before the statement is forwarded
    durability: Literal["strict", "async"] = "strict"
    #: what happens to traffic when the audit store cannot take an event
    on_store_failure: Literal["deny", "allow"] = "deny"
    #: how long recorded sessions are kept; ``None``: forever
    retention: PositiveDuration | None = None
    #: Ed25519 private key (PEM) that signs checkpoints; ``callgate certs audit-key`` writes one
    signing_key: Secret | None = None
    #: rows of each result kept (masked) in the recording
    record_rows: NonNegativeInt = 0
    #: bytes of each HTTP request and response body kept (masked) in the recording
    record_body: NonNegativeInt = 0
    export: tuple[ExportSinkConfig, ...] = ()
    #: how often a signed checkpoint covers the chain heads that moved (also at every session end)
    checkpoint_interval: PositiveDuration = DEFAULT_CHECKPOINT_INTERVAL
    #: how often retention runs (with ``retention`` set)
    retention_every: PositiveDuration = DEFAULT_RETENTION_EVERY
    #: this gateway's name in the store (default: the host name). On start a gateway closes its own
    #: sessions left open by a crash, so replicas sharing a PostgreSQL store need distinct names.
    instance: NonEmptyStr | None = None


class LimitsConfig(ConfigModel):
    max_message_bytes: ByteSize = DEFAULT_MAX_MESSAGE_BYTES
    max_decoded_bytes: ByteSize = DEFAULT_MAX_DECODED_BYTES
    #: largest HTTP body buffered for inspection (policy on the body, masking, approvals)
    http_max_inspected_body: ByteSize = DEFAULT_HTTP_MAX_INSPECTED_BODY

    @model_validator(mode="after")
    def _decoded_within_message(self) -> LimitsConfig:
        if self.max_decoded_bytes > self.max_message_bytes:
            raise path_error("max_decoded_bytes", "must not be larger than max_message_bytes")
        return self


class GatewayConfig(ConfigModel):
    store: StoreUrl = Field(default=DEFAULT_STORE, validate_default=True)
    #: HMAC key for token hashes and mask tokens; if absent one is generated beside the store
    secret_key: Secret | None = None
    tls: TLSConfig | None = None
    audit: AuditConfig = AuditConfig()
    limits: LimitsConfig = LimitsConfig()
    #: how long SIGTERM waits for sessions to finish before closing them
    drain_timeout: PositiveDuration = timedelta(seconds=30)

    @property
    def store_path(self) -> Path | None:
        """The SQLite database file (absolute), or ``None`` for a PostgreSQL store."""
        if self.store.startswith(_SQLITE_PREFIX):
            return Path(self.store[len(_SQLITE_PREFIX) :])
        return None
