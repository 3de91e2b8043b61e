"""The audit journal: strict-durability session events, acknowledged after one append.

Under ``durability: strict`` a statement is not forwarded until its audit event is durable. With a
SQLite store that used to mean one SQLite commit per turn of the event loop, awaited by every
session. The serving gateway instead appends the events to this file (one ``write`` of one
record), acknowledges them at once and applies them to SQLite in the next group commit, a few
milliseconds later, as it does for ``async`` events. An append survives the gateway process being
killed exactly as a SQLite commit in WAL mode with ``synchronous = NORMAL`` does (the data is in
the kernel's page cache); neither survives a power loss before the kernel writes it back.

Each SQLite transaction that applies journaled events records the highest journal sequence number
it applied (``store_meta.journal_applied``) in the same transaction. On start the gateway replays
every record past that number (see :meth:`EventJournal.recover`), then truncates the file; while
it runs, the file is truncated whenever everything in it has been applied and it has grown past
:data:`TRUNCATE_BYTES`.

Record layout (little-endian): ``u32 body length, u32 CRC-32 of the body, u64 sequence number``,
then the body: the record's events, each ``session_id 0x1f seq 0x1f repr(ts) 0x1f type 0x1f
payload 0x1e`` in UTF-8. A session's row (its ``session.start`` comes with it) is written the same
way with seq ``0``, type ``0x01 "session"`` and the row's fields as the payload, and a session's
end (with its ``session.end``) with type ``0x01 "end"``. Payloads are
canonical JSON, which escapes every control character, so the separators cannot occur inside a
field. A record whose length or CRC does not match (a write
torn by the crash) ends the replay.

One gateway process holds the journal at a time (an exclusive ``flock``); another process that
opens the same store runs without one, committing strict events to SQLite before acknowledging
them as before.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from callgate.store.chain import canonical_json
from callgate.store.errors import StoreUnavailable
from callgate.store.records import AppendEvent, EndSession, InsertSession, SessionRecord

log = logging.getLogger("callgate.store")

#: Header of one record: body length, CRC-32 of the body, sequence number.
_HEADER = struct.Struct("<IIQ")

#: Once everything in the journal is applied, it is truncated when it is larger than this.
TRUNCATE_BYTES = 1 << 20

#: Largest record body accepted on replay (a corrupt length must not allocate gigabytes).
MAX_RECORD_BYTES = 64 << 20

_FIELD = "\x1f"
_END = "\x1e"


def journal_path(db_path: Path) -> Path:
    """``<db>.audit-journal``: beside the database (SQLite's own files are ``<db>-wal``,
    ``<db>-shm`` and ``<db>-journal``)."""
    return db_path.with_name(db_path.name + ".audit-journal")


#: The "type" of a session's row (its :class:`InsertSession`) in a record: not an event type.
_SESSION_ROW = "\x01session"

#: ... and of a session's end (its :class:`EndSession`, which comes with its ``session.end``).
_SESSION_END = "\x01end"

#: What a record holds: session events, and the rows of the sessions they open and end.
JournalItem = AppendEvent | InsertSession | EndSession


def _session_row(r: SessionRecord) -> str:
    return canonical_json(
        {
            "id": r.id, "subject": r.subject, "groups": list(r.groups),
            "auth_method": r.auth_method, "credential_id": r.credential_id, "issuer": r.issuer,
            "connection": r.connection, "protocol": r.protocol, "client_addr": r.client_addr,
            "client_user": r.client_user, "application_name": r.application_name,
            "tls": r.tls, "started_at": r.started_at, "gateway_id": r.gateway_id,
        }
    )  # fmt: skip


def _session_end(e: EndSession) -> str:
    return canonical_json(
        {
            "ended_at": e.ended_at, "end_reason": e.end_reason,
            "bytes_from_client": e.bytes_from_client, "bytes_to_client": e.bytes_to_client,
            "statements": e.statements,
        }
    )  # fmt: skip


def _line(sid: str | None, seq: int | None, ts: float, type_: str, payload: str) -> str:
    return f"{sid}{_FIELD}{seq}{_FIELD}{ts!r}{_FIELD}{type_}{_FIELD}{payload}{_END}"


def _encode_one(e: JournalItem) -> str:
    if type(e) is AppendEvent:
        return _line(e.session_id, e.seq, e.ts, e.type, e.payload)
    if type(e) is InsertSession:
        r = e.record
        return _line(r.id, 0, r.started_at, _SESSION_ROW, _session_row(r))
    assert type(e) is EndSession
    return _line(e.session_id, 0, e.ended_at, _SESSION_END, _session_end(e))


def encode(items: Iterable[JournalItem]) -> bytes:
    return "".join(
        f"{e.session_id}{_FIELD}{e.seq}{_FIELD}{e.ts!r}{_FIELD}{e.type}{_FIELD}{e.payload}{_END}"
        if type(e) is AppendEvent
        else _encode_one(e)
        for e in items
    ).encode("utf-8")


def decode(body: bytes) -> list[JournalItem]:
    items: list[JournalItem] = []
    text = body.decode("utf-8")
    if not text.endswith(_END):
        raise ValueError("record does not end with an event separator")
    for part in text[:-1].split(_END):
        sid, seq, ts, type_, payload = part.split(_FIELD)
        if type_ == _SESSION_ROW:
            row = json.loads(payload)
            if not isinstance(row, dict) or row.get("id") != sid:
                raise ValueError("malformed session row")
            row["groups"] = tuple(row["groups"])
            items.append(InsertSession(SessionRecord(**row)))
        elif type_ == _SESSION_END:
            end = json.loads(payload)
            if not isinstance(end, dict):
                raise ValueError("malformed session end")
            items.append(EndSession(sid, **end))
        else:
            items.append(AppendEvent(sid, int(seq), float(ts), type_, payload))
    return items


def _scan(
    data: bytes, applied: int, path: Path, *, quiet: bool = False
) -> tuple[list[tuple[int, list[JournalItem]]], int, int]:
    """The records of ``data`` past ``applied`` up to the first torn or corrupt one, the highest
    sequence number seen, and where the good records end."""
    records: list[tuple[int, list[JournalItem]]] = []
    last = applied
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            if not quiet:
                log.warning("audit journal %s: torn record at byte %d ignored", path, pos)
            break
        length, crc, seq = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if length > MAX_RECORD_BYTES or len(body) != length or zlib.crc32(body) != crc:
            if not quiet:
                log.warning("audit journal %s: torn record at byte %d ignored", path, pos)
            break
        try:
            items = decode(body)
        except (ValueError, TypeError, KeyError) as exc:
            if not quiet:
                log.warning("audit journal %s: bad record at byte %d: %s", path, pos, exc)
            break
        pos += _HEADER.size + length
        last = max(last, seq)
        if seq > applied:
            records.append((seq, items))
    return records, last, pos


def pending(path: Path, applied: int) -> tuple[int, int]:
    """Records in the journal at ``path`` past ``applied`` and the events in them, read without
    the lock and without changing the file (for readers such as ``callgate audit verify``); a
    torn tail is not counted. ``(0, 0)`` when there is no journal."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, 0
    records, _last, _pos = _scan(data, applied, path, quiet=True)
    events = sum(1 for _seq, items in records for item in items if type(item) is AppendEvent)
    return len(records), events


