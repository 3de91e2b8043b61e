"""The review store on both backends: atomic votes across processes' stores, the log, null-safe
matching, and the PostgreSQL translation of the shared SQL. (The approvals service's own tests,
tests/approvals/test_service.py, run on both backends as well.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from callgate.store import Store, open_store
from callgate.store.errors import StoreUnavailable
from callgate.store.pg_reviews import PostgresReviewStore, to_postgres_sql
from callgate.store.pg_schema import LOCK_REVIEWS
from callgate.store.reviews import (
    ReviewKind,
    ReviewRecord,
    ReviewState,
    ReviewStateConflict,
    VoteRecord,
    review_store_for,
)
from tests.support.pgcluster import PgServer


def _review(review_id: str, *, min_approvals: int = 1, issuer: str | None = None) -> ReviewRecord:
    now = time.time()
    return ReviewRecord(
        id=review_id,
        kind=ReviewKind.STATEMENT,
        state=ReviewState.PENDING,
        mode="deferred",
        requester="alice",
        requester_issuer=issuer,
        requester_groups=("functions",),
        requester_method="api_key",
        connection="orders",
        session_id=None,
        statement="INSERT INTO orders VALUES (1)",
        params_json="[]",
        fingerprint="fp",
        param_digest=None,
        policy_version="v1",
        rules=("r",),
        approval_rule=0,
        min_approvals=min_approvals,
        created_at=now,
        expires_at=now + 60,
        use_window=30.0,
    )


def _vote(who: str) -> VoteRecord:
    return VoteRecord(who, "api_key", time.time(), None)


def test_postgres_translation_of_the_shared_sql() -> None:
    assert to_postgres_sql("SELECT a FROM t WHERE b = ? AND c IS ? LIMIT ?") == (
        "SELECT a FROM t WHERE b = $1 AND c IS NOT DISTINCT FROM $2 LIMIT $3"
    )
    assert to_postgres_sql("SELECT 1 FROM t WHERE x IS NULL") == "SELECT 1 FROM t WHERE x IS NULL"


def test_votes_from_two_stores_at_once_approve_exactly_once(
    open_backend: Callable[[], Store],
) -> None:
    """Two gateways (two stores, two review stores on one database) vote on the same reviews at
    the same moment: each review is approved once, with both votes, and logged once; the same
    approver voting from both is counted once."""
    _race(open_backend)


def test_votes_stay_atomic_when_the_database_defaults_to_repeatable_read(
    pg_local: PgServer, pg_db: str
) -> None:
    """A database (or role) whose default isolation is REPEATABLE READ must not let two votes
    each miss the other: review writes run READ COMMITTED whatever the default."""
    with pg_local.connect() as admin:
        admin.execute(
            f"ALTER DATABASE \"{pg_db}\" SET default_transaction_isolation = 'repeatable read'"
        )
    url = f"postgresql://{pg_local.user}@{pg_local.host}:{pg_local.port}/{pg_db}"
    _race(lambda: open_store(url))


def test_a_review_write_that_waits_too_long_fails_cleanly_and_leaks_no_connection(
    pg_local: PgServer, pg_db: str
) -> None:
    """Another process holds the review lock past the timeout: the write fails with a clear
    error, is cancelled on the server (not left running), and the store's small pool keeps
    working once the lock is gone; closing it is prompt."""
    url = f"postgresql://{pg_local.user}@{pg_local.host}:{pg_local.port}/{pg_db}"
    store = open_store(url)
    reviews = PostgresReviewStore(url, url=url, timeout=0.5)

    async def main() -> None:
        # (advisory locks belong to a database: hold it in the store's)
        with psycopg.connect(pg_local.dsn(pg_db), autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_REVIEWS,))
            for i in range(3):  # more than the pool's connections
                with pytest.raises(StoreUnavailable, match="in time"):
                    await reviews.create(_review(f"blocked{i}"))
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_REVIEWS,))
        await reviews.create(_review("after"))
        assert (await reviews.get("after")) is not None
        assert await reviews.get("blocked0") is None
        started = time.monotonic()
        await reviews.close()
        assert time.monotonic() - started < 2.0
        with pytest.raises(StoreUnavailable, match="closed"):
            await reviews.get("after")

    try:
        asyncio.run(main())
    finally:
        asyncio.run(store.close())


def _race(open_backend: Callable[[], Store]) -> None:
    async def main() -> None:
        a, b = open_backend(), open_backend()
        ra, rb = review_store_for(a), review_store_for(b)
        try:
            ids = [f"r{i}" for i in range(12)]
            for i in ids:
                await ra.create(_review(i, min_approvals=2))
            args = {"now": time.time(), "grant_id": "g", "grant_policy": "p"}
            outcomes = await asyncio.gather(
                *(s.vote(i, _vote(who), **args) for i in ids for s, who in ((ra, "x"), (rb, "y")))
            )
            approved = [o for o in outcomes if o.review.state is ReviewState.APPROVED]
            assert sorted(o.review.id for o in approved) == sorted(ids)
            for i in ids:
                review = await rb.get(i)
                assert review is not None and review.state is ReviewState.APPROVED
                assert sorted(review.approvers) == ["x", "y"]
            log = await ra.unaudited(limit=1000)
            assert sorted(r.review_id for r in log if r.type == "review.approved") == sorted(ids)

            await ra.create(_review("same", min_approvals=2))
            results = await asyncio.gather(
                ra.vote("same", _vote("x"), **args),
                rb.vote("same", _vote("x"), **args),
                return_exceptions=True,
            )
            conflicts = [r for r in results if isinstance(r, ReviewStateConflict)]
            assert len(conflicts) == 1, results
            review = await ra.get("same")
            assert review is not None and review.approvers == ("x",)
            assert review.state is ReviewState.PENDING

            # the log is relayed once: marked from one store, gone for the other
            await ra.mark_audited([r.id for r in log], time.time())
            rest = {r.id for r in await rb.unaudited(limit=1000)}
            assert not rest & {r.id for r in log}
            later = await rb.unaudited(limit=1000)
            assert await rb.log_head() == max(r.id for r in [*log, *later])
        finally:
            for s in (ra, rb):
                await s.close()
            for st in (a, b):
                await st.close()

    asyncio.run(main())


def test_deferred_use_matches_the_issuer_null_safely(open_backend: Callable[[], Store]) -> None:
    async def main() -> None:
        store = open_backend()
        reviews = review_store_for(store)
        try:
            await reviews.create(_review("local", issuer=None))
            await reviews.create(_review("oidc", issuer="https://idp.example"))
            now = time.time()
            for i in ("local", "oidc"):
                await reviews.vote(i, _vote("dba"), now=now, grant_id="g", grant_policy="p")
            common = {
                "requester": "alice",
                "connection": "orders",
                "fingerprint": "fp",
                "param_digest": "d",
                "policy_version": "v1",
                "now": now + 1,
            }
            found = await reviews.find_usable(issuer=None, **common)  # type: ignore[arg-type]
            assert found is not None and found.id == "local"
            found = await reviews.find_usable(issuer="https://idp.example", **common)  # type: ignore[arg-type]
            assert found is not None and found.id == "oidc"
            assert await reviews.find_usable(issuer="https://other", **common) is None  # type: ignore[arg-type]
            used = await reviews.consume("local", at=now + 2)
            assert used.uses == 1 and used.state is ReviewState.APPROVED
            with pytest.raises(ReviewStateConflict):
                await reviews.consume("local", at=now + 60)  # the window has closed
        finally:
            await reviews.close()
            await store.close()

    asyncio.run(main())


def test_a_closed_review_store_refuses(open_backend: Callable[[], Store]) -> None:
    async def main() -> None:
        store = open_backend()
        reviews = review_store_for(store)
        await reviews.close()
        try:
            with pytest.raises(StoreUnavailable):
                await reviews.create(_review("late"))
        finally:
            await store.close()

    asyncio.run(main())
