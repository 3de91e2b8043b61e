"""StatementTracker pairs upstream responses with statements in protocol order (§55.2.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callgate.engines.postgres.tracking import StatementTracker
from callgate.model import Decision, SqlCommand
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import Frame


@dataclass
class FakeRecorder:
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    async def statement(self, command: SqlCommand, decision: Decision) -> int:
        raise NotImplementedError

    def statement_done(self, seq: int, **kw: Any) -> None:
        assert seq not in self.done, f"statement {seq} finished twice"
        self.done[seq] = kw

    async def end(self, reason: str, *, bytes_from_client: int, bytes_to_client: int) -> None:
        raise NotImplementedError


def backend(raw: bytes) -> Frame:
    return Frame(raw[0], raw[5:])


def tracker() -> tuple[StatementTracker, FakeRecorder]:
    rec = FakeRecorder()
    return StatementTracker(rec, lambda: 0.0), rec


def test_simple_query_batch_sums_rows_until_ready() -> None:
    t, rec = tracker()
    t.simple(1)
    t.on_backend(backend(m.encode_command_complete("INSERT 0 2")))
    t.on_backend(backend(m.encode_command_complete("SELECT 3")))
    assert rec.done == {}
    t.on_backend(backend(m.encode_ready_for_query("I")))
    assert rec.done[1]["tag"] == "INSERT 0 2;SELECT 3"
    assert rec.done[1]["rows"] == 5
    assert not t.in_flight


def test_extended_pipeline_with_error_skips_the_rest() -> None:
    t, rec = tracker()
    t.extended()  # Parse
    t.execute(1)
    t.execute(2)
    t.execute(3)
    t.sync()
    t.on_backend(backend(m.encode_command_complete("UPDATE 1")))
    t.on_backend(backend(m.encode_error("23505", "duplicate key")))
    t.on_backend(backend(m.encode_ready_for_query("I")))
    assert rec.done[1]["tag"] == "UPDATE 1" and rec.done[1]["error_sqlstate"] is None
    assert rec.done[2]["error_sqlstate"] == "23505"
    assert "not executed" in rec.done[3]["error_message"]


def test_flush_batch_before_query_expects_no_ready() -> None:
    t, rec = tracker()
    t.extended()
    t.execute(1)  # Parse/Bind/Execute/Flush, no Sync
    t.simple(2)  # then a simple Query
    t.on_backend(backend(m.encode_command_complete("SELECT 1")))
    t.on_backend(backend(m.encode_command_complete("SELECT 1")))
    t.on_backend(backend(m.encode_ready_for_query("T")))
    assert set(rec.done) == {1, 2}
    assert t.transaction_status == "T"


def test_abandon_records_everything_in_flight_once() -> None:
    t, rec = tracker()
    t.simple(1)
    t.extended()
    t.execute(2)
    t.execute(3)
    t.abandon("session ended: upstream lost")
    assert set(rec.done) == {1, 2, 3}
    assert all("upstream lost" in d["error_message"] for d in rec.done.values())
    assert not t.in_flight


def test_portal_suspended_and_empty_query() -> None:
    t, rec = tracker()
    t.execute(1)
    t.execute(2)
    t.sync()
    t.on_backend(backend(m.frame(m.BackendType.PORTAL_SUSPENDED)))
    t.on_backend(backend(m.EMPTY_QUERY_RESPONSE))
    t.on_backend(backend(m.encode_ready_for_query("I")))
    assert rec.done[1]["tag"] == "(portal suspended)"
    assert rec.done[2]["tag"] is None and rec.done[2]["error_sqlstate"] is None
