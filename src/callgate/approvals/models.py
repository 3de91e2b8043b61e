"""What the approvals service hands out: reviews, grants, outcomes, and the errors callers see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from callgate.errors import CallerError, StatementDenied
from callgate.store.reviews import GrantRecord, ReviewKind, ReviewRecord, ReviewState, VoteRecord

#: A review as stored (see :class:`callgate.store.reviews.ReviewRecord`).
Review = ReviewRecord
#: An access window as stored (see :class:`callgate.store.reviews.GrantRecord`).
Grant = GrantRecord
Vote = VoteRecord

__all__ = [
    "AccessRefused",
    "ApprovalError",
    "ApprovalPending",
    "Grant",
    "NotAnApprover",
    "ReasonRequired",
    "Review",
    "ReviewConflict",
    "ReviewKind",
    "ReviewNotFound",
    "ReviewOutcome",
    "ReviewRefused",
    "ReviewState",
    "Vote",
    "grant_json",
    "iso",
    "pending_error",
    "review_json",
]


# --- errors ---------------------------------------------------------------------------------------


class ApprovalError(CallerError):
    """An approval request that cannot be done (the API renders :attr:`http_status`)."""

    sqlstate = "42501"
    http_status = 400
    #: a short, stable name for API clients (``{"error": {"code": …}}``)
    code = "bad_request"


class ReviewNotFound(ApprovalError):
    sqlstate = "42704"
    http_status = 404
    code = "not_found"


class NotAnApprover(ApprovalError):
    """The principal may not decide this review (not an approver, or its own request)."""

    http_status = 403
    code = "forbidden"


class ReviewConflict(ApprovalError):
    """The review is no longer pending, or this approver already approved it."""

    sqlstate = "55000"
    http_status = 409
    code = "conflict"


class ReasonRequired(ApprovalError):
    sqlstate = "22023"
    http_status = 400
    code = "reason_required"


class AccessRefused(ApprovalError):
    """An access window that may not be requested (no ``access:`` rule, too long, not allowed)."""

    http_status = 403
    code = "access_refused"


class ReviewRefused(StatementDenied):
    """A held statement that was denied, timed out or withdrawn. The message names the review."""


class ApprovalPending(StatementDenied):
    """Deferred mode: the review was created; the caller retries after approval (HTTP 202)."""

    http_status = 202


# --- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """How a wait for a review ended."""

    #: approved, denied, expired or withdrawn (``used`` counts as approved)
    state: ReviewState
    review: Review
    #: the approver's reason (denied: always given)
    reason: str | None
    #: the approver whose decision ended it (the last of ``min_approvals``), if any
    approver: str | None

    @classmethod
    def of(cls, review: Review) -> ReviewOutcome:
        state = ReviewState.APPROVED if review.state is ReviewState.USED else review.state
        return cls(state, review, review.decision_reason, review.decided_by)

    @property
    def approved(self) -> bool:
        return self.state is ReviewState.APPROVED

    def error(self) -> ReviewRefused:
        """The error a refused held statement gets (SQLSTATE 42501; names the review id)."""
        rid = self.review.id
        if self.state is ReviewState.DENIED:
            message = f"review {rid} denied by {self.approver}: {self.reason}"
        elif self.state is ReviewState.EXPIRED:
            message = f"review {rid} timed out without a decision"
        elif self.state is ReviewState.WITHDRAWN:
            message = f"review {rid} was withdrawn"
        else:
            message = f"review {rid} is {self.state}"
        return ReviewRefused(message)


def pending_error(review: Review) -> ApprovalPending:
    """Deferred mode: what the caller gets at once (SQLSTATE 42501; names the review id)."""
    return ApprovalPending(
        f"statement needs approval: review {review.id} was created; run it again once it is "
        "approved",
        hint=f"an approver runs: callgate reviews approve {review.id}",
    )


# --- JSON views (REST API, ``--json``) ----------------------------------------------------------


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 UTC, or ``None``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def review_json(review: Review) -> dict[str, object]:
    """A review as the API and ``--json`` show it (parameters included: approvers judge them)."""
    return {
        "id": review.id,
        "kind": review.kind.value,
        "state": review.state.value,
        "mode": review.mode,
        "requester": review.requester,
        "requester_issuer": review.requester_issuer,
        "requester_groups": list(review.requester_groups),
        "connection": review.connection,
        "session_id": review.session_id,
        "statement": review.statement,
        "params": review.params(),
        "rules": list(review.rules),
        "policy_version": review.policy_version,
        "reason": review.reason,
        "duration_seconds": review.duration,
        "window_seconds": review.use_window,
        "min_approvals": review.min_approvals,
        "approvals": [
            {"approver": v.approver, "at": iso(v.at), "reason": v.reason} for v in review.votes
        ],
        "created_at": iso(review.created_at),
        "expires_at": iso(review.expires_at),
        "decided_at": iso(review.decided_at),
        "decided_by": review.decided_by,
        "decision_reason": review.decision_reason,
        "uses": review.uses,
        "grant_id": review.grant_id,
    }


def grant_json(grant: Grant, now: float) -> dict[str, object]:
    return {
        "id": grant.id,
        "review_id": grant.review_id,
        "subject": grant.subject,
        "issuer": grant.issuer,
        "connection": grant.connection,
        "policy": grant.policy,
        "status": grant.status(now),
        "starts_at": iso(grant.starts_at),
        "expires_at": iso(grant.expires_at),
        "revoked_at": iso(grant.revoked_at),
        "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason,
    }
