"""Incremental splitting of a PostgreSQL message stream (after the startup packet).

Every message is a type byte, a 4-byte big-endian length that counts itself, and a body
(§55.7). Two readers, both sans-IO:

* :class:`BackendObserver` watches server → client traffic that is forwarded unchanged. It only
  materialises the messages the engine cares about (ReadyForQuery, CommandComplete, errors...);
  every other message is skipped by its length without being copied, so result rows pass in bulk.
* :class:`FrontendReader` splits client → server traffic into whole messages, except the types
  named as *streamed* (CopyData), whose bytes are handed on as they arrive so a large COPY never
  has to fit in memory.

Both refuse frames whose length field is impossible or over the configured limits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from callgate.errors import ProtocolViolation

_LEN = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole message: its type byte and body (length field stripped)."""

    type: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Raw bytes of a streamed message (header included), to forward as they are."""

    data: bytes


def _check_length(type_byte: int, length: int, max_frame: int, known: frozenset[int]) -> None:
    if type_byte not in known:
        raise ProtocolViolation(f"unknown message type {type_byte:#04x}")
    if length < 4:
        raise ProtocolViolation(f"invalid message length {length}")
    if length - 4 > max_frame:
        raise ProtocolViolation(
            f"message of {length - 4} bytes exceeds the limit of {max_frame} bytes"
        )


def _incomplete(pending: bytearray, more: int) -> bool:
    """True when ``pending`` holds a header whose message ``more`` new bytes cannot finish."""
    if len(pending) < 5:
        return False
    length: int = _LEN.unpack_from(pending, 1)[0]
    return len(pending) + more < 1 + length


class BackendObserver:
    """Finds the interesting messages in a stream that is forwarded unchanged.

    Offsets are counted from the first byte ever fed (``consumed``), so an engine that must cut
    or replace a message (see :meth:`feed_positions`) can map frames back to the bytes it holds.
    """

    __slots__ = (
        "_consumed",
        "_inspect",
        "_known",
        "_max_decoded",
        "_max_frame",
        "_pending",
        "_skip",
    )

    def __init__(
        self,
        inspect: frozenset[int],
        *,
        known: frozenset[int],
        max_frame: int,
        max_decoded: int,
    ):
        self._inspect = inspect
        self._known = known
        self._max_frame = max_frame
        self._max_decoded = max_decoded
        self._pending = bytearray()  # start of an unfinished header or inspected message
        self._skip = 0  # bytes of an uninspected message body still to come
        self._consumed = 0  # bytes fed so far

    @property
    def at_boundary(self) -> bool:
        """True when the bytes seen so far end exactly at a message boundary."""
        return self._skip == 0 and not self._pending

    @property
    def consumed(self) -> int:
        return self._consumed

    @property
    def pending_bytes(self) -> int:
        """Trailing bytes fed that belong to a header or inspected message not yet complete."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        return [f for f, _, _ in self._scan(data)]

    def feed_positions(self, data: bytes) -> list[tuple[Frame, int, int]]:
        """Like :meth:`feed`, with each frame's start and end offset in the whole stream."""
        return self._scan(data)

    def _scan(self, data: bytes) -> list[tuple[Frame, int, int]]:
        out: list[tuple[Frame, int, int]] = []
        n = len(data)
        pos = 0
        base = self._consumed  # stream offset of data[0]
        self._consumed += n
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return out
            pos = self._skip
            self._skip = 0
        if self._pending:
            if _incomplete(self._pending, n - pos):
                # A large inspected message still arriving: append, do not re-copy it each time.
                self._pending += data[pos:]
                return out
            base -= len(self._pending)  # buf starts where the pending bytes started
            self._pending += data[pos:]
            buf: bytes = bytes(self._pending)
            self._pending.clear()
            pos = 0
            n = len(buf)
        else:
            buf = data
        inspect = self._inspect
        unpack = _LEN.unpack_from
        while n - pos >= 5:
            t = buf[pos]
            length: int = unpack(buf, pos + 1)[0]
            end = pos + 1 + length
            if t in inspect:
                if length < 4 or length - 4 > self._max_decoded or t not in self._known:
                    _check_length(t, length, min(self._max_frame, self._max_decoded), self._known)
                if end > n:
                    break
                out.append((Frame(t, buf[pos + 5 : end]), base + pos, base + end))
            else:
                if length < 4 or length - 4 > self._max_frame or t not in self._known:
                    _check_length(t, length, self._max_frame, self._known)
                if end > n:
                    self._skip = end - n
                    return out
            pos = end
        if pos < n:
            self._pending += buf[pos:]
        return out


class FrontendReader:
    """Splits a client stream into whole messages; streamed types pass through in pieces."""

    __slots__ = ("_buf", "_known", "_max_decoded", "_max_frame", "_stream_left", "_streamed")

    def __init__(
        self,
        *,
        streamed: frozenset[int],
        known: frozenset[int],
        max_frame: int,
        max_decoded: int,
    ):
        self._streamed = streamed
        self._known = known
        self._max_frame = max_frame
        self._max_decoded = max_decoded
        self._buf = bytearray()
        self._stream_left = 0  # bytes of a streamed message still to pass through

    @property
    def at_boundary(self) -> bool:
        return self._stream_left == 0 and not self._buf

    def feed(self, data: bytes) -> list[Frame | Passthrough]:
        out: list[Frame | Passthrough] = []
        pos = 0
        n = len(data)
        if self._stream_left:
            take = min(self._stream_left, n)
            out.append(Passthrough(data[:take]))
            self._stream_left -= take
            pos = take
            if pos == n:
                return out
        if self._buf:
            if _incomplete(self._buf, n - pos):
                self._buf += data[pos:]
                return out
            self._buf += data[pos:]
            buf = bytes(self._buf)
            self._buf.clear()
            pos = 0
            n = len(buf)
        else:
            buf = data
        unpack = _LEN.unpack_from
        while n - pos >= 5:
            t = buf[pos]
            length: int = unpack(buf, pos + 1)[0]
            end = pos + 1 + length
            if t in self._streamed:
                _check_length(t, length, self._max_frame, self._known)
                if end > n:
                    out.append(Passthrough(buf[pos:]))
                    self._stream_left = end - n
                    return out
                out.append(Passthrough(buf[pos:end]))
            else:
                _check_length(t, length, min(self._max_frame, self._max_decoded), self._known)
                if end > n:
                    break
                out.append(Frame(t, buf[pos + 5 : end]))
            pos = end
        if pos < n:
            self._buf += buf[pos:]
        return out
