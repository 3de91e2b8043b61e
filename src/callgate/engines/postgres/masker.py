"""Masking results on their way from the upstream to the caller (docs/masking.md, SPEC §5).

The client pump tells the :class:`ResultMasker` what each message it forwards will be answered
with, in order (the backend answers in protocol order, §55.2.3): one entry per statement of a
simple Query and one for its ReadyForQuery; in the extended protocol one per Describe, Execute
and Sync (a Describe callgate adds itself before an Execute whose portal the client never
described is answered but not forwarded). The relay hands the masker every byte it forwards; the
masker walks the message headers and

* passes DataRows of a result whose :class:`~callgate.masking.RowRewriter` is a no-op as they
  are (skipped by length, never copied or decoded, even across reads);
* rewrites the RowDescription, DataRows and CopyData of results that need masking (whole
  messages: one that is still arriving is held back);
* scrubs every ErrorResponse and NoticeResponse with the plan of the statement it belongs to.

A value that cannot be masked raises :class:`MaskingStopped` carrying the bytes that may still go
out (whole messages before the failure): the engine sends them, then a FATAL error, and ends the
session, because rows of the statement may already have been delivered and the only way to keep
the caller and the server in step without the rest of the result is to end both.

Sessions without mask rules never get a masker: their results go through the relay in bulk.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from callgate.errors import CallgateError, StatementDenied
from callgate.masking import (
    CatalogColumn,
    CopyRewriter,
    MaskingFailed,
    MaskPlan,
    RowRewriter,
    decode_copy_out_response,
    decode_row_description,
    resolve_columns,
    scrub_error_fields,
)

log = logging.getLogger("callgate.postgres.masking")

_LEN: Final = struct.Struct("!I")
_HDR: Final = struct.Struct("!BI")

_D: Final = ord("D")  # DataRow
_T: Final = ord("T")  # RowDescription
_N_DATA: Final = ord("n")  # NoData
_C: Final = ord("C")  # CommandComplete
_I: Final = ord("I")  # EmptyQueryResponse
_S_SUSP: Final = ord("s")  # PortalSuspended
_E: Final = ord("E")  # ErrorResponse
_NOTICE: Final = ord("N")  # NoticeResponse
_Z: Final = ord("Z")  # ReadyForQuery
_H: Final = ord("H")  # CopyOutResponse
_COPY_DATA: Final = ord("d")  # CopyData
#: messages the masker must see whole (everything else passes as it arrives)
_WHOLE: Final = frozenset({_T, _N_DATA, _C, _I, _S_SUSP, _E, _NOTICE, _Z, _H})

# entry kinds: what the next answers belong to
STMT: Final = 0  # one statement of a simple Query
QUERY_END: Final = 1  # the ReadyForQuery of a simple Query (or a FunctionCall)
DESCRIBE_S: Final = 2
DESCRIBE_P: Final = 3
EXECUTE: Final = 4
SYNC: Final = 5
REFUSED: Final = 6  # a refused statement's stand-in: its error is callgate's own


@dataclass(frozen=True, slots=True)
class StatementMask:
    """What masking needs about one statement: its plan and the catalog's column origins
    (``None`` when there is no catalog: origins then prove nothing)."""

    plan: MaskPlan
    origins: Mapping[tuple[int, int], CatalogColumn] | None


@dataclass(slots=True)
class _Entry:
    kind: int
    mask: StatementMask | None = None
    portal: str = ""
    swallow: bool = False
    seq: int | None = None
    #: REFUSED: the ErrorResponse body callgate put in place of the stand-in's
    refusal: bytes = b""


class ResultRefused(StatementDenied):
    """``on_unknown: deny`` discovered only at a result's RowDescription (a view's column named
    by its origin): nothing of the result was sent, and the session ends."""

    fatal = True


class MaskingStopped(Exception):
    """Masking failed: send ``output`` (whole messages), then ``error``, and end the session."""

    def __init__(self, error: CallgateError, output: bytes) -> None:
        super().__init__(error.message)
        self.error = error
        self.output = output


#: ``on_masked(seq, [(column name, why, values changed)])`` at the end of a statement's result
MaskedHook = Callable[[int | None, list[tuple[str, str, int]]], None]


class ResultMasker:
    """Masks one session's upstream → client stream (see the module docstring)."""

    __slots__ = (
        "_copy",
        "_entries",
        "_fallback",
        "_max_decoded",
        "_on_masked",
        "_pending",
        "_portals",
        "_rows",
        "_skip",
        "_skip_until_sync",
        "scrubbed_errors",
    )

    def __init__(self, fallback: StatementMask, *, max_decoded: int, on_masked: MaskedHook):
        #: the mask for answers no entry explains (fail closed: every column of unknown source)
        self._fallback = fallback
        self._max_decoded = max_decoded
        self._on_masked = on_masked
        self._entries: deque[_Entry] = deque()
        self._portals: dict[str, RowRewriter | None] = {}
        self._rows: RowRewriter | None = None  # the result being received
        self._copy: CopyRewriter | None = None
        self._pending = bytearray()  # the start of a message that must be seen whole
        self._skip = 0  # bytes of a passed-through message still to come
        self._skip_until_sync = False
        #: ErrorResponse bodies as sent to the caller, in order, for the statement tracker
        self.scrubbed_errors: deque[bytes] = deque()

    # --- client side: what the answers will be ---------------------------------------------

    def query(self, masks: Sequence[StatementMask], seq: int | None) -> None:
        """A simple Query of these statements (in order)."""
        for mask in masks:
            self._add(_Entry(STMT, mask, seq=seq))
        self._add(_Entry(QUERY_END))

    def refused(self, replacement: bytes, *, simple: bool) -> None:
        """A stand-in for a refused statement was sent; ``replacement``: callgate's error frame."""
        self._skip_until_sync = False
        self._add(_Entry(REFUSED, refusal=replacement[5:]))
        if simple:
            self._add(_Entry(QUERY_END))

    def describe_statement(self, mask: StatementMask) -> None:
        if not self._skip_until_sync:
            self._add(_Entry(DESCRIBE_S, mask))

    def describe_portal(self, portal: str, mask: StatementMask, *, swallow: bool) -> None:
        if not self._skip_until_sync:
            self._add(_Entry(DESCRIBE_P, mask, portal=portal, swallow=swallow))

    def execute(self, portal: str, mask: StatementMask, seq: int | None) -> None:
        if not self._skip_until_sync:
            self._add(_Entry(EXECUTE, mask, portal=portal, seq=seq))

    def sync(self) -> None:
        self._skip_until_sync = False
        self._add(_Entry(SYNC))

    def _add(self, entry: _Entry) -> None:
        self._entries.append(entry)
        if len(self._entries) == 1:
            self._enter_head()

    # --- server side -------------------------------------------------------------------------

    @property
    def at_boundary(self) -> bool:
        """True when what was returned so far ends at a message boundary."""
        return self._skip == 0

    def process(self, data: bytes) -> bytes:
        """The bytes to send the caller for ``data`` (what the upstream sent, in order)."""
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return data
            head, data = data[: self._skip], data[self._skip :]
            self._skip = 0
            return head + self._walk(data)
        return self._walk(data)

    def _walk(self, data: bytes) -> bytes:
        if self._pending:
            self._pending += data
            buf = bytes(self._pending)
            self._pending.clear()
        else:
            buf = data
        n = len(buf)
        pos = 0
        mark = 0  # buf[mark:pos] is still to be sent as it is
        out: list[bytes] = []
        unpack = _LEN.unpack_from
        try:
            while n - pos >= 5:
                t = buf[pos]
                length = unpack(buf, pos + 1)[0]
                end = pos + 1 + length
                if t == _D:
                    rows = self._rows
                    if rows is None:
                        raise MaskingFailed("a data row arrived without a row description")
                    if rows.is_noop:
                        if end > n:
                            self._skip = end - n
                            pos = n
                            break
                        pos = end
                        continue
                    if end > n:
                        self._check_size(length)
                        break
                    # every whole DataRow from here on in one call (the hot path)
                    parts, stop = rows.rewrite_rows(buf, pos, n)
                    if parts is not None:
                        out.append(buf[mark:pos])
                        out.extend(parts)
                        mark = stop
                    pos = stop
                    continue
                if t in _WHOLE or (t == _COPY_DATA and self._copy is not None):
                    if end > n:
                        self._check_size(length)
                        break
                    body = buf[pos + 5 : end]
                    changed = self._message(t, body)
                    if changed is not body:
                        out.append(buf[mark:pos])
                        if changed is not None:
                            out.append(_HDR.pack(t, len(changed) + 4))
                            out.append(changed)
                        mark = end
                    pos = end
                    continue
                if end > n:  # a message passed as it is: send what is here, skip the rest
                    self._skip = end - n
                    pos = n
                    break
                pos = end
        except CallgateError as exc:
            out.append(buf[mark:pos])
            raise MaskingStopped(exc, b"".join(out)) from exc
        if pos < n:
            self._pending += buf[pos:]
        out.append(buf[mark:pos])
        return b"".join(out) if len(out) > 1 else out[0]

    def _check_size(self, length: int) -> None:
        if length - 4 > self._max_decoded:
            raise MaskingFailed(
                f"a message of {length - 4} bytes to be masked exceeds max_decoded_bytes"
            )

    def _message(self, t: int, body: bytes) -> bytes | None:
        """The body to send for one whole message (``body`` itself: unchanged; None: drop)."""
        if t == _COPY_DATA:
            assert self._copy is not None
            return self._copy.rewrite_copy_data(body)
        head = self._entries[0] if self._entries else None
        kind = head.kind if head is not None else -1
        if t == _T:
            return self._row_description(head, body)
        if t == _N_DATA:
            if head is not None and kind in (DESCRIBE_S, DESCRIBE_P):
                if kind == DESCRIBE_P:
                    self._portals[head.portal] = None
                self._pop()
                return None if head.swallow else body
            return body
        if t in (_C, _I, _S_SUSP):
            if head is not None and kind in (STMT, EXECUTE):
                self._report(head)
                self._pop()
            return body
        if t == _E:
            new = body
            if head is not None and kind == REFUSED and body == head.refusal:
                pass  # callgate's own refusal: it quotes nothing of the data
            else:
                new = scrub_error_fields(body, self._mask_of(head).plan)
            self.scrubbed_errors.append(new)
            self._after_error()
            return new
        if t == _NOTICE:
            return scrub_error_fields(body, self._mask_of(head).plan)
        if t == _Z:
            self._ready()
            return body
        if t == _H:
            mask = self._mask_of(head)
            _, formats = decode_copy_out_response(body)
            lineage = mask.plan.lineage
            copy = mask.plan.for_copy(lineage.copy if lineage is not None else None, len(formats))
            self._copy = None if copy.is_noop else copy
            return body
        return body  # pragma: no cover - _WHOLE lists only the types above

    def _row_description(self, head: _Entry | None, body: bytes) -> bytes | None:
        kind = head.kind if head is not None else -1
        mask = self._mask_of(head)
        desc = decode_row_description(body)
        origins = resolve_columns(desc, mask.origins) if mask.origins is not None else None
        try:
            rows = mask.plan.for_row_description(desc, origins)
        except StatementDenied as exc:
            raise ResultRefused(exc.message, detail=exc.detail, hint=exc.hint) from exc
        new = rows.rewrite_row_description(body)
        if head is not None and kind == DESCRIBE_S:
            self._pop()
        elif head is not None and kind == DESCRIBE_P:
            self._portals[head.portal] = rows
            self._pop()
            if head.swallow:
                return None
        else:
            self._rows = rows
        return new

    def _mask_of(self, head: _Entry | None) -> StatementMask:
        if head is not None and head.mask is not None:
            return head.mask
        return self._fallback

    def _report(self, entry: _Entry) -> None:
        rows = self._rows
        copy = self._copy
        masked: list[tuple[str, str, int]] = []
        if rows is not None and not rows.is_noop:
            for index, count in enumerate(rows.counts):
                col = rows.columns[index]
                if col is not None and (count or col.style is not None):
                    why = col.reason if col.style is not None else "content detectors"
                    masked.append((rows.description.fields[index].name, why or "?", count))
                rows.counts[index] = 0
        if copy is not None:
            for index, count in enumerate(copy.counts):
                style = copy.styles[index]
                if count or style is not None:
                    why = "column rule" if style is not None else "content detectors"
                    masked.append((f"${index + 1}", why, count))
                copy.counts[index] = 0
        if masked:
            self._on_masked(entry.seq, masked)

    # --- the entry queue -----------------------------------------------------------------------

    def _pop(self) -> None:
        if self._entries:
            self._entries.popleft()
        self._enter_head()

    def _enter_head(self) -> None:
        """Set up for the answers of the entry now at the head of the queue."""
        self._copy = None
        head = self._entries[0] if self._entries else None
        if head is not None and head.kind == EXECUTE:
            # rows of an Execute: the portal's description, from the client's Describe or ours
            self._rows = self._portals.get(head.portal)
        else:
            self._rows = None

    def _after_error(self) -> None:
        """An ErrorResponse ends a simple Query; in the extended protocol the server skips to
        Sync (§55.2.3): drop what those skipped messages would have answered."""
        entries = self._entries
        while entries and entries[0].kind not in (QUERY_END, SYNC):
            entries.popleft()
        if not entries:
            # An extended batch whose Sync is still to come: what the client sends before it is
            # skipped by the server as well.
            self._skip_until_sync = True
        self._enter_head()

    def _ready(self) -> None:
        entries = self._entries
        while entries:
            kind = entries.popleft().kind
            if kind in (QUERY_END, SYNC):
                break
        self._skip_until_sync = False
        self._enter_head()
