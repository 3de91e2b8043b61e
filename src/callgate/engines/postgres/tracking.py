"""Pairs upstream responses with the statements that caused them, for audit.

The backend answers in order (§55.2.3): a simple Query ends with one ReadyForQuery; in the extended
protocol each Execute ends with CommandComplete, EmptyQueryResponse, PortalSuspended or an
ErrorResponse, after which the server skips to Sync, whose ReadyForQuery closes the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import Frame
from callgate.services import SessionRecorder


@dataclass(slots=True)
class _Pending:
    seq: int
    started: float
    tags: list[str] = field(default_factory=list)
    rows: int | None = None
    error: tuple[str, str] | None = None
    done: bool = False


@dataclass(slots=True)
class _Unit:
    """What one ReadyForQuery will close: a simple Query, a FunctionCall, or a Sync batch."""

    extended: bool
    pendings: deque[_Pending] = field(default_factory=deque)
    closed: bool = False  # extended batch: Sync seen
    expects_ready: bool = True


class StatementTracker:
    __slots__ = ("_clock", "_recorder", "_units", "transaction_status")

    def __init__(self, recorder: SessionRecorder, clock: Callable[[], float]):
        self._recorder = recorder
        self._clock = clock
        self._units: deque[_Unit] = deque()
        self.transaction_status = "I"

    # --- client side -----------------------------------------------------------------------

    def simple(self, seq: int | None) -> None:
        """A simple Query or FunctionCall; ``seq`` None when nothing was recorded for it."""
        self._close_dangling()
        unit = _Unit(extended=False, closed=True)
        if seq is not None:
            unit.pendings.append(_Pending(seq, self._clock()))
        self._units.append(unit)

    def extended(self) -> None:
        """Parse, Bind, Describe or Close: part of the batch the next Sync ends."""
        self._open_unit()

    def execute(self, seq: int) -> None:
        self._open_unit().pendings.append(_Pending(seq, self._clock()))

    def sync(self) -> None:
        self._open_unit().closed = True

    def _open_unit(self) -> _Unit:
        if self._units and self._units[-1].extended and not self._units[-1].closed:
            return self._units[-1]
        unit = _Unit(extended=True)
        self._units.append(unit)
        return unit

    def _close_dangling(self) -> None:
        # Extended messages not followed by Sync before a simple Query get no ReadyForQuery of
        # their own; their results still arrive first, in order.
        if self._units and self._units[-1].extended and not self._units[-1].closed:
            self._units[-1].closed = True
            self._units[-1].expects_ready = False

    # --- server side -----------------------------------------------------------------------

    def on_backend(self, f: Frame) -> None:
        t = f.type
        if t == m.BackendType.READY_FOR_QUERY:
            self.transaction_status = m.decode_ready_for_query(f.body)
            self._ready()
            return
        unit = self._current()
        if unit is None:
            return
        if t == m.BackendType.COMMAND_COMPLETE:
            tag = m.decode_command_complete(f.body)
            p = self._head(unit)
            if p is not None:
                p.tags.append(tag)
                rows = m.rows_from_tag(tag)
                if rows is not None:
                    p.rows = (p.rows or 0) + rows
                if unit.extended:
                    self._finish(unit, p)
        elif t == m.BackendType.ERROR_RESPONSE:
            fields = m.decode_error_fields(f.body)
            p = self._head(unit)
            if p is not None:
                p.error = (fields.sqlstate or "XX000", fields.message or "")
                if unit.extended:
                    self._finish(unit, p)
        elif t in (m.BackendType.EMPTY_QUERY_RESPONSE, m.BackendType.PORTAL_SUSPENDED):
            p = self._head(unit)
            if p is not None and unit.extended:
                if t == m.BackendType.PORTAL_SUSPENDED:
                    p.tags.append("(portal suspended)")
                self._finish(unit, p)

    def _current(self) -> _Unit | None:
        # Units that expect no ReadyForQuery are finished once a later unit starts answering;
        # we simply treat the oldest unit as current.
        return self._units[0] if self._units else None

    @staticmethod
    def _head(unit: _Unit) -> _Pending | None:
        for p in unit.pendings:
            if not p.done:
                return p
        return None

    def _finish(self, unit: _Unit, p: _Pending) -> None:
        p.done = True
        self._recorder.statement_done(
            p.seq,
            tag=";".join(p.tags) if p.tags else None,
            rows=p.rows,
            error_sqlstate=p.error[0] if p.error else None,
            error_message=p.error[1] if p.error else None,
            duration_ms=(self._clock() - p.started) * 1000.0,
        )
        while unit.pendings and unit.pendings[0].done:
            unit.pendings.popleft()

    def _ready(self) -> None:
        while self._units:
            unit = self._units.popleft()
            for p in list(unit.pendings):
                if not p.done:
                    if unit.extended and p.error is None and not p.tags:
                        p.error = ("", "not executed: an earlier message in the batch failed")
                    self._finish(unit, p)
            if unit.expects_ready:
                return

    def abandon(self, reason: str) -> None:
        """The session ended with statements in flight: record them as interrupted."""
        while self._units:
            unit = self._units.popleft()
            for p in list(unit.pendings):
                if not p.done:
                    if p.error is None:
                        p.error = ("", reason)
                    self._finish(unit, p)

    @property
    def in_flight(self) -> bool:
        return bool(self._units)

    def ready_expected(self) -> int:
        """ReadyForQuery messages still to come for what has been sent (an open batch counts)."""
        return sum(1 for u in self._units if u.expects_ready)
