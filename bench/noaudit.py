"""``callgate`` with every audit write made a no-op: the "audit off" leg of pgbench_compare.

callgate has no audit-off mode, by design. Issue 7's benchmark compares strict audit with no audit
at all, so this launcher runs the same ``callgate`` with the audit service's writes short-circuited
in-process, for ``serve`` only: sessions and statements build no event and write nothing (the
session recorder still numbers statements, as the engine expects). Other commands (``keys
create``) run unchanged. Only the benchmark starts it; nothing in ``src/`` knows about it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from callgate.audit import service
from callgate.cli.main import main as callgate_main
from callgate.store import WriteOp


async def _write(self: service.AuditService, ops: Sequence[WriteOp]) -> None:
    return None


def _queue(self: service.AuditService, ops: Sequence[WriteOp]) -> None:
    return None


async def _statement(self: service.SessionRecorder, *args: object, **kwargs: object) -> int:
    self._seq += 1
    return self._seq


def _nothing(self: service.SessionRecorder, *args: object, **kwargs: object) -> None:
    return None


def audit_off() -> None:
    service.AuditService._write = _write  # type: ignore[method-assign]
    service.AuditService._queue = _queue  # type: ignore[method-assign]
    service.SessionRecorder.statement = _statement  # type: ignore[method-assign]
    service.SessionRecorder.request = _statement  # type: ignore[method-assign]
    service.SessionRecorder.statement_done = _nothing  # type: ignore[method-assign]
    service.SessionRecorder.rows = _nothing  # type: ignore[method-assign]
    service.SessionRecorder.response = _nothing  # type: ignore[method-assign]
    service.SessionRecorder.bodies = _nothing  # type: ignore[method-assign]
    service.SessionRecorder.masked = _nothing  # type: ignore[method-assign]


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        audit_off()
    callgate_main()
