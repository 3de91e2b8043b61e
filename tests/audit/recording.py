"""Record a few sessions through the real audit service, for verification and export tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.audit import AuditService
from callgate.model import ALLOW_ALL, Decision, Principal, SessionInfo, SqlCommand, Verdict
from callgate.store import CheckpointSigner, open_store

ALICE = Principal("alice", frozenset({"apps"}), "api_key", credential_id="fn1")


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


@dataclass
class Recorded:
    store_url: str
    key_path: Path
    public_key: str
    #: session id -> number of events
    sessions: dict[str, int]


def write_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def write_config(tmp_path: Path, store_url: str, key_path: Path | None, extra: str = "") -> Path:
    path = tmp_path / "callgate.yaml"
    lines = ["gateway:", f"  store: {store_url}", "  audit:"]
    if key_path is not None:
        lines.append(f"    signing_key: file:{key_path}")
    lines.append("    durability: strict")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


async def record_sessions(store_url: str, key: ed25519.Ed25519PrivateKey | None) -> dict[str, int]:
    """Three ended sessions (s1: 4 statements, s2: 2 with a denial, s3: 1) and auth failures."""
    store = open_store(store_url)
    clock = Clock()
    audit = AuditService(
        store,
        clock=clock,
        signer=None if key is None else CheckpointSigner(key),
        checkpoint_interval=3600,
        gateway_id="test-gw",
        record_rows=2,
    )
    counts: dict[str, int] = {}
    plan = {
        "s1": ["SELECT 1", "SELECT 2", "UPDATE t SET a = 1", "SELECT 4"],
        "s2": ["SELECT 'x'", "DROP TABLE t"],
        "s3": ["SELECT now()"],
    }
    for sid, statements in plan.items():
        info = SessionInfo(
            sid,
            ALICE,
            "orders",
            "postgres",
            "10.0.0.1:4000",
            True,
            "app",
            "psql",
            started_at=clock(),
        )
        rec = await audit.open_session(info)
        n = 1
        for sql in statements:
            deny = sql.startswith("DROP")
            decision = Decision(Verdict.DENY, ("no ddl",), "ddl") if deny else ALLOW_ALL
            seq = await rec.statement(SqlCommand(sql), decision)
            rec.statement_done(
                seq,
                tag=None if deny else "SELECT 1",
                rows=None if deny else 1,
                error_sqlstate="42501" if deny else None,
                error_message="denied" if deny else None,
                duration_ms=0.5,
            )
            n += 2
        await rec.end("client closed", bytes_from_client=10, bytes_to_client=20)
        counts[sid] = n + 1
    audit.auth_failure(
        protocol="postgres", source="10.0.0.9:1", reason="unknown API key", issuer=None
    )
    await audit.close()
    return counts


def record(tmp_path: Path, store_url: str, *, signed: bool = True) -> Recorded:
    key_path = tmp_path / "audit-ed25519.pem"
    key = write_key(key_path)
    sessions = asyncio.run(record_sessions(store_url, key if signed else None))
    public = CheckpointSigner(key).public_key
    return Recorded(store_url, key_path, public, sessions)
