"""Connection-level access: may this principal use this connection at all?

A principal may connect only when some policy names it (by user or group) in ``subjects`` and the
connection in ``connections`` (SPEC §2: nothing matched means deny).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from callgate.model import Principal

if TYPE_CHECKING:
    from callgate.config import PolicyConfig


def policies_for(
    policies: Iterable[PolicyConfig], principal: Principal, connection: str
) -> tuple[PolicyConfig, ...]:
    """The policies that apply to ``principal`` on ``connection``."""
    return tuple(
        p
        for p in policies
        if (connection in p.connections or "*" in p.connections)
        and p.subjects.matches(principal.subject, principal.groups)
    )


def may_connect(policies: Iterable[PolicyConfig], principal: Principal, connection: str) -> bool:
    return bool(policies_for(policies, principal, connection))
