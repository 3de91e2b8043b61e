"""Approvals: statements held for a human's decision, and time-boxed access windows."""

from callgate.approvals.binding import (
    Binding,
    bind_statement,
    parameter_digest,
    statement_fingerprint,
)
from callgate.approvals.models import (
    AccessRefused,
    ApprovalError,
    ApprovalPending,
    Grant,
    NotAnApprover,
    ReasonRequired,
    Review,
    ReviewConflict,
    ReviewKind,
    ReviewNotFound,
    ReviewOutcome,
    ReviewRefused,
    ReviewState,
    pending_error,
)
from callgate.approvals.notify import WebhookNotifier, sign, verify_signature
from callgate.approvals.service import ApprovalService
from callgate.approvals.waiter import PollingReviewWaiter, ReviewWaiter

__all__ = [
    "AccessRefused",
    "ApprovalError",
    "ApprovalPending",
    "ApprovalService",
    "Binding",
    "Grant",
    "NotAnApprover",
    "PollingReviewWaiter",
    "ReasonRequired",
    "Review",
    "ReviewConflict",
    "ReviewKind",
    "ReviewNotFound",
    "ReviewOutcome",
    "ReviewRefused",
    "ReviewState",
    "ReviewWaiter",
    "WebhookNotifier",
    "bind_statement",
    "parameter_digest",
    "pending_error",
    "sign",
    "statement_fingerprint",
    "verify_signature",
]
