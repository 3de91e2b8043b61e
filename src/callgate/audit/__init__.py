"""Audit: hash-chained session recordings in the store (see docs/audit.md)."""

from callgate.audit.service import (
    UNAVAILABLE_MESSAGE,
    AuditService,
    SessionRecorder,
)
from callgate.audit.verify import verify_session_chain

__all__ = ["UNAVAILABLE_MESSAGE", "AuditService", "SessionRecorder", "verify_session_chain"]
