"""The store's audit operations on both backends: checkpoints, crash recovery, retention, outbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.store import (
    AppendEvent,
    AuditWriterSettings,
    Checkpoint,
    CheckpointSigner,
    ClaimOutbox,
    CloseInterrupted,
    EndSession,
    Heartbeat,
    InsertSession,
    OutboxDelivered,
    OutboxFailed,
    PurgeSessions,
    SessionRecord,
    Store,
    TrimOutbox,
    first_broken_link,
)
from callgate.store.checkpoints import ZERO_DIGEST, digest_of, load_public_key, signature_ok
from tests.store.backends import RawSql

KEY = ed25519.Ed25519PrivateKey.generate()


def _signer() -> CheckpointSigner:
    return CheckpointSigner(KEY)


def _session(sid: str, gateway: str | None = "gw1", started: float = 1000.0) -> SessionRecord:
    return SessionRecord(
        sid, "alice", ("g",), "api_key", None, None, "orders", "postgres", "10.0.0.1:5",
        None, None, True, started, gateway_id=gateway,
    )  # fmt: skip


def _ev(sid: str | None, seq: int | None, n: int = 0, type_: str = "query") -> AppendEvent:
    return AppendEvent(sid, seq, 1000.0 + n, type_, f'{{"n":{n}}}')


async def _open(store: Store, sid: str, n: int = 3, gateway: str | None = "gw1") -> None:
    await store.commit((InsertSession(_session(sid, gateway)), _ev(sid, 1, 0, "session.start")))
    for seq in range(2, n + 1):
        await store.commit((_ev(sid, seq, seq),))


async def _end(store: Store, sid: str, seq: int, ended_at: float = 2000.0) -> None:
    await store.commit(
        (_ev(sid, seq, seq, "session.end"), EndSession(sid, ended_at, "client closed", 1, 2, 0))
    )


def test_a_session_end_writes_a_signed_checkpoint_of_its_head(store: Store) -> None:
    async def main() -> None:
        store.configure_audit(AuditWriterSettings(signer=_signer(), checkpoint_interval=3600))
        await _open(store, "s1", 3)
        await _end(store, "s1", 4)
        checkpoints = await store.checkpoints()
        assert [c.kind for c in checkpoints] == ["session_end"]
        cp = checkpoints[0]
        events = await store.session_events("s1")
        assert ("s1", 4, events[-1].hash) in cp.heads
        assert cp.id == 1 and cp.prev == ZERO_DIGEST
        public = load_public_key(cp.public_key)
        assert signature_ok(cp, public)
        assert not signature_ok(cp, ed25519.Ed25519PrivateKey.generate().public_key())

        # the next one links to it, and only carries heads that moved since
        await _open(store, "s2", 2)
        checkpoint_id = await store.commit((Checkpoint(),))
        assert checkpoint_id == (2,)
        second = (await store.checkpoints())[1]
        assert second.prev == digest_of(cp) and [h[0] for h in second.heads] == ["s2"]

    asyncio.run(main())


def test_interval_checkpoints_come_from_writes_and_from_idle_ticks(store: Store) -> None:
    async def main() -> None:
        store.configure_audit(AuditWriterSettings(signer=_signer(), checkpoint_interval=0.2))
        await _open(store, "s1", 2)
        # nothing else is written: the writer's idle tick signs the moved head
        deadline = time.monotonic() + 5
        while not await store.checkpoints():
            assert time.monotonic() < deadline, "no interval checkpoint"
            await asyncio.sleep(0.1)
        first = (await store.checkpoints())[0]
        assert first.kind == "interval" and first.heads[0][:2] == ("s1", 2)
        await asyncio.sleep(1.2)  # nothing moved: no more checkpoints
        assert len(await store.checkpoints()) == 1

    asyncio.run(main())


def test_without_a_signer_there_are_no_checkpoints(store: Store) -> None:
    async def main() -> None:
        await _open(store, "s1", 2)
        await _end(store, "s1", 3)
        assert await store.commit((Checkpoint(),)) == (None,)
        assert await store.checkpoints() == []

    asyncio.run(main())


def test_the_private_key_never_reaches_the_store(store: Store, raw: RawSql) -> None:
    private = KEY.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )

    async def main() -> None:
        store.configure_audit(AuditWriterSettings(signer=_signer()))
        await _open(store, "s1", 2)
        await _end(store, "s1", 3)

    asyncio.run(main())
    rows = raw.query("SELECT ts, kind, heads, purged, prev, public_key, signature FROM checkpoints")
    text = repr(rows)
    import base64

    assert base64.b64encode(private).decode() not in text and private.hex() not in text


def test_interrupted_sessions_are_closed_with_a_linked_end_event(
    open_backend: Callable[[], Store],
) -> None:
    async def crashed() -> None:
        store = open_backend()
        await _open(store, "mine", 3, gateway="gw1")
        await _open(store, "legacy", 2, gateway=None)
        await _open(store, "other", 2, gateway="gw2")
        await _open(store, "done", 2, gateway="gw1")
        await _end(store, "done", 3)
        await store.close()  # no session.end for the first three: as after a kill -9

    async def restarted() -> None:
        async with open_backend() as store:
            store.configure_audit(AuditWriterSettings(signer=_signer()))
            await _open(store, "live", 2, gateway="gw1")  # opened by this process: not closed
            (closed,) = await store.commit((CloseInterrupted("gw1", 5000.0, "ended by crash"),))
            assert closed == ("mine", "legacy")
            for sid, last in (("mine", 4), ("legacy", 3)):
                events = await store.session_events(sid)
                assert first_broken_link(events) is None
                assert (events[-1].seq, events[-1].type) == (last, "session.end")
                assert '"reason":"ended by crash"' in events[-1].payload
                row = await store.get_session(sid)
                assert row is not None and (row.ended_at, row.end_reason) == (
                    5000.0,
                    "ended by crash",
                )
            mine = await store.get_session("mine")
            assert mine is not None and mine.statements == 2  # its query events
            assert (await store.get_session("other")).ended_at is None  # type: ignore[union-attr]
            assert (await store.get_session("live")).ended_at is None  # type: ignore[union-attr]
            # the closing is signed like any session end
            heads = {h[0] for h in (await store.checkpoints())[-1].heads}
            assert {"mine", "legacy"} <= heads
            # a dead replica: its heartbeat is old
            await store.commit((Heartbeat("gw2", 100.0),))
            (closed,) = await store.commit(
                (CloseInterrupted("gw1", 6000.0, "ended by crash", stale_before=200.0),)
            )
            assert closed == ("other",)
            # recording continues on a live session afterwards
            await store.commit((_ev("live", 3, 3),))
            assert first_broken_link(await store.session_events("live")) is None

    asyncio.run(crashed())
    asyncio.run(restarted())


def test_purge_removes_ended_sessions_and_signs_what_it_removed(store: Store, raw: RawSql) -> None:
    async def main() -> None:
        store.configure_audit(AuditWriterSettings(signer=_signer(), sinks=("sink",)))
        await _open(store, "old", 2)
        await _end(store, "old", 3, ended_at=100.0)
        await _open(store, "new", 2)
        await _end(store, "new", 3, ended_at=900.0)
        await _open(store, "open", 2)
        (purged,) = await store.commit((PurgeSessions(500.0),))
        assert purged == ("old",)
        assert await store.get_session("old") is None
        assert await store.session_events("old") == []
        assert await store.get_session("new") is not None
        last = (await store.checkpoints())[-1]
        assert (last.kind, last.purged) == ("purge", ("old",))
        # nothing of it is left in the outbox
        assert (
            raw.query("SELECT COUNT(*) FROM outbox o JOIN events e ON e.id = o.event_id")[0][0]
            == raw.query("SELECT COUNT(*) FROM outbox")[0][0]
        )

    asyncio.run(main())


def test_event_ids_are_never_reused_after_retention(open_backend: Callable[[], Store]) -> None:
    async def main() -> None:
        async with open_backend() as store:
            await _open(store, "s", 2)
            await _end(store, "s", 3, ended_at=10.0)
            before = max(e.id for e in await store.session_events("s"))
            await store.commit((PurgeSessions(20.0),))  # removes every event there is
        async with open_backend() as store:
            await _open(store, "t", 1)
            (event,) = await store.session_events("t")
            assert event.id > before

    asyncio.run(main())


def test_outbox_rows_are_written_with_their_events_and_claimed_in_order(store: Store) -> None:
    async def main() -> None:
        store.configure_audit(AuditWriterSettings(sinks=("a", "b")))
        await _open(store, "s", 5)
        status = {s.sink: s.pending for s in await store.outbox_status()}
        assert status == {"a": 5, "b": 5}
        now = time.time()
        (claimed,) = await store.commit((ClaimOutbox("a", 3, now, now + 60),))
        assert len(claimed) == 3
        ids = [e.id for e in await store.session_events("s")]
        assert [c.event_id for c in claimed] == ids[:3]
        # leased, so not claimed again meanwhile; and the newer rows wait behind them (in order)
        assert await store.commit((ClaimOutbox("a", 10, now, now + 60),)) == ((),)
        await store.commit((OutboxDelivered(tuple(c.id for c in claimed)),))
        (again,) = await store.commit((ClaimOutbox("a", 10, now, now + 60),))
        assert [c.event_id for c in again] == ids[3:]
        await store.commit((OutboxFailed(tuple(c.id for c in again), now - 1, "HTTP 503"),))
        (retry,) = await store.commit((ClaimOutbox("a", 10, now, now + 60),))
        assert [(c.event_id, c.attempts) for c in retry] == [(i, 1) for i in ids[3:]]
        status = {s.sink: s for s in await store.outbox_status()}
        assert status["a"].pending == 2 and status["a"].last_error == "HTTP 503"
        assert await store.events_by_ids([ids[4], ids[0], 10**9]) == [
            e for e in await store.session_events("s") if e.id in (ids[0], ids[4])
        ]

    asyncio.run(main())


def test_a_backlog_past_its_bound_drops_its_oldest_rows(store: Store) -> None:
    async def main() -> None:
        store.configure_audit(AuditWriterSettings(sinks=("dead",)))
        await _open(store, "s", 10)
        ids = [e.id for e in await store.session_events("s")]
        assert await store.commit((TrimOutbox("dead", 4),)) == ((6, ids[0], ids[5]),)
        assert await store.commit((TrimOutbox("dead", 4),)) == ((0, None, None),)
        now = time.time()
        (left,) = await store.commit((ClaimOutbox("dead", 10, now, now + 1),))
        assert [c.event_id for c in left] == ids[6:]

    asyncio.run(main())


def test_reads_for_verification_and_export(store: Store) -> None:
    async def main() -> None:
        await _open(store, "b", 2)
        await _open(store, "a", 2)
        await store.commit((_ev(None, None, 7, "auth.failure"),))
        assert await store.chain_ids() == ["a", "b", None]
        every = await store.events_page(0, 100)
        assert [e.id for e in every] == sorted(e.id for e in every) and len(every) == 5
        page = await store.events_page(every[1].id, 2)
        assert page == every[2:4]
        only_a = await store.events_page(0, 100, session_id="a")
        assert {e.session_id for e in only_a} == {"a"}
        assert await store.events_page(0, 100, since=1006.5) == [every[-1]]

    asyncio.run(main())


@pytest.mark.parametrize("sessions", [50])
def test_checkpoints_under_concurrent_sessions_verify(store: Store, sessions: int) -> None:
    async def one(sid: str) -> None:
        await _open(store, sid, 5)
        await _end(store, sid, 6)

    async def main() -> None:
        store.configure_audit(AuditWriterSettings(signer=_signer(), checkpoint_interval=0.01))
        await asyncio.gather(*(one(f"s{i:02d}") for i in range(sessions)))
        checkpoints = await store.checkpoints()
        prev = ZERO_DIGEST
        latest: dict[str | None, int] = {}
        for cp in checkpoints:
            assert cp.prev == prev and signature_ok(cp, KEY.public_key())
            prev = digest_of(cp)
            for chain, seq, _ in cp.heads:
                latest[chain] = max(latest.get(chain, 0), seq)
        assert latest == {f"s{i:02d}": 6 for i in range(sessions)}

    asyncio.run(main())
