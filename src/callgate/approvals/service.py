"""The approvals service: reviews of statements, access windows, approvers' decisions.

One object per process, built with :meth:`ApprovalService.from_config`. The gateway calls
:meth:`~ApprovalService.start`, which runs the background work only one process should do: relaying
the review log into the audit chain, sending webhook notifications, expiring overdue reviews and
logging grants that ran out. A CLI process uses the same object without starting it: its decisions
land in the store, and the gateway picks them up (waking held statements within
:data:`~callgate.approvals.waiter.POLL_INTERVAL`, auditing them within :data:`RELAY_INTERVAL`).

Rules (SPEC §2 ``approvals``, docs/approvals.md):

- the approval rule of a review is the first ``approvals:`` entry naming its connection;
- an approver must match that rule's ``approvers`` and is never the requester;
- ``min_approvals`` distinct approvers approve; one denial (with a reason) denies;
- a statement approval is bound to requester, connection, statement fingerprint, parameter digest
  (unless ``any_parameters``) and policy version (:mod:`callgate.approvals.binding`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from callgate.approvals.binding import Binding, bind_statement, render_param
from callgate.approvals.models import (
    AccessRefused,
    Grant,
    NotAnApprover,
    ReasonRequired,
    Review,
    ReviewConflict,
    ReviewKind,
    ReviewNotFound,
    ReviewOutcome,
    ReviewState,
)
from callgate.approvals.notify import WebhookNotifier
from callgate.approvals.waiter import PollingReviewWaiter, ReviewWaiter
from callgate.config.approvals import ApprovalConfig, check_grant_policies
from callgate.model import Principal
from callgate.policy.engine import policy_version
from callgate.store.base import Store
from callgate.store.errors import StoreError
from callgate.store.reviews import (
    ReviewMissing,
    ReviewStateConflict,
    ReviewStore,
    VoteRecord,
    review_store_for,
)

if TYPE_CHECKING:
    from callgate.config import Config

log = logging.getLogger("callgate.approvals")

#: Seconds between two relays of the review log into the audit chain (sooner after a change
#: made in this process).
RELAY_INTERVAL: Final = 0.25
#: Seconds between two sweeps that expire overdue reviews and log grants that ran out.
SWEEP_INTERVAL: Final = 1.0
#: Seconds between two looks at a grant while a session relies on it (revocation from another
#: process bites within this; expiry is exact).
GRANT_POLL_INTERVAL: Final = 1.0
#: Longest reason kept (approvers' and requesters'); longer ones are refused.
MAX_REASON_CHARS: Final = 2000
#: How often a held caller's connection is checked while its review is pending: a caller that
#: goes away withdraws the review within this time.
HOLD_POLL: Final = 0.25
#: Reviews listed at most per call.
LIST_LIMIT: Final = 500

Clock = Callable[[], float]


class EventSink(Protocol):
    """Where review events go: :meth:`callgate.audit.AuditService.event`."""

    async def event(
        self, type_: str, payload: Mapping[str, Any], *, ts: float | None = None
    ) -> None: ...


def new_id(prefix: str) -> str:
    """``rv_`` + 16 hex characters: short enough to type in ``callgate reviews approve``."""
    return f"{prefix}_{secrets.token_hex(8)}"


def _reason(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(value.split())
    if len(text) > MAX_REASON_CHARS:
        raise ReasonRequired(f"the reason is longer than {MAX_REASON_CHARS} characters")
    return text or None


class ApprovalService:
    def __init__(
        self,
        config: Config,
        reviews: ReviewStore,
        *,
        audit: EventSink | None = None,
        waiter: ReviewWaiter | None = None,
        notifier: WebhookNotifier | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._reviews = reviews
        self._audit = audit
        self._waiter = waiter if waiter is not None else PollingReviewWaiter(reviews)
        self._notifier = notifier
        self._clock = clock
        self._config = config
        self._policy_version = policy_version(config.policies, config.approvals)
        self._maintainer: asyncio.Task[None] | None = None
        self._kick_event: asyncio.Event | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: only the process that started the service relays the log into the audit chain
        self._relaying = False
        #: one relay at a time, or two would append the same rows twice
        self._relay_lock = asyncio.Lock()
        self.reload(config)

    @classmethod
    def from_config(
        cls,
        config: Config,
        store: Store,
        audit: EventSink | None,
        *,
        clock: Clock = time.time,
        notifier: WebhookNotifier | None = None,
    ) -> ApprovalService:
        """The service on ``store`` (reviews live in the same database).

        Raises :class:`~callgate.errors.ConfigError` when an ``access.grant_policy`` names no
        policy, :class:`~callgate.store.errors.StoreError` when the store cannot hold reviews.
        """
        return cls(
            config,
            review_store_for(store),
            audit=audit,
            notifier=notifier if notifier is not None else WebhookNotifier(),
            clock=clock,
        )

    # --- configuration ----------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Use a reloaded config from now on (waits in progress keep going)."""
        check_grant_policies(config.approvals, (p.name for p in config.policies))
        self._config = config
        self._policy_version = policy_version(config.policies, config.approvals)

    def now(self) -> float:
        """The service's clock (unix seconds)."""
        return self._clock()

    @property
    def reviews(self) -> ReviewStore:
        return self._reviews

    @property
    def waiter(self) -> ReviewWaiter:
        return self._waiter

    def rule_for(self, connection: str) -> tuple[int, ApprovalConfig] | None:
        """The approval rule for statements on ``connection`` (the first naming it), if any."""
        for index, rule in enumerate(self._config.approvals):
            if rule.applies_to(connection):
                return index, rule
        return None

    def _access_rule_for(self, connection: str) -> tuple[int, ApprovalConfig] | None:
        for index, rule in enumerate(self._config.approvals):
            if rule.access is not None and rule.applies_to(connection):
                return index, rule
        return None

    def _rule_of(self, review: Review) -> ApprovalConfig | None:
        found = (
            self._access_rule_for(review.connection)
            if review.kind is ReviewKind.ACCESS
            else self.rule_for(review.connection)
        )
        return None if found is None else found[1]

    # --- statements -------------------------------------------------------------------------------

    def binding(
        self,
        requester: Principal,
        connection: str,
        sql: str,
        params: Sequence[bytes | None] = (),
        param_formats: Sequence[int] = (),
        *,
        policy_version: str,
        any_parameters: bool | None = None,
    ) -> Binding:
        """What an approval of this statement would be bound to (and must match to be used)."""
        if any_parameters is None:
            found = self.rule_for(connection)
            any_parameters = found is not None and found[1].any_parameters
        return bind_statement(
            requester,
            connection,
            sql,
            params,
            param_formats,
            policy_version,
            any_parameters=any_parameters,
        )

    async def request(
        self,
        requester: Principal,
        *,
        connection: str,
        statement_sql: str,
        params: Sequence[bytes | None] = (),
        param_formats: Sequence[int] = (),
        rules: Sequence[str] = (),
        policy_version: str,
        mode: str | None = None,
        session_id: str | None = None,
        any_parameters: bool | None = None,
    ) -> Review:
        """Create a pending review for a statement whose decision was ``review``.

        ``mode`` defaults to the approval rule's; the review stays pending for its ``timeout``.
        Raises :class:`ReviewNotFound` (404) when no approval rule names ``connection``.
        """
        found = self.rule_for(connection)
        if found is None:
            raise ReviewNotFound(f"no approvers are configured for connection {connection!r}")
        index, rule = found
        mode = mode or rule.mode
        if mode not in ("hold", "deferred"):
            raise ValueError(f"unknown approval mode {mode!r}")
        binding = self.binding(
            requester,
            connection,
            statement_sql,
            params,
            param_formats,
            policy_version=policy_version,
            any_parameters=rule.any_parameters if any_parameters is None else any_parameters,
        )
        now = self._clock()
        window = rule.window.total_seconds() if mode == "deferred" and rule.window else None
        review = Review(
            id=new_id("rv"),
            kind=ReviewKind.STATEMENT,
            state=ReviewState.PENDING,
            mode=mode,
            requester=requester.subject,
            requester_issuer=requester.issuer,
            requester_groups=tuple(sorted(requester.groups)),
            requester_method=requester.method,
            connection=connection,
            session_id=session_id,
            statement=statement_sql,
            params_json=json.dumps([render_param(p) for p in params], separators=(",", ":")),
            fingerprint=binding.fingerprint,
            param_digest=binding.param_digest,
            policy_version=policy_version,
            rules=tuple(rules),
            approval_rule=index,
            min_approvals=rule.min_approvals,
            created_at=now,
            expires_at=now + rule.timeout.total_seconds(),
            use_window=window,
        )
        await self._reviews.create(review)
        self._kick()
        return review

    # Running out of time expires the review (not just this wait), hence a parameter.
    async def wait(
        self,
        review_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ReviewOutcome:
        """Wait until the review is decided; expire it when ``timeout`` (default: until the
        review's own deadline) passes first.

        If the waiting task is cancelled (the caller disconnected), the review is withdrawn.
        """
        review = await self._reviews.get(review_id)
        if review is None:
            raise ReviewNotFound(f"no review {review_id!r}")
        if not review.pending:
            return ReviewOutcome.of(review)
        remaining = review.expires_at - self._clock() if timeout is None else timeout
        try:
            decided = await self._waiter.wait(review_id, max(0.0, remaining))
        except asyncio.CancelledError:
            self._spawn(self.withdraw(review_id, reason="the waiting session went away"))
            raise
        if decided is None:
            closing = self._closing
            to_state = ReviewState.WITHDRAWN if closing else ReviewState.EXPIRED
            why = "the gateway is shutting down" if closing else "timed out"
            try:
                decided = await self._reviews.transition(
                    review_id, to_state, at=self._clock(), by=None, reason=why
                )
            except ReviewStateConflict as conflict:  # decided in the meantime: that wins
                decided = conflict.review or await self._reviews.get(review_id)
            self._kick()
        if decided is None:
            raise ReviewNotFound(f"no review {review_id!r}")
        return ReviewOutcome.of(decided)

    async def wait_for_caller(
        self,
        review_id: str,
        timeout: float,  # noqa: ASYNC109
        caller_gone: Callable[[], bool],
    ) -> ReviewOutcome | None:
        """:meth:`wait`, for a caller holding a live connection: ``None`` when the caller goes
        away first (checked every :data:`HOLD_POLL` seconds), which withdraws the review."""
        waiting = asyncio.ensure_future(self.wait(review_id, timeout))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=HOLD_POLL)
                if done:
                    return waiting.result()
                if caller_gone():
                    return None
        finally:
            if not waiting.done():
                waiting.cancel()  # withdraws the review
                await asyncio.gather(waiting, return_exceptions=True)

    async def withdraw(self, review_id: str, *, reason: str = "withdrawn") -> Review | None:
        """Withdraw a pending review (the caller went away). No error if it was decided."""
        try:
            review = await self._reviews.transition(
                review_id, ReviewState.WITHDRAWN, at=self._clock(), by=None, reason=reason
            )
        except ReviewStateConflict as conflict:
            return conflict.review
        except ReviewMissing:
            return None
        except StoreError as exc:
            log.warning("cannot withdraw review %s: %s", review_id, exc.message)
            return None
        self._waiter.decided(review)
        self._kick()
        return review

    # --- deferred mode ----------------------------------------------------------------------------

    async def find_usable(
        self,
        requester: Principal,
        connection: str,
        fingerprint: str,
        param_digest: str,
        policy_version: str,
    ) -> Review | None:
        """An approved deferred review this exact statement may run under, if any."""
        return await self._reviews.find_usable(
            requester=requester.subject,
            issuer=requester.issuer,
            connection=connection,
            fingerprint=fingerprint,
            param_digest=param_digest,
            policy_version=policy_version,
            now=self._clock(),
        )

    async def consume(self, review: Review) -> Review:
        """Record one use of an approved deferred review (once, or within its window).

        Raises :class:`ReviewConflict` when it is no longer usable (another session used it).
        """
        try:
            used = await self._reviews.consume(review.id, at=self._clock())
        except ReviewStateConflict as exc:
            raise ReviewConflict(exc.message) from None
        except ReviewMissing:
            raise ReviewNotFound(f"no review {review.id!r}") from None
        self._kick()
        return used

    async def use_deferred(
        self,
        requester: Principal,
        connection: str,
        sql: str,
        params: Sequence[bytes | None] = (),
        param_formats: Sequence[int] = (),
        *,
        policy_version: str,
    ) -> Review | None:
        """Find and consume an approval for this statement; ``None`` if there is none."""
        # Always the real digest: a review made under ``any_parameters`` stored none and matches
        # any, one made without it matches only these parameters.
        b = self.binding(
            requester, connection, sql, params, param_formats,
            policy_version=policy_version, any_parameters=False,
        )  # fmt: skip
        digest = b.param_digest or ""
        for _ in range(3):  # another session may consume the same approval between find and use
            review = await self.find_usable(
                requester, connection, b.fingerprint, digest, policy_version
            )
            if review is None:
                return None
            with contextlib.suppress(ReviewConflict):
                return await self.consume(review)
        return None

    # --- decisions --------------------------------------------------------------------------------

    def may_approve(self, principal: Principal, review: Review) -> bool:
        rule = self._rule_of(review)
        return (
            rule is not None
            and principal.subject != review.requester
            and rule.approvers.matches(principal.subject, principal.groups)
        )

    def may_view(self, principal: Principal, review: Review) -> bool:
        if principal.subject == review.requester and principal.issuer == review.requester_issuer:
            return True
        rule = self._rule_of(review)
        return rule is not None and rule.approvers.matches(principal.subject, principal.groups)

    def _check_approver(self, review: Review, approver: Principal) -> ApprovalConfig:
        if approver.subject == review.requester:
            raise NotAnApprover(f"{approver.subject} cannot decide its own request ({review.id})")
        rule = self._rule_of(review)
        if rule is None:
            raise NotAnApprover(f"no approval rule names connection {review.connection!r} any more")
        if not rule.approvers.matches(approver.subject, approver.groups):
            raise NotAnApprover(
                f"{approver.subject} is not an approver for connection {review.connection!r}"
            )
        return rule

    async def _get(self, review_id: str) -> Review:
        review = await self._reviews.get(review_id)
        if review is None:
            raise ReviewNotFound(f"no review {review_id!r}")
        return review

    async def approve(
        self, review_id: str, approver: Principal, reason: str | None = None
    ) -> Review:
        """Count ``approver``'s approval; the review is approved once ``min_approvals`` distinct
        approvers did. Returns the review as it is now.

        Raises :class:`ReviewNotFound` (404), :class:`NotAnApprover` (403), :class:`ReviewConflict`
        (409: decided, expired, or already approved by this approver).
        """
        review = await self._get(review_id)
        rule = self._check_approver(review, approver)
        grant_policy = ""
        if review.kind is ReviewKind.ACCESS:
            if rule.access is None:  # _rule_of found an access rule, so this is for mypy
                raise ReviewConflict(f"access windows are no longer configured for {review.id}")
            grant_policy = rule.access.grant_policy
        now = self._clock()
        vote = VoteRecord(approver.subject, approver.method, now, _reason(reason))
        try:
            outcome = await self._reviews.vote(
                review_id, vote, now=now, grant_id=new_id("gr"), grant_policy=grant_policy
            )
        except ReviewMissing:
            raise ReviewNotFound(f"no review {review_id!r}") from None
        except ReviewStateConflict as exc:
            self._kick()
            raise ReviewConflict(exc.message) from None
        if outcome.completed:
            self._waiter.decided(outcome.review)
        self._kick()
        return outcome.review

    async def deny(self, review_id: str, approver: Principal, reason: str) -> Review:
        """Deny a pending review. ``reason`` is required (it is shown to the requester)."""
        why = _reason(reason)
        if why is None:
            raise ReasonRequired("a reason is required to deny a review")
        review = await self._get(review_id)
        self._check_approver(review, approver)
        try:
            denied = await self._reviews.transition(
                review_id, ReviewState.DENIED, at=self._clock(), by=approver.subject, reason=why
            )
        except ReviewMissing:
            raise ReviewNotFound(f"no review {review_id!r}") from None
        except ReviewStateConflict as exc:
            raise ReviewConflict(exc.message) from None
        self._waiter.decided(denied)
        self._kick()
        return denied

    async def get_review(self, review_id: str, viewer: Principal | None = None) -> Review:
        """One review; with ``viewer``, only if they requested it or may approve it (else 404)."""
        review = await self._get(review_id)
        if viewer is not None and not self.may_view(viewer, review):
            raise ReviewNotFound(f"no review {review_id!r}")
        return review

    async def list_reviews(
        self,
        viewer: Principal | None = None,
        *,
        states: Sequence[ReviewState] | None = (ReviewState.PENDING,),
        limit: int = 100,
    ) -> list[Review]:
        """Newest first. With ``viewer``: only the reviews they requested or may approve.

        Overdue pending reviews are expired first, so a list never offers a dead review.
        """
        try:
            if await self._reviews.expire_overdue(self._clock()):
                self._kick()
        except StoreError as exc:
            log.debug("could not expire overdue reviews: %s", exc.message)
        found = await self._reviews.list_reviews(states=states, limit=min(limit, LIST_LIMIT))
        if viewer is None:
            return found
        return [r for r in found if self.may_view(viewer, r)]

    # --- access windows ---------------------------------------------------------------------------

    async def request_access(
        self, requester: Principal, connection: str, duration: timedelta, reason: str
    ) -> Review:
        """Ask for ``duration`` of access to ``connection`` under the rule's ``grant_policy``.

        Raises :class:`AccessRefused` (403) when no ``access:`` rule names the connection, the
        requester is not among its ``requesters``, or ``duration`` exceeds ``max_duration``;
        :class:`ReasonRequired` without a reason.
        """
        found = self._access_rule_for(connection)
        if found is None or found[1].access is None:
            raise AccessRefused(f"no access windows are configured for connection {connection!r}")
        index, rule = found
        access = found[1].access
        why = _reason(reason)
        if why is None:
            raise ReasonRequired("a reason is required to request access")
        if access.requesters is not None and not access.requesters.matches(
            requester.subject, requester.groups
        ):
            raise AccessRefused(
                f"{requester.subject} may not request access to connection {connection!r}"
            )
        seconds = duration.total_seconds()
        if seconds <= 0:
            raise AccessRefused("the access duration must be longer than zero")
        if duration > access.max_duration:
            raise AccessRefused(
                f"at most {access.max_duration} of access may be requested on {connection!r}"
            )
        now = self._clock()
        review = Review(
            id=new_id("rv"),
            kind=ReviewKind.ACCESS,
            state=ReviewState.PENDING,
            mode="access",
            requester=requester.subject,
            requester_issuer=requester.issuer,
            requester_groups=tuple(sorted(requester.groups)),
            requester_method=requester.method,
            connection=connection,
            session_id=None,
            statement=None,
            params_json="[]",
            fingerprint=None,
            param_digest=None,
            policy_version=self._policy_version,
            rules=(f"approvals[{index}].access: grant_policy {access.grant_policy}",),
            approval_rule=index,
            min_approvals=rule.min_approvals,
            created_at=now,
            expires_at=now + access.pending_timeout.total_seconds(),
            reason=why,
            duration=seconds,
        )
        await self._reviews.create(review)
        self._kick()
        return review

    async def active_grants(self, principal: Principal, connection: str) -> list[Grant]:
        """The access windows ``principal`` holds on ``connection`` now (for the policy layer:
        each applies the policy named by :attr:`Grant.policy`)."""
        return await self._reviews.grants(
            subject=principal.subject,
            issuer=principal.issuer,
            connection=connection,
            active_at=self._clock(),
        )

    async def grant_still_valid(self, grant_id: str) -> bool:
        grant = await self._reviews.get_grant(grant_id)
        return grant is not None and grant.active(self._clock())

    async def wait_grant_end(self, grant_id: str) -> str:
        """Return ``"expired"`` or ``"revoked"`` (or ``"missing"``) once the grant ends.

        The engine runs this beside a session that relies on the grant and ends the session
        when it returns. Expiry is exact; a revocation is seen within
        :data:`GRANT_POLL_INTERVAL`.
        """
        while True:
            grant = await self._reviews.get_grant(grant_id)
            if grant is None:
                return "missing"
            now = self._clock()
            if not grant.active(now):
                return grant.status(now)
            await asyncio.sleep(min(GRANT_POLL_INTERVAL, max(0.0, grant.expires_at - now)))

    async def list_grants(
        self, viewer: Principal | None = None, *, active: bool = True, limit: int = 100
    ) -> list[Grant]:
        """With ``viewer``: their own grants and those on connections they approve for."""
        now = self._clock()
        found = await self._reviews.grants(active_at=now if active else None, limit=limit)
        if viewer is None:
            return found
        return [g for g in found if self._may_manage_grant(viewer, g)]

    def _may_manage_grant(self, principal: Principal, grant: Grant) -> bool:
        if principal.subject == grant.subject and principal.issuer == grant.issuer:
            return True
        found = self._access_rule_for(grant.connection)
        return found is not None and found[1].approvers.matches(principal.subject, principal.groups)

    async def revoke_grant(self, grant_id: str, by: Principal, reason: str | None = None) -> Grant:
        """End an access window early: its holder, or an approver of its connection."""
        grant = await self._reviews.get_grant(grant_id)
        if grant is None:
            raise ReviewNotFound(f"no grant {grant_id!r}")
        if not self._may_manage_grant(by, grant):
            raise NotAnApprover(f"{by.subject} may not revoke grant {grant_id}")
        try:
            revoked = await self._reviews.revoke_grant(
                grant_id, at=self._clock(), by=by.subject, reason=_reason(reason)
            )
        except ReviewStateConflict as exc:
            raise ReviewConflict(exc.message) from None
        self._kick()
        return revoked

    # --- background work (the gateway process) ----------------------------------------------------

    async def start(self) -> None:
        """Relay the review log to audit, notify, expire overdue reviews, log grant expiry."""
        if self._maintainer is None:
            self._relaying = True
            self._kick_event = asyncio.Event()
            self._maintainer = asyncio.create_task(
                self._maintain(self._kick_event), name="callgate-approvals"
            )

    def _kick(self) -> None:
        if self._kick_event is not None:
            self._kick_event.set()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _maintain(self, kicked: asyncio.Event) -> None:
        next_sweep = 0.0
        while True:
            kicked.clear()
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                    await self._sweep()
                await self.relay()
            except StoreError as exc:
                log.warning("approvals upkeep failed (will retry): %s", exc.message)
            except Exception:
                log.exception("approvals upkeep: unexpected error")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELAY_INTERVAL):
                    await kicked.wait()

    async def _sweep(self) -> None:
        now = self._clock()
        for review in await self._reviews.expire_overdue(now):
            self._waiter.decided(review)
        await self._reviews.end_grants(now)

    async def relay(self) -> int:
        """Append every unrelayed review-log row to the audit chain (and start notifications
        for new reviews); return how many. The gateway runs this continuously."""
        async with self._relay_lock:
            return await self._relay()

    async def _relay(self) -> int:
        rows = await self._reviews.unaudited()
        done: list[int] = []
        try:
            for row in rows:
                payload = json.loads(row.payload)
                if not isinstance(payload, dict):
                    payload = {"value": payload}
                payload["review_log_id"] = row.id
                if self._audit is not None:
                    await self._audit.event(row.type, payload, ts=row.ts)
                if row.type == "review.requested":
                    self._spawn(self._notify(row.review_id, row.id))
                done.append(row.id)
        finally:
            if done:
                await self._reviews.mark_audited(done, self._clock())
        return len(done)

    async def _notify(self, review_id: str, log_id: int) -> None:
        review = await self._reviews.get(review_id)
        if review is None or self._notifier is None:
            return
        rule = self._rule_of(review)
        if rule is None or not rule.notify:
            return
        deliveries = await self._notifier.notify(
            review, rule.notify, event="review.requested", delivery_base=f"{review.id}.{log_id}"
        )
        payload = {
            "review_id": review.id,
            "deliveries": [
                {
                    "webhook": d.target,
                    "format": rule.notify[d.target].format,
                    "delivered": d.delivered,
                    "attempts": d.attempts,
                    "status": d.status,
                    "error": d.error,
                }
                for d in deliveries
            ],
        }
        try:
            await self._reviews.append_log(review.id, "review.notified", payload, at=self._clock())
        except StoreError as exc:
            log.warning("cannot record notification of review %s: %s", review.id, exc.message)
        self._kick()

    async def flush(self) -> None:
        """Finish work in flight and, once started, relay everything logged so far."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._relaying:
            await self.relay()
            while self._background:  # notifications of what was just relayed
                await asyncio.gather(*list(self._background), return_exceptions=True)
            await self.relay()

    async def close(self) -> None:
        """Stop the background work (relaying what is left), end waits, close the review store."""
        self._closing = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        await self._waiter.close()
        try:
            async with asyncio.timeout(5.0):
                await self.flush()
        except (TimeoutError, StoreError) as exc:
            log.warning("approvals: not everything was relayed before closing: %s", exc)
        for task in list(self._background):
            task.cancel()
        if self._notifier is not None:
            await self._notifier.aclose()
        await self._reviews.close()
