"""The approvals service on a real store, SQLite and PostgreSQL: holds, decisions, binding, access
windows."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from callgate.approvals import (
    AccessRefused,
    ApprovalService,
    NotAnApprover,
    ReasonRequired,
    ReviewConflict,
    ReviewState,
    statement_fingerprint,
)
from callgate.audit import AuditService
from callgate.errors import ConfigError
from callgate.store import Store
from tests.approvals.conftest import (
    ALICE,
    DBA1,
    DBA2,
    DBA_ALICE,
    MALLORY,
    STORE_URL,
    base_config,
    make_config,
    open_test_store,
    run,
    running,
)


@pytest.fixture(params=["sqlite", "postgresql"], autouse=True)
def review_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on both stores."""
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_local")
        database = request.getfixturevalue("pg_db")
        STORE_URL[0] = f"postgresql://{server.user}@{server.host}:{server.port}/{database}"
    try:
        yield str(request.param)
    finally:
        STORE_URL[0] = None


SQL = "INSERT INTO orders (id, status) VALUES (1, 'new')"
VERSION = "v1"


async def _request(service: ApprovalService, sql: str = SQL, **kw: object) -> str:
    review = await service.request(
        kw.pop("requester", ALICE),  # type: ignore[arg-type]
        connection=str(kw.pop("connection", "orders")),
        statement_sql=sql,
        policy_version=str(kw.pop("policy_version", VERSION)),
        rules=("functions read orders / rules[1]: review kinds=[insert]",),
        **kw,  # type: ignore[arg-type]
    )
    return review.id


async def _event_types(service: ApprovalService, store: Store) -> list[str]:
    await service.flush()
    return [e.type for e in await store.session_events(None)]