class JournalBusy(Exception):
    """Another process holds the journal."""


class EventJournal:
    """An append-only file of journal records, owned by the event loop's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self.last_seq = 0
        self._size = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Create (0600) or open the file and take its lock; :class:`JournalBusy` if another
        process holds it, :class:`StoreUnavailable` if it cannot be opened."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            message = f"cannot open audit journal {self.path}: {exc.strerror}"
            raise StoreUnavailable(message) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(str(self.path)) from None
        except OSError as exc:
            os.close(fd)
            message = f"cannot lock audit journal {self.path}: {exc.strerror}"
            raise StoreUnavailable(message) from exc
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    @property
    def size(self) -> int:
        return self._size

    @property
    def fd(self) -> int:
        return self._fd

    def recover(self, applied: int) -> list[tuple[int, list[JournalItem]]]:
        """Records past ``applied`` (``store_meta.journal_applied``), in order, up to the first
        torn or corrupt one; sets :attr:`last_seq` so later appends number on from both."""
        with open(self.path, "rb") as f:
            data = f.read()
        records, last, pos = _scan(data, applied, self.path)
        if pos < len(data):
            # cut the torn tail, so that records appended from now on follow good ones
            os.ftruncate(self._fd, pos)
            self._size = pos
        self.last_seq = last
        return records

    # --- the hot path ---------------------------------------------------------------------------

    def append(self, events: Sequence[JournalItem]) -> int:
        """Write one record; return its sequence number. Raises :class:`OSError`."""
        body = encode(events)
        seq = self.last_seq + 1
        record = _HEADER.pack(len(body), zlib.crc32(body), seq) + body
        written = os.write(self._fd, record)
        if written != len(record):
            # A short write (disk full): the torn tail is ignored on replay, and the next append
            # would follow it, so it must not be acknowledged; nor may later ones.
            raise OSError(f"short write to the audit journal ({written} of {len(record)} bytes)")
        self.last_seq = seq
        self._size += written
        return seq

    def truncate(self) -> None:
        """Empty the file; only when every record in it has been applied."""
        os.ftruncate(self._fd, 0)
        self._size = 0
