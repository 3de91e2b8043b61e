"""Reviews, approvals (votes), access grants and the review log, in the store.

A review is created when a statement's decision is ``review`` (or when someone asks for an access
window); approvers vote on it from any process (the gateway's REST API, ``callgate reviews`` on
another machine sharing the store); the waiting session learns the outcome by reading it back.

Every state change is one transaction that also appends a row to ``review_log``. That log is the
change feed (its highest id tells a poller that something changed) and an outbox: the gateway relays
each row into the audit chain exactly once it committed there (:meth:`ReviewStore.unaudited`,
:meth:`ReviewStore.mark_audited`). Processes other than the gateway (the CLI) never append to the
audit chain themselves, because the chain's head lives in the gateway writer's memory.

Writes run on a thread with their own connection and ``BEGIN IMMEDIATE``, so a check and the
change it allows (state still ``pending``, approver not yet counted) are atomic across processes.
They are rare (one per human decision or held statement), so they do not go through the audit's
group-commit writer. Reads use a second connection (WAL lets them run beside any writer).
The schema is migration 2 in :mod:`callgate.store.schema`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from callgate.store.base import Store
from callgate.store.chain import canonical_json
from callgate.store.errors import StoreConflict, StoreError, StoreUnavailable

T = TypeVar("T")

#: Seconds a review write waits for another process's write lock (the audit writer, a CLI).
BUSY_TIMEOUT = 5.0


class ReviewState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    #: deferred mode: the one use an approval allowed was made
    USED = "used"


class ReviewKind(StrEnum):
    STATEMENT = "statement"
    ACCESS = "access"


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """One approver's approval of a review."""

    approver: str
    method: str
    at: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    """One row of ``reviews`` with its votes."""

    id: str
    kind: ReviewKind
    state: ReviewState
    #: ``hold``, ``deferred`` (statements) or ``access``
    mode: str
    requester: str
    requester_issuer: str | None
    requester_groups: tuple[str, ...]
    requester_method: str
    connection: str
    session_id: str | None
    statement: str | None
    #: the bind parameters as JSON text (a list; each a string, ``{"base64": …}`` or null)
    params_json: str
    fingerprint: str | None
    #: ``None``: the approval covers any parameters
    param_digest: str | None
    policy_version: str
    rules: tuple[str, ...]
    approval_rule: int
    min_approvals: int
    created_at: float
    expires_at: float
    reason: str | None = None
    #: access reviews: seconds of access asked for
    duration: float | None = None
    #: deferred reviews: seconds the approval stays usable (``None``: one use)
    use_window: float | None = None
    decided_at: float | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    uses: int = 0
    last_used_at: float | None = None
    grant_id: str | None = None
    votes: tuple[VoteRecord, ...] = ()

    @property
    def pending(self) -> bool:
        return self.state is ReviewState.PENDING

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes)

    def params(self) -> list[Any]:
        value = json.loads(self.params_json)
        return value if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One row of ``grants``: an approved access window."""

    id: str
    review_id: str
    subject: str
    issuer: str | None
    connection: str
    policy: str
    starts_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and self.starts_at <= now < self.expires_at

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if now < self.expires_at else "expired"


@dataclass(frozen=True, slots=True)
class ReviewLogRecord:
    id: int
    review_id: str
    ts: float
    type: str
    #: canonical JSON
    payload: str


@dataclass(frozen=True, slots=True)
class VoteOutcome:
    review: ReviewRecord
    #: the access grant made by this vote (access reviews, when it completed the approval)
    grant: GrantRecord | None = None

    @property
    def completed(self) -> bool:
        return self.review.state is ReviewState.APPROVED


class ReviewMissing(StoreError):
    """No review (or grant) by that id."""


class ReviewStateConflict(StoreConflict):
    """The review is not in a state that allows the change; ``review`` is how it is now."""

    def __init__(self, message: str, review: ReviewRecord | None = None) -> None:
        super().__init__(message)
        self.review = review


# --- the interface --------------------------------------------------------------------------------


class ReviewStore(ABC):
    """Reviews and grants; every method that changes state appends to the review log."""

    @abstractmethod
    async def create(self, review: ReviewRecord) -> None:
        """Insert a new pending review (logs ``review.requested``)."""

    @abstractmethod
    async def get(self, review_id: str) -> ReviewRecord | None: ...

    @abstractmethod
    async def list_reviews(
        self,
        *,
        states: Collection[ReviewState] | None = None,
        kind: ReviewKind | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """Newest first."""

    @abstractmethod
    async def decided(self, review_ids: Collection[str]) -> dict[str, ReviewRecord]:
        """Those of ``review_ids`` no longer pending."""

    @abstractmethod
    async def log_head(self) -> int:
        """The newest review-log id: changes whenever any review or grant changes."""

    @abstractmethod
    async def vote(
        self, review_id: str, vote: VoteRecord, *, now: float, grant_id: str, grant_policy: str
    ) -> VoteOutcome:
        """Count ``vote``; approve the review when it has ``min_approvals`` distinct votes.

        An access review approved this way gets its grant (``grant_id``, applying
        ``grant_policy`` from ``now`` for the review's duration) in the same transaction.
        Raises :class:`ReviewMissing`, or :class:`ReviewStateConflict` when the review is not
        pending (an overdue one is expired first) or ``vote.approver`` already approved it.
        """

    @abstractmethod
    async def transition(
        self,
        review_id: str,
        to_state: ReviewState,
        *,
        at: float,
        by: str | None,
        reason: str | None,
    ) -> ReviewRecord:
        """Move a pending review to ``denied``, ``expired`` or ``withdrawn``.

        Raises :class:`ReviewMissing` or :class:`ReviewStateConflict` (no longer pending).
        """

    @abstractmethod
    async def consume(self, review_id: str, *, at: float) -> ReviewRecord:
        """Use an approved deferred review once (logs ``review.used``).

        Without a window it becomes ``used``; with one, it stays approved until the window ends.
        Raises :class:`ReviewStateConflict` when it is not usable at ``at``.
        """

    @abstractmethod
    async def find_usable(
        self,
        *,
        requester: str,
        issuer: str | None,
        connection: str,
        fingerprint: str,
        param_digest: str,
        policy_version: str,
        now: float,
    ) -> ReviewRecord | None:
        """An approved deferred review bound to exactly this requester, connection, statement,
        parameters (unless it covers any) and policy version, still usable at ``now``."""

    @abstractmethod
    async def expire_overdue(self, now: float) -> list[ReviewRecord]:
        """Expire every pending review past its ``expires_at``; return them."""

    @abstractmethod
    async def get_grant(self, grant_id: str) -> GrantRecord | None: ...

    @abstractmethod
    async def grants(
        self,
        *,
        subject: str | None = None,
        issuer: str | None = None,
        connection: str | None = None,
        active_at: float | None = None,
        limit: int = 100,
    ) -> list[GrantRecord]:
        """Newest first; ``issuer`` is only compared when ``subject`` is given."""

    @abstractmethod
    async def revoke_grant(
        self, grant_id: str, *, at: float, by: str, reason: str | None
    ) -> GrantRecord:
        """Revoke a live grant (logs ``grant.revoked``); raises like :meth:`transition`."""

    @abstractmethod
    async def end_grants(self, now: float) -> list[GrantRecord]:
        """Log ``grant.expired`` once for every grant that ran out by ``now``; return them."""

    @abstractmethod
    async def append_log(
        self, review_id: str, type_: str, payload: dict[str, Any], *, at: float
    ) -> None:
        """A log row without a state change (``review.notified``)."""

    @abstractmethod
    async def unaudited(self, limit: int = 500) -> list[ReviewLogRecord]:
        """Log rows not yet relayed to the audit chain, oldest first."""

    @abstractmethod
    async def mark_audited(self, log_ids: Sequence[int], at: float) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def review_store_for(store: Store) -> ReviewStore:
    """The review store living beside ``store`` (same database)."""
    from callgate.store.postgres import PostgresStore
    from callgate.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteReviewStore(store.path)
    if isinstance(store, PostgresStore):
        return store.review_store()
    raise StoreError(f"approvals are not available on the store {store.url}")


# --- SQLite ---------------------------------------------------------------------------------------

_REVIEW_COLUMNS = (
    "id, kind, state, mode, requester, requester_issuer, requester_groups, requester_method,"
    " connection, session_id, statement, params, fingerprint, param_digest, policy_version, rules,"
    " approval_rule, min_approvals, created_at, expires_at, reason, duration, use_window,"
    " decided_at, decided_by, decision_reason, uses, last_used_at, grant_id"
)
_GRANT_COLUMNS = (
    "id, review_id, subject, issuer, connection, policy, starts_at, expires_at, revoked_at,"
    " revoked_by, revoke_reason"
)
_PENDING = ReviewState.PENDING.value


def _strings(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _dump(values: Sequence[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def _review(row: Sequence[Any], votes: tuple[VoteRecord, ...] = ()) -> ReviewRecord:
    return ReviewRecord(
        id=row[0],
        kind=ReviewKind(row[1]),
        state=ReviewState(row[2]),
        mode=row[3],
        requester=row[4],
        requester_issuer=row[5],
        requester_groups=_strings(row[6]),
        requester_method=row[7],
        connection=row[8],
        session_id=row[9],
        statement=row[10],
        params_json=row[11],
        fingerprint=row[12],
        param_digest=row[13],
        policy_version=row[14],
        rules=_strings(row[15]),
        approval_rule=row[16],
        min_approvals=row[17],
        created_at=row[18],
        expires_at=row[19],
        reason=row[20],
        duration=row[21],
        use_window=row[22],
        decided_at=row[23],
        decided_by=row[24],
        decision_reason=row[25],
        uses=row[26],
        last_used_at=row[27],
        grant_id=row[28],
        votes=votes,
    )


def _grant(row: Sequence[Any]) -> GrantRecord:
    return GrantRecord(*row)


def log_payload(review: ReviewRecord, **extra: Any) -> dict[str, Any]:
    """What the log (and so the audit event) says about a review at a state change."""
    data: dict[str, Any] = {
        "review_id": review.id,
        "kind": review.kind.value,
        "state": review.state.value,
        "mode": review.mode,
        "requester": review.requester,
        "requester_issuer": review.requester_issuer,
        "connection": review.connection,
        "session_id": review.session_id,
        "policy_version": review.policy_version,
    }
    data.update(extra)
    return data


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class Cursor(Protocol):
    """What a work function reads back from :meth:`Conn.execute` (a DB-API cursor's subset)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """The connection a write transaction's work function gets: SQL with ``?`` placeholders,
    in the subset both SQLite and PostgreSQL (translated by :func:`to_postgres_sql`) accept."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> Any: ...


class SqlReviewStore(ReviewStore):
    """The review store's logic over SQL, once for both backends. A backend gives :meth:`_read`
    (one query, awaited) and :meth:`_write` (a work function run in one serialized write
    transaction on a thread: a check and the change it allows are atomic across processes)."""

    @abstractmethod
    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    async def _write(self, work: Callable[[Conn], T]) -> T: ...

    @staticmethod
    def _log(conn: Conn, review_id: str, ts: float, type_: str, data: Any) -> None:
        conn.execute(
            "INSERT INTO review_log (review_id, ts, type, payload) VALUES (?, ?, ?, ?)",
            (review_id, ts, type_, canonical_json(data)),
        )

    @staticmethod
    def _votes(conn: Conn, review_id: str) -> tuple[VoteRecord, ...]:
        rows = conn.execute(
            "SELECT approver, method, at, reason FROM review_votes WHERE review_id = ?"
            " ORDER BY at, approver",
            (review_id,),
        ).fetchall()
        return tuple(VoteRecord(*r) for r in rows)

    def _load(self, conn: Conn, review_id: str) -> ReviewRecord:
        row = conn.execute(
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE id = ?", (review_id,)
        ).fetchone()
        if row is None:
            raise ReviewMissing(f"no review {review_id!r}")
        return _review(row, self._votes(conn, review_id))

    def _set_state(
        self,
        conn: Conn,
        review: ReviewRecord,
        to_state: ReviewState,
        *,
        at: float,
        by: str | None,
        reason: str | None,
    ) -> ReviewRecord:
        conn.execute(
            "UPDATE reviews SET state = ?, decided_at = ?, decided_by = ?, decision_reason = ?"
            " WHERE id = ? AND state = ?",
            (to_state.value, at, by, reason, review.id, _PENDING),
        )
        changed = replace(
            review, state=to_state, decided_at=at, decided_by=by, decision_reason=reason
        )
        self._log(
            conn,
            review.id,
            at,
            f"review.{to_state.value}",
            log_payload(changed, by=by, reason=reason),
        )
        return changed

    # --- reviews --------------------------------------------------------------------------------

    async def create(self, review: ReviewRecord) -> None:
        r = review

        def work(conn: Conn) -> None:
            conn.execute(
                f"INSERT INTO reviews ({_REVIEW_COLUMNS}) VALUES"
                f" ({', '.join('?' * 29)})",
                (
                    r.id, r.kind.value, r.state.value, r.mode, r.requester, r.requester_issuer,
                    _dump(r.requester_groups), r.requester_method, r.connection, r.session_id,
                    r.statement, r.params_json, r.fingerprint, r.param_digest, r.policy_version,
                    _dump(r.rules), r.approval_rule, r.min_approvals, r.created_at, r.expires_at,
                    r.reason, r.duration, r.use_window, r.decided_at, r.decided_by,
                    r.decision_reason, r.uses, r.last_used_at, r.grant_id,
                ),
            )  # fmt: skip
            self._log(
                conn,
                r.id,
                r.created_at,
                "review.requested",
                log_payload(
                    r,
                    requester_groups=list(r.requester_groups),
                    statement=r.statement,
                    params=r.params(),
                    fingerprint=r.fingerprint,
                    param_digest=r.param_digest,
                    rules=list(r.rules),
                    min_approvals=r.min_approvals,
                    expires_at=r.expires_at,
                    reason=r.reason,
                    duration=r.duration,
                ),
            )

        await self._write(work)

    async def get(self, review_id: str) -> ReviewRecord | None:
        rows = await self._read(f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE id = ?", (review_id,))
        if not rows:
            return None
        return (await self._with_votes(rows))[0]

    async def _with_votes(self, rows: list[tuple[Any, ...]]) -> list[ReviewRecord]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        votes: dict[str, list[VoteRecord]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for v in await self._read(
                "SELECT review_id, approver, method, at, reason FROM review_votes"
                f" WHERE review_id IN ({', '.join('?' * len(part))}) ORDER BY at, approver",
                part,
            ):
                votes.setdefault(v[0], []).append(VoteRecord(*v[1:]))
        return [_review(r, tuple(votes.get(r[0], ()))) for r in rows]

    async def list_reviews(
        self,
        *,
        states: Collection[ReviewState] | None = None,
        kind: ReviewKind | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        where: list[str] = []
        params: list[object] = []
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(s.value for s in states)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind.value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {_REVIEW_COLUMNS} FROM reviews{clause} ORDER BY created_at DESC, id LIMIT ?",
            [*params, limit],
        )
        return await self._with_votes(rows)

    async def decided(self, review_ids: Collection[str]) -> dict[str, ReviewRecord]:
        ids = list(review_ids)
        rows: list[tuple[Any, ...]] = []
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            rows += await self._read(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE state != ?"
                f" AND id IN ({', '.join('?' * len(part))})",
                [_PENDING, *part],
            )
        return {r.id: r for r in await self._with_votes(rows)}

    async def log_head(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(id), 0) FROM review_log")
        return int(rows[0][0])

    async def vote(
        self, review_id: str, vote: VoteRecord, *, now: float, grant_id: str, grant_policy: str
    ) -> VoteOutcome:
        def work(conn: Conn) -> VoteOutcome | ReviewStateConflict:
            review = self._load(conn, review_id)
            if review.pending and review.expires_at <= now:
                review = self._set_state(
                    conn, review, ReviewState.EXPIRED, at=now, by=None, reason="timed out"
                )
            if not review.pending:
                # Returned, not raised: the expiry above must still commit.
                return ReviewStateConflict(f"review {review_id} is {review.state}", review)
            if vote.approver in review.approvers:
                return ReviewStateConflict(
                    f"{vote.approver} already approved review {review_id}", review
                )
            conn.execute(
                "INSERT INTO review_votes (review_id, approver, method, at, reason)"
                " VALUES (?, ?, ?, ?, ?)",
                (review_id, vote.approver, vote.method, vote.at, vote.reason),
            )
            votes = (*review.votes, vote)
            review = replace(review, votes=votes)
            if len(votes) < review.min_approvals:
                self._log(conn, review_id, now, "review.vote", log_payload(
                    review, by=vote.approver, reason=vote.reason, votes=len(votes),
                    min_approvals=review.min_approvals,
                ))  # fmt: skip
                return VoteOutcome(review)
            grant: GrantRecord | None = None
            if review.kind is ReviewKind.ACCESS:
                grant = GrantRecord(
                    id=grant_id,
                    review_id=review_id,
                    subject=review.requester,
                    issuer=review.requester_issuer,
                    connection=review.connection,
                    policy=grant_policy,
                    starts_at=now,
                    expires_at=now + float(review.duration or 0.0),
                )
                conn.execute(
                    f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                    (
                        grant.id, grant.review_id, grant.subject, grant.issuer, grant.connection,
                        grant.policy, grant.starts_at, grant.expires_at, None, None, None,
                    ),
                )  # fmt: skip
                conn.execute("UPDATE reviews SET grant_id = ? WHERE id = ?", (grant.id, review_id))
                review = replace(review, grant_id=grant.id)
            review = self._set_state(
                conn, review, ReviewState.APPROVED, at=now, by=vote.approver, reason=vote.reason
            )
            if grant is not None:
                self._log(conn, review_id, now, "grant.created", {
                    "grant_id": grant.id, "review_id": review_id, "subject": grant.subject,
                    "issuer": grant.issuer, "connection": grant.connection,
                    "policy": grant.policy, "starts_at": grant.starts_at,
                    "expires_at": grant.expires_at, "approvers": list(review.approvers),
                })  # fmt: skip
            return VoteOutcome(review, grant)

        result = await self._write(work)
        if isinstance(result, ReviewStateConflict):
            raise result
        return result

    async def transition(
        self,
        review_id: str,
        to_state: ReviewState,
        *,
        at: float,
        by: str | None,
        reason: str | None,
    ) -> ReviewRecord:
        if to_state not in (ReviewState.DENIED, ReviewState.EXPIRED, ReviewState.WITHDRAWN):
            raise ValueError(f"cannot move a review to {to_state} directly")

        def work(conn: Conn) -> ReviewRecord:
            review = self._load(conn, review_id)
            if not review.pending:
                raise ReviewStateConflict(f"review {review_id} is {review.state}", review)
            return self._set_state(conn, review, to_state, at=at, by=by, reason=reason)

        return await self._write(work)

    async def consume(self, review_id: str, *, at: float) -> ReviewRecord:
        def work(conn: Conn) -> ReviewRecord:
            review = self._load(conn, review_id)
            if review.state is not ReviewState.APPROVED or review.mode != "deferred":
                raise ReviewStateConflict(f"review {review_id} is {review.state}", review)
            if review.use_window is None:
                state = ReviewState.USED
            elif at < (review.decided_at or 0.0) + review.use_window:
                state = ReviewState.APPROVED
            else:
                raise ReviewStateConflict(f"review {review_id}'s window has closed", review)
            cur = conn.execute(
                "UPDATE reviews SET state = ?, uses = uses + 1, last_used_at = ?"
                " WHERE id = ? AND state = ?",
                (state.value, at, review_id, ReviewState.APPROVED.value),
            )
            if cur.rowcount != 1:
                raise ReviewStateConflict(f"review {review_id} was used concurrently", review)
            used = replace(review, state=state, uses=review.uses + 1, last_used_at=at)
            self._log(conn, review_id, at, "review.used", log_payload(used, uses=used.uses))
            return used

        return await self._write(work)

    async def find_usable(
        self,
        *,
        requester: str,
        issuer: str | None,
        connection: str,
        fingerprint: str,
        param_digest: str,
        policy_version: str,
        now: float,
    ) -> ReviewRecord | None:
        rows = await self._read(
            f"SELECT {_REVIEW_COLUMNS} FROM reviews"
            " WHERE requester = ? AND requester_issuer IS ? AND connection = ?"
            " AND fingerprint = ? AND kind = 'statement' AND mode = 'deferred' AND state = ?"
            " AND (param_digest IS NULL OR param_digest = ?) AND policy_version = ?"
            " AND (use_window IS NULL OR decided_at + use_window > ?)"
            " ORDER BY decided_at, id LIMIT 1",
            (
                requester, issuer, connection, fingerprint, ReviewState.APPROVED.value,
                param_digest, policy_version, now,
            ),
        )  # fmt: skip
        return (await self._with_votes(rows))[0] if rows else None

    async def expire_overdue(self, now: float) -> list[ReviewRecord]:
        def work(conn: Conn) -> list[ReviewRecord]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM reviews WHERE state = ? AND expires_at <= ?", (_PENDING, now)
                ).fetchall()
            ]
            return [
                self._set_state(
                    conn, self._load(conn, i), ReviewState.EXPIRED, at=now, by=None,
                    reason="timed out",
                )
                for i in ids
            ]  # fmt: skip

        if not await self._read(
            "SELECT 1 FROM reviews WHERE state = ? AND expires_at <= ? LIMIT 1", (_PENDING, now)
        ):
            return []
        return await self._write(work)

    # --- grants ---------------------------------------------------------------------------------

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        rows = await self._read(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = ?", (grant_id,))
        return _grant(rows[0]) if rows else None

    async def grants(
        self,
        *,
        subject: str | None = None,
        issuer: str | None = None,
        connection: str | None = None,
        active_at: float | None = None,
        limit: int = 100,
    ) -> list[GrantRecord]:
        where: list[str] = []
        params: list[object] = []
        if subject is not None:
            where.append("subject = ? AND issuer IS ?")
            params += [subject, issuer]
        if connection is not None:
            where.append("connection = ?")
            params.append(connection)
        if active_at is not None:
            where.append("revoked_at IS NULL AND starts_at <= ? AND expires_at > ?")
            params += [active_at, active_at]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {_GRANT_COLUMNS} FROM grants{clause} ORDER BY starts_at DESC, id LIMIT ?",
            [*params, limit],
        )
        return [_grant(r) for r in rows]

    async def revoke_grant(
        self, grant_id: str, *, at: float, by: str, reason: str | None
    ) -> GrantRecord:
        def work(conn: Conn) -> GrantRecord:
            row = conn.execute(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = ?", (grant_id,)
            ).fetchone()
            if row is None:
                raise ReviewMissing(f"no grant {grant_id!r}")
            grant = _grant(row)
            if not grant.active(at):
                raise ReviewStateConflict(f"grant {grant_id} is {grant.status(at)}")
            conn.execute(
                "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ?,"
                " end_logged = 1 WHERE id = ?",
                (at, by, reason, grant_id),
            )
            revoked = replace(grant, revoked_at=at, revoked_by=by, revoke_reason=reason)
            self._log(conn, grant.review_id, at, "grant.revoked", {
                "grant_id": grant_id, "review_id": grant.review_id, "subject": grant.subject,
                "connection": grant.connection, "policy": grant.policy, "by": by,
                "reason": reason,
            })  # fmt: skip
            return revoked

        return await self._write(work)

    async def end_grants(self, now: float) -> list[GrantRecord]:
        query = f"SELECT {_GRANT_COLUMNS} FROM grants WHERE end_logged = 0 AND expires_at <= ?"
        if not await self._read(query + " LIMIT 1", (now,)):
            return []

        def work(conn: Conn) -> list[GrantRecord]:
            ended = [_grant(r) for r in conn.execute(query, (now,)).fetchall()]
            for g in ended:
                conn.execute("UPDATE grants SET end_logged = 1 WHERE id = ?", (g.id,))
                self._log(conn, g.review_id, now, "grant.expired", {
                    "grant_id": g.id, "review_id": g.review_id, "subject": g.subject,
                    "connection": g.connection, "policy": g.policy, "expires_at": g.expires_at,
                })  # fmt: skip
            return ended

        return await self._write(work)

    # --- the log --------------------------------------------------------------------------------

    async def append_log(
        self, review_id: str, type_: str, payload: dict[str, Any], *, at: float
    ) -> None:
        def work(conn: Conn) -> None:
            self._log(conn, review_id, at, type_, payload)

        await self._write(work)

    async def unaudited(self, limit: int = 500) -> list[ReviewLogRecord]:
        rows = await self._read(
            "SELECT id, review_id, ts, type, payload FROM review_log WHERE audited_at IS NULL"
            " ORDER BY id LIMIT ?",
            (limit,),
        )
        return [ReviewLogRecord(*r) for r in rows]

    async def mark_audited(self, log_ids: Sequence[int], at: float) -> None:
        ids = list(log_ids)
        if not ids:
            return

        def work(conn: Conn) -> None:
            conn.executemany(
                "UPDATE review_log SET audited_at = ? WHERE id = ? AND audited_at IS NULL",
                [(at, i) for i in ids],
            )

        await self._write(work)


class SqliteReviewStore(SqlReviewStore):
    """Reviews in the SQLite store at ``path`` (already migrated by :class:`SqliteStore`)."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        try:
            self._writer = _connect(path, busy_timeout)
            self._reader = _connect(path, busy_timeout)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the review store {path}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._read_lock:
                return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store read failed: {exc}") from exc

    async def _write(self, work: Callable[[Conn], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the review store is closed")
        return await asyncio.to_thread(self._transaction, work)

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"store write failed: {exc}") from exc
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK")
                raise StoreConflict(f"store write refused: {exc}") from exc
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreUnavailable(f"store write failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()
