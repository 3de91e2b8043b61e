"""The per-session event hash chain (see docs/audit.md, "The chain").

For each event::

    canonical = canonical_json({"payload": payload, "seq": seq, "session_id": session_id,
                                "ts": ts, "type": type})
    hash      = sha256(bytes.fromhex(prev_hash) + canonical.encode("utf-8")).hexdigest()

``prev_hash`` is the previous event's ``hash`` in the same chain, or :data:`ZERO_HASH` for the
first one. Each session is one chain; events without a session (authentication failures) form one
more chain of their own. This module lives in the store because the store's writer computes the
links (it is the one place that knows what committed); the audit service only reads it to verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii

from callgate.store.records import AppendEvent, EventRecord

#: ``prev_hash`` of a chain's first event: 32 zero bytes, hex.
ZERO_HASH = "00" * 32
_ZERO_RAW = bytes(32)

# One encoder for every call: ``json.dumps`` with non-default options builds a new encoder each
# time, which is half the cost of a small payload. Output is identical to
# ``json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)``.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, ASCII (so the UTF-8 encoding is the text itself), no NaN."""
    return _CANONICAL.encode(value)


def canonical_event(
    session_id: str | None, seq: int, ts: float, type_: str, payload_json: str
) -> str:
    """The canonical JSON of one event, given its payload already in canonical JSON.

    Equal to ``canonical_json`` of the whole event (keys ``payload, seq, session_id, ts, type`` in
    sorted order) but built by concatenation, so the payload is serialized only once. ``ts`` is
    always rendered as a float, the type it has once stored.
    """
    sid = "null" if session_id is None else encode_basestring_ascii(session_id)
    return (
        f'{{"payload":{payload_json},"seq":{int(seq)},"session_id":{sid},'
        f'"ts":{float(ts)!r},"type":{encode_basestring_ascii(type_)}}}'
    )


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical.encode("utf-8")).hexdigest()


#: ``(seq, hash hex, hash bytes)`` of a chain's last event.
ChainHead = tuple[int, str, bytes]

#: ``(session_id, seq, ts, type, payload, prev_hash, hash)``: an ``events`` row without its id.
EventRow = tuple[str | None, int, float, str, str, str, str]


class ChainHeads:
    """The last committed event of every open chain, held in memory by the store's writer."""

    def __init__(self, initial: Iterable[tuple[str | None, int, str]] = ()) -> None:
        self._heads: dict[str | None, ChainHead] = {
            chain: (seq, digest, bytes.fromhex(digest)) for chain, seq, digest in initial
        }

    def get(self, chain: str | None) -> tuple[int, str] | None:
        head = self._heads.get(chain)
        return None if head is None else (head[0], head[1])

    def batch(self) -> ChainBatch:
        return ChainBatch(self._heads)

    def __len__(self) -> int:
        return len(self._heads)


class ChainBatch:
    """Links computed inside one transaction; they reach :class:`ChainHeads` only on commit."""

    __slots__ = ("_closed", "_heads", "_pending")

    def __init__(self, heads: dict[str | None, ChainHead]) -> None:
        self._heads = heads
        self._pending: dict[str | None, ChainHead] = {}
        self._closed: list[str] = []

    def link(
        self, session_id: str | None, seq: int | None, ts: float, type_: str, payload_json: str
    ) -> tuple[int, str, str]:
        """Return ``(seq, prev_hash, hash)`` for the next event of ``session_id``'s chain."""
        (row,) = self.rows([AppendEvent(session_id, seq, ts, type_, payload_json)])
        return row[1], row[5], row[6]

    def rows(self, events: Iterable[AppendEvent]) -> list[EventRow]:
        """Link ``events`` in order; return their ``events`` rows (without ``id``).

        The writer's hot loop: one call per transaction, with everything it touches in locals.
        """
        pending = self._pending
        heads = self._heads
        sha256 = hashlib.sha256
        rows: list[EventRow] = []
        append = rows.append
        for event in events:
            sid = event.session_id
            head = pending.get(sid) or heads.get(sid)
            if head is None:
                last_seq, prev, prev_raw = 0, ZERO_HASH, _ZERO_RAW
            else:
                last_seq, prev, prev_raw = head
            seq = event.seq
            if seq is None:
                seq = last_seq + 1
            ts = float(event.ts)
            h = sha256(prev_raw)
            h.update(canonical_event(sid, seq, ts, event.type, event.payload).encode("utf-8"))
            raw = h.digest()
            digest = raw.hex()
            pending[sid] = (seq, digest, raw)
            append((sid, seq, ts, event.type, event.payload, prev, digest))
        return rows

    def set_head(self, chain: str | None, seq: int, digest: str) -> None:
        """Continue ``chain`` from ``(seq, digest)`` read from the store (a chain this writer does
        not hold: a session left open by a crash, or the shared chain outside sessions that
        several gateways append to). ``seq`` 0 with :data:`ZERO_HASH` means an empty chain."""
        self._pending[chain] = (seq, digest, bytes.fromhex(digest))

    def holds(self, chain: str | None) -> bool:
        """Whether this writer has ``chain`` open (committed or in this transaction)."""
        return chain in self._pending or chain in self._heads

    def pending_heads(self) -> dict[str | None, tuple[int, str]]:
        """The heads this transaction moved: ``{chain: (seq, hash)}``."""
        return {chain: (head[0], head[1]) for chain, head in self._pending.items() if head[0]}

    def close(self, session_id: str) -> None:
        """Forget the session's head after commit (its ``session.end`` is the last link)."""
        self._closed.append(session_id)

    def commit(self) -> None:
        self._heads.update(self._pending)
        for chain in self._closed:
            self._heads.pop(chain, None)


def first_broken_link(events: Iterable[EventRecord]) -> int | None:
    """The ``seq`` of the first event whose link or hash does not check out, else ``None``.

    ``events`` must be one chain in ``seq`` order. Numbers may skip (an event lost to a failed
    write under ``on_store_failure: allow`` never entered the chain), links may not.
    """
    prev = ZERO_HASH
    last_seq: int | None = None
    for event in events:
        if last_seq is not None and event.seq <= last_seq:
            return event.seq
        if event.prev_hash != prev:
            return event.seq
        canonical = canonical_event(
            event.session_id, event.seq, event.ts, event.type, event.payload
        )
        if chain_hash(prev, canonical) != event.hash:
            return event.seq
        prev = event.hash
        last_seq = event.seq
    return None
