"""Signed checkpoints: Ed25519 signatures over chain heads (see docs/audit.md, "Checkpoints").

A hash chain shows an edited, removed, inserted or reordered event, but not a tail cut off: the
shortened chain is still a valid chain. A checkpoint closes that gap. The store's writer, which is
the one place that knows what committed, signs the head ``(seq, hash)`` of every chain that moved
since the previous checkpoint, at an interval, when a session ends, and when retention purges
sessions. Verification then requires each chain to still reach the last head signed for it.

Each checkpoint's body is canonical JSON::

    {"heads": [[session_id, seq, hash], ...], "id": N, "kind": "interval" | "session_end" | ...,
     "prev": digest of checkpoint N-1 (64 zeros for the first), "public_key": base64 raw key,
     "purged": [session ids removed by retention], "ts": unix seconds (float)}

``signature`` is base64 Ed25519 over the body's UTF-8 bytes and the digest is its SHA-256, so
checkpoints are a chain of their own: one deleted from the middle breaks the next one's ``prev``.
The private key never enters the store; only its public half is written, to name the signer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.store.audit_records import CheckpointRecord
from callgate.store.chain import ZERO_HASH, canonical_json

#: the checkpoint chain starts from this ``prev``
ZERO_DIGEST = ZERO_HASH

Head = tuple[str | None, int, str]


def public_key_b64(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> ed25519.Ed25519PublicKey:
    """A public key given as base64 of the 32 raw bytes (what ``certs audit-key`` prints) or PEM.

    Raises ``ValueError`` when it is neither.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(stripped.encode("ascii"))
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError("the PEM public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(stripped, validate=True)
    except ValueError as exc:
        raise ValueError("expected base64 of a 32-byte Ed25519 public key, or PEM") from exc
    if len(raw) != 32:
        raise ValueError("expected base64 of a 32-byte Ed25519 public key, or PEM")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


class CheckpointSigner:
    """The Ed25519 private key that signs checkpoints (held in memory, never stored)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        #: base64 of the raw public key, written into every checkpoint
        self.public_key = public_key_b64(key.public_key())

    @classmethod
    def from_pem(cls, pem: bytes | str) -> CheckpointSigner:
        """Raises ``ValueError`` when the PEM is not an unencrypted Ed25519 private key."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError("not an unencrypted PEM private key") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("the signing key is not an Ed25519 key")
        return cls(key)

    def sign(self, body: str) -> str:
        return base64.b64encode(self._key.sign(body.encode("utf-8"))).decode("ascii")


def sorted_heads(heads: Mapping[str | None, tuple[int, str]]) -> tuple[Head, ...]:
    """Heads in a fixed order: sessions by id, then the chain outside sessions."""
    return tuple(
        (chain, seq, digest)
        for chain, (seq, digest) in sorted(heads.items(), key=lambda kv: (kv[0] is None, kv[0]))
    )


def checkpoint_body(
    id_: int,
    ts: float,
    kind: str,
    heads: Iterable[Head],
    purged: Iterable[str],
    prev: str,
    public_key: str,
) -> str:
    return canonical_json(
        {
            "heads": [[chain, seq, digest] for chain, seq, digest in heads],
            "id": id_,
            "kind": kind,
            "prev": prev,
            "public_key": public_key,
            "purged": list(purged),
            "ts": float(ts),
        }
    )


def body_of(record: CheckpointRecord) -> str:
    return checkpoint_body(
        record.id,
        record.ts,
        record.kind,
        record.heads,
        record.purged,
        record.prev,
        record.public_key,
    )


def digest_of(record: CheckpointRecord) -> str:
    return hashlib.sha256(body_of(record).encode("utf-8")).hexdigest()


def signature_ok(record: CheckpointRecord, key: ed25519.Ed25519PublicKey) -> bool:
    try:
        signature = base64.b64decode(record.signature, validate=True)
        key.verify(signature, body_of(record).encode("utf-8"))
    except (ValueError, InvalidSignature):
        return False
    return True


def heads_json(heads: Iterable[Head]) -> str:
    return canonical_json([[chain, seq, digest] for chain, seq, digest in heads])


def parse_heads(text: str) -> tuple[Head, ...]:
    """Stored heads back to tuples; malformed text gives ``()`` (verification then fails the
    checkpoint's signature, which covers the heads)."""
    try:
        value = json.loads(text)
        return tuple((h[0], int(h[1]), str(h[2])) for h in value)
    except (ValueError, TypeError, IndexError, KeyError):
        return ()


def parse_purged(text: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(text or "[]")
        return tuple(str(v) for v in value) if isinstance(value, list) else ()
    except ValueError:
        return ()


@dataclass(frozen=True, slots=True)
class AuditWriterSettings:
    """What the audit service tells the store's writer (``Store.configure_audit``).

    ``sinks``: one outbox row per event per sink, written in the event's transaction.
    """

    signer: CheckpointSigner | None = None
    #: seconds between interval checkpoints (only when some chain moved)
    checkpoint_interval: float = 10.0
    sinks: tuple[str, ...] = ()
    gateway_id: str | None = None
    #: seconds between two heartbeats of ``gateway_id``
    heartbeat_interval: float = 10.0


class CheckpointTracker:
    """The writer's side: which heads moved since the last checkpoint, and when one is due.

    ``dirty`` holds committed heads not yet signed; heads written in the current transaction come
    from its :class:`~callgate.store.chain.ChainBatch` and join ``dirty`` only if it commits.
    """

    __slots__ = ("dirty", "last_at", "last_digest", "last_id")

    def __init__(self) -> None:
        self.dirty: dict[str | None, tuple[int, str]] = {}
        # the first interval checkpoint comes an interval after the writer started
        self.last_at = time.time()
        self.last_id = 0
        self.last_digest = ZERO_DIGEST

    def due(
        self,
        settings: AuditWriterSettings,
        now: float,
        pending: Mapping[str | None, tuple[int, str]],
        *,
        forced: bool,
    ) -> bool:
        if settings.signer is None:
            return False
        if forced:
            return True
        moved = bool(self.dirty) or bool(pending)
        return moved and now - self.last_at >= settings.checkpoint_interval

    def make(
        self,
        signer: CheckpointSigner,
        *,
        id_: int,
        prev: str,
        ts: float,
        kind: str,
        pending: Mapping[str | None, tuple[int, str]],
        purged: Iterable[str] = (),
    ) -> CheckpointRecord:
        heads = sorted_heads({**self.dirty, **pending})
        purged_t = tuple(purged)
        body = checkpoint_body(id_, ts, kind, heads, purged_t, prev, signer.public_key)
        return CheckpointRecord(
            id=id_,
            ts=float(ts),
            kind=kind,
            heads=heads,
            purged=purged_t,
            prev=prev,
            public_key=signer.public_key,
            signature=signer.sign(body),
        )

    def committed(
        self,
        pending: Mapping[str | None, tuple[int, str]],
        written: CheckpointRecord | None,
        now: float,
    ) -> None:
        if written is None:
            self.dirty.update(pending)
            return
        self.dirty.clear()
        self.last_at = now
        self.last_id = written.id
        self.last_digest = digest_of(written)
