"""Refusing a statement while the caller and the server stay in step.

A refused statement is never sent. In its place callgate sends a *stand-in*: a statement that
fails in the server's parser with a random nonce in the error (``callgate_refused_<nonce>`` is a
syntax error). The server then does exactly what it would have done had the refused statement
failed: a simple Query answers ErrorResponse + ReadyForQuery; in the extended protocol the failed
Parse makes the server skip to Sync and answer ReadyForQuery there; inside a transaction block the
transaction is aborted, so a later COMMIT commits nothing (§55.2.2, §55.2.3). Response order,
transaction status and ReadyForQuery count come from the server itself.

The only thing left is the error's text: :class:`ResponseRewriter` swaps the server's syntax error
(recognised by the nonce) for callgate's own ErrorResponse in the bytes forwarded to the caller.
"""

from __future__ import annotations

import secrets
import struct

from callgate.errors import CallgateError
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import BackendObserver, Frame

_I16 = struct.Struct("!h")
STAND_IN_PREFIX = "callgate_refused_"


def new_nonce() -> str:
    return secrets.token_hex(8)


def stand_in_sql(nonce: str) -> str:
    """A bare identifier: always a syntax error, and it carries nothing of the refused SQL."""
    return STAND_IN_PREFIX + nonce


def stand_in_query(nonce: str) -> bytes:
    return m.encode_query(stand_in_sql(nonce))


def stand_in_parse(nonce: str, statement_name: str) -> bytes:
    body = m.cstr(statement_name) + m.cstr(stand_in_sql(nonce)) + _I16.pack(0)
    return m.frame(m.FrontendType.PARSE, body)


def error_frame(exc: CallgateError) -> bytes:
    return m.encode_error(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


class ResponseRewriter:
    """Forwards upstream bytes, replacing stand-in errors with callgate's own.

    While a refusal is outstanding ("armed"), bytes are forwarded only up to the last complete
    message, so an ErrorResponse split across reads can still be replaced whole.
    """

    __slots__ = ("_armed", "_held", "_held_start", "_observer", "_ready_left")

    def __init__(self, observer: BackendObserver):
        self._observer = observer
        self._armed: dict[bytes, bytes] = {}
        self._ready_left = 0
        self._held = bytearray()
        self._held_start = 0

    @property
    def active(self) -> bool:
        return bool(self._armed) or bool(self._held)

    def arm(self, nonce: str, replacement: bytes, ready_expected: int) -> None:
        """Expect a stand-in answer within the next ``ready_expected`` ReadyForQuery messages."""
        if not self._armed and not self._held:
            self._held_start = self._observer.consumed
        self._armed[(STAND_IN_PREFIX + nonce).encode()] = replacement
        self._ready_left = max(self._ready_left, ready_expected)

    def process(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Bytes to forward now, and the (possibly replaced) observed frames in order."""
        observed = self._observer.feed_positions(data)
        self._held += data
        base = self._held_start
        held = self._held
        out = bytearray()
        cursor = base
        frames: list[Frame] = []
        for f, start, end in observed:
            if self._armed and f.type == m.BackendType.ERROR_RESPONSE:
                hit = next((k for k in self._armed if k in f.body), None)
                if hit is not None:
                    replacement = self._armed.pop(hit)
                    out += held[cursor - base : start - base]
                    out += replacement
                    cursor = end
                    frames.append(Frame(replacement[0], replacement[5:]))
                    continue
            frames.append(f)
            if f.type == m.BackendType.READY_FOR_QUERY and self._ready_left:
                self._ready_left -= 1
                if self._ready_left == 0:
                    self._armed.clear()
        # While armed, hold back an unfinished message; once disarmed, nothing needs holding.
        complete = self._observer.consumed - self._observer.pending_bytes
        limit = max(complete, cursor) if self._armed else self._observer.consumed
        out += held[cursor - base : limit - base]
        del held[: limit - base]
        self._held_start = limit
        return bytes(out), frames
