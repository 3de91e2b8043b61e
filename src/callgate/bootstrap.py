"""Builds the one :class:`~callgate.services.Services` object ``callgate serve`` runs on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from callgate.approvals import ApprovalService
from callgate.audit import AuditService
from callgate.config import Config
from callgate.identity import IdentityService
from callgate.masking import rows as mask_rows
from callgate.policy.engine import PolicyEngine
from callgate.services import Services
from callgate.store import Store, StoreError, open_store_from_config

log = logging.getLogger("callgate.server")


@dataclass
class ServiceBundle:
    """The services of a running gateway and what must be closed when it stops."""

    services: Services
    store: Store
    audit: AuditService
    approvals: ApprovalService | None
    #: every identity service built (one per config load); closed at shutdown, since sessions
    #: still authenticating may hold an older one
    identities: list[IdentityService]
    #: closed first at shutdown (background tasks that use the services)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def with_config(self, config: Config) -> Services:
        """Services for a reloaded config: same store, audit and approvals; identity and policy
        rebuilt from it."""
        identity = IdentityService.from_config(config, self.store, audit=self.audit)
        await identity.start()
        self.identities.append(identity)
        if self.approvals is not None:
            self.approvals.reload(config)
        return Services(
            config=config,
            identity=identity,
            audit=self.audit,
            policy=policy_engine(config),
            approvals=self.approvals,
        )

    async def close(self) -> None:
        for close in self.on_close:
            await close()
        if self.approvals is not None:
            await self.approvals.close()
        for identity in self.identities:
            await identity.aclose()
        await self.audit.close()


async def build_services(config: Config) -> ServiceBundle:
    store = open_store_from_config(config, serving=True)
    audit = AuditService.from_config(config, store)
    identity = IdentityService.from_config(config, store, audit=audit)
    await identity.start()
    approvals: ApprovalService | None = None
    try:
        approvals = ApprovalService.from_config(config, store, audit)
    except StoreError as exc:
        # Fail closed: without a review store every statement that needs review is refused.
        log.warning("approvals unavailable (%s): statements that need review are refused", exc)
    if approvals is not None:
        await approvals.start()
    if mask_rows.REWRITE_RUN_C is None and any(p.mask for p in config.policies):
        log.warning(
            "masking runs in Python only: the C extension callgate.masking._rowscan was not "
            "built (install with a C compiler and the Python headers); masked results are "
            "several times slower"
        )
    services = Services(
        config=config,
        identity=identity,
        audit=audit,
        policy=policy_engine(config),
        approvals=approvals,
    )
    return ServiceBundle(
        services=services, store=store, audit=audit, approvals=approvals, identities=[identity]
    )


def policy_engine(config: Config) -> PolicyEngine:
    return PolicyEngine(config.policies, config.approvals)
