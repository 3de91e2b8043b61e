"""Audit: hash-chained session recordings in the store (see docs/audit.md)."""

from callgate.audit.exporter import AuditExporter, ExportTarget
from callgate.audit.service import (
    UNAVAILABLE_MESSAGE,
    AuditService,
    ParamScrubber,
    SessionRecorder,
    record_params_as_sent,
)
from callgate.audit.signing import load_signer, public_key_from_config, signer_from_config
from callgate.audit.sinks import JsonlSink, Sink, SinkError, SyslogSink, WebhookSink
from callgate.audit.tasks import AuditTasks, RetentionTask
from callgate.audit.verify import Problem, VerifyReport, verify_session_chain, verify_store

__all__ = [
    "UNAVAILABLE_MESSAGE",
    "AuditExporter",
    "AuditService",
    "AuditTasks",
    "ExportTarget",
    "JsonlSink",
    "ParamScrubber",
    "Problem",
    "RetentionTask",
    "SessionRecorder",
    "Sink",
    "SinkError",
    "SyslogSink",
    "VerifyReport",
    "WebhookSink",
    "load_signer",
    "public_key_from_config",
    "record_params_as_sent",
    "signer_from_config",
    "verify_session_chain",
    "verify_store",
]