def test_hold_approve_wakes_the_waiter_and_is_audited(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            rid = await _request(service)
            waiter = asyncio.create_task(service.wait(rid))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            approved = await service.approve(rid, DBA1, "looks fine")
            assert approved.state is ReviewState.APPROVED
            outcome = await asyncio.wait_for(waiter, 1.0)
            assert outcome.approved and outcome.approver == "dba-one"
            assert outcome.review.votes[0].reason == "looks fine"
            types = await _event_types(service, store)
            assert types[:2] == ["review.requested", "review.approved"]
            events = await store.session_events(None)
            requested = events[0].data()
            assert requested["review_id"] == rid and requested["statement"] == SQL
            assert requested["requester"] == "alice"

    run(main)


def test_deny_needs_a_reason_and_reaches_the_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            rid = await _request(service)
            waiter = asyncio.create_task(service.wait(rid))
            with pytest.raises(ReasonRequired):
                await service.deny(rid, DBA1, "   ")
            await service.deny(rid, DBA1, "no writes during the freeze")
            outcome = await asyncio.wait_for(waiter, 1.0)
            assert outcome.state is ReviewState.DENIED
            assert (outcome.approver, outcome.reason) == ("dba-one", "no writes during the freeze")
            error = outcome.error()
            assert error.sqlstate == "42501"
            assert rid in error.message and "no writes during the freeze" in error.message
            with pytest.raises(ReviewConflict):
                await service.approve(rid, DBA2)
            assert "review.denied" in await _event_types(service, store)

    run(main)


def test_timeout_expires_the_review(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            rid = await _request(service)
            started = time.monotonic()
            outcome = await service.wait(rid, timeout=0.3)
            assert 0.25 < time.monotonic() - started < 2.0
            assert outcome.state is ReviewState.EXPIRED
            assert "timed out" in outcome.error().message and rid in outcome.error().message
            with pytest.raises(ReviewConflict):
                await service.approve(rid, DBA1)
            assert "review.expired" in await _event_types(service, store)

    run(main)


def test_overdue_reviews_expire_without_a_waiter(tmp_path: Path) -> None:
    now = [1000.0]

    async def main() -> None:
        config = make_config(tmp_path)
        store = open_test_store(tmp_path)
        service = ApprovalService.from_config(config, store, None, clock=lambda: now[0])
        try:
            rid = await _request(service)
            now[0] += 31  # timeout: 30s
            with pytest.raises(ReviewConflict, match="expired"):
                await service.approve(rid, DBA1)
            assert (await service.get_review(rid)).state is ReviewState.EXPIRED
        finally:
            await service.close()
            await store.close()

    run(main)


def test_withdraw_when_the_waiting_session_goes_away(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            rid = await _request(service)
            waiter = asyncio.create_task(service.wait(rid))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await service.flush()
            assert (await service.get_review(rid)).state is ReviewState.WITHDRAWN
            with pytest.raises(ReviewConflict):
                await service.approve(rid, DBA1)

            rid2 = await _request(service)
            withdrawn = await service.withdraw(rid2)
            assert withdrawn is not None and withdrawn.state is ReviewState.WITHDRAWN
            assert (await service.wait(rid2)).state is ReviewState.WITHDRAWN
            assert "review.withdrawn" in await _event_types(service, store)

    run(main)


def test_self_approval_and_non_approvers_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, _):
            rid = await _request(service)
            with pytest.raises(NotAnApprover, match="own request"):
                await service.approve(rid, DBA_ALICE)  # alice is also in dba
            with pytest.raises(NotAnApprover, match="own request"):
                await service.deny(rid, DBA_ALICE, "nope")
            with pytest.raises(NotAnApprover, match="not an approver"):
                await service.approve(rid, MALLORY)
            assert (await service.get_review(rid)).state is ReviewState.PENDING

    run(main)


def test_min_approvals_needs_distinct_approvers(tmp_path: Path) -> None:
    data = base_config(
        [{"connections": ["orders"], "approvers": {"groups": ["dba"]}, "min_approvals": 2}]
    )

    async def main() -> None:
        async with running(tmp_path, data) as (service, store):
            rid = await _request(service)
            waiter = asyncio.create_task(service.wait(rid))
            first = await service.approve(rid, DBA1)
            assert first.state is ReviewState.PENDING and first.approvers == ("dba-one",)
            with pytest.raises(ReviewConflict, match="already approved"):
                await service.approve(rid, DBA1)
            await asyncio.sleep(0.15)
            assert not waiter.done()
            second = await service.approve(rid, DBA2)
            assert second.state is ReviewState.APPROVED
            outcome = await asyncio.wait_for(waiter, 1.0)
            assert outcome.approved and set(outcome.review.approvers) == {"dba-one", "dba-two"}
            types = await _event_types(service, store)
            assert types.count("review.vote") == 1 and "review.approved" in types

    run(main)


def test_statement_fingerprint_normalizes_text_but_keeps_constants() -> None:
    a = statement_fingerprint("insert into orders (id, status) values (1, 'new') -- hi")
    assert a == statement_fingerprint(SQL)
    assert a != statement_fingerprint("INSERT INTO orders (id, status) VALUES (2, 'new')")
    assert statement_fingerprint("not sql at all") != statement_fingerprint("not  sql at all")


def test_deferred_binding(tmp_path: Path) -> None:
    data = base_config(
        [{"connections": ["*"], "approvers": {"groups": ["dba"]}, "mode": "deferred"}]
    )

    async def main() -> None:
        async with running(tmp_path, data) as (service, store):
            params = (b"7", None)
            rid = await _request(service, "INSERT INTO orders VALUES ($1, $2)", params=params)
            review = await service.get_review(rid)
            assert review.mode == "deferred"

            async def use(sql: str = "insert into orders values ($1, $2)", **kw: object) -> bool:
                used = await service.use_deferred(
                    kw.get("who", ALICE),  # type: ignore[arg-type]
                    str(kw.get("connection", "orders")),
                    sql,
                    kw.get("params", params),  # type: ignore[arg-type]
                    policy_version=str(kw.get("version", VERSION)),
                )
                return used is not None

            assert not await use()  # not approved yet
            await service.approve(rid, DBA1)
            assert not await use("INSERT INTO orders VALUES ($1, $2) RETURNING id")
            assert not await use(who=MALLORY)
            assert not await use(connection="billing")
            assert not await use(params=(b"8", None))
            assert not await use(params=(b"7", b""))
            assert not await use(version="v2")
            assert await use()  # the same statement, written differently: once
            assert not await use()
            assert (await service.get_review(rid)).state is ReviewState.USED
            assert "review.used" in await _event_types(service, store)

    run(main)


def test_deferred_window_and_any_parameters(tmp_path: Path) -> None:
    now = [1000.0]
    data = base_config(
        [
            {
                "connections": ["orders"],
                "approvers": {"groups": ["dba"]},
                "mode": "deferred",
                "window": "10s",
                "any_parameters": True,
            }
        ]
    )

    async def main() -> None:
        config = make_config(tmp_path, data)
        store = open_test_store(tmp_path)
        service = ApprovalService.from_config(config, store, None, clock=lambda: now[0])
        try:
            rid = await _request(service, "DELETE FROM orders WHERE id = $1", params=(b"1",))
            await service.approve(rid, DBA1)
            for value in (b"1", b"2", b"3"):
                used = await service.use_deferred(
                    ALICE, "orders", "DELETE FROM orders WHERE id = $1", (value,),
                    policy_version=VERSION,
                )  # fmt: skip
                assert used is not None and used.state is ReviewState.APPROVED
            now[0] += 11
            late = await service.use_deferred(
                ALICE, "orders", "DELETE FROM orders WHERE id = $1", (b"1",), policy_version=VERSION
            )
            assert late is None
            assert (await service.get_review(rid)).uses == 3
        finally:
            await service.close()
            await store.close()

    run(main)


def test_fifty_waiters_approved_in_a_burst_from_another_service(tmp_path: Path) -> None:
    """The approvals come through a second service object (its own connections, no in-process
    fast path), as from another process: every waiter wakes with its own review."""

    async def main() -> None:
        async with running(tmp_path) as (service, store):
            other = ApprovalService.from_config(service._config, store, None)
            try:
                ids = [
                    await _request(service, f"INSERT INTO orders VALUES ({i})") for i in range(50)
                ]
                waiters = [asyncio.create_task(service.wait(rid)) for rid in ids]
                await asyncio.sleep(0.1)
                await asyncio.gather(*(other.approve(rid, DBA1) for rid in reversed(ids)))
                outcomes = await asyncio.wait_for(asyncio.gather(*waiters), 5.0)
            finally:
                await other.close()
            for i, (rid, outcome) in enumerate(zip(ids, outcomes, strict=True)):
                assert outcome.approved
                assert outcome.review.id == rid
                assert outcome.review.statement == f"INSERT INTO orders VALUES ({i})"
            types = await _event_types(service, store)
            assert types.count("review.approved") == 50

    run(main)


def test_access_window_grant_expires(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            with pytest.raises(ReasonRequired):
                await service.request_access(ALICE, "orders", timedelta(seconds=1), "")
            with pytest.raises(AccessRefused, match="at most"):
                await service.request_access(ALICE, "orders", timedelta(hours=2), "incident")
            review = await service.request_access(
                ALICE, "orders", timedelta(seconds=1.5), "incident 42"
            )
            assert await service.active_grants(ALICE, "orders") == []
            approved = await service.approve(review.id, DBA1)
            assert approved.grant_id is not None
            grants = await service.active_grants(ALICE, "orders")
            assert [g.policy for g in grants] == ["oncall-write"]
            assert await service.active_grants(ALICE, "billing") == []
            assert await service.active_grants(MALLORY, "orders") == []
            grant = grants[0]
            assert await service.grant_still_valid(grant.id)
            started = time.monotonic()
            assert await asyncio.wait_for(service.wait_grant_end(grant.id), 5) == "expired"
            assert 1.0 < time.monotonic() - started < 3.0
            assert not await service.grant_still_valid(grant.id)
            assert await service.active_grants(ALICE, "orders") == []
            await asyncio.sleep(1.2)  # the sweep logs the expiry
            types = await _event_types(service, store)
            assert {"grant.created", "grant.expired"} <= set(types)

    run(main)


def test_access_grant_revocation(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (service, store):
            review = await service.request_access(ALICE, "orders", timedelta(minutes=5), "fix")
            await service.approve(review.id, DBA1)
            (grant,) = await service.active_grants(ALICE, "orders")
            ended = asyncio.create_task(service.wait_grant_end(grant.id))
            with pytest.raises(NotAnApprover):
                await service.revoke_grant(grant.id, MALLORY, "mine now")
            await service.revoke_grant(grant.id, DBA2, "incident over")
            assert await asyncio.wait_for(ended, 3) == "revoked"
            assert not await service.grant_still_valid(grant.id)
            assert "grant.revoked" in await _event_types(service, store)

    run(main)


def test_access_requires_configuration(tmp_path: Path) -> None:
    data = base_config([{"connections": ["orders"], "approvers": {"groups": ["dba"]}}])

    async def main() -> None:
        async with running(tmp_path, data) as (service, _):
            with pytest.raises(AccessRefused, match="no access windows"):
                await service.request_access(ALICE, "orders", timedelta(minutes=5), "fix")

    run(main)


def test_grant_policy_must_exist(tmp_path: Path) -> None:
    data = base_config(
        [
            {
                "connections": ["orders"],
                "approvers": {"groups": ["dba"]},
                "access": {"grant_policy": "no-such-policy"},
            }
        ]
    )
    config = make_config(tmp_path, data)

    async def main() -> None:
        async with open_test_store(tmp_path) as store:
            with pytest.raises(ConfigError, match=r"approvals\[0\]\.access\.grant_policy"):
                ApprovalService.from_config(config, store, AuditService(store, close_store=False))

    run(main)


def test_in_process_wake_up_latency(tmp_path: Path, record_property: object) -> None:
    async def main() -> list[float]:
        async with running(tmp_path) as (service, _):
            latencies: list[float] = []
            for i in range(30):
                rid = await _request(service, f"INSERT INTO orders VALUES ({i})")
                woke: list[float] = []

                async def wait(rid: str = rid, woke: list[float] = woke) -> None:
                    await service.wait(rid)
                    woke.append(time.perf_counter())

                task = asyncio.create_task(wait())
                await asyncio.sleep(0.01)
                await service.approve(rid, DBA1)
                returned = time.perf_counter()
                await task
                latencies.append(woke[0] - returned)
            return latencies

    latencies = run(main)
    median_ms = statistics.median(latencies) * 1000
    print(f"in-process approve() -> wait() median {median_ms:.2f} ms")
    assert median_ms < 50
