"""``approvals:`` — who approves reviewed statements and access requests, and how."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Literal

from pydantic import Field, StrictBool, model_validator

from callgate.config.fields import (
    ConfigModel,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    Secret,
    path_error,
)
from callgate.config.policies import SubjectsConfig
from callgate.errors import ConfigError

#: Longest access window a request may ask for unless ``access.max_duration`` says otherwise:
#: a working day; longer standing access belongs in a policy, not a break-glass grant.
DEFAULT_MAX_ACCESS = timedelta(hours=8)
#: How long an access request waits for approvers by default (humans, not a held statement).
DEFAULT_ACCESS_PENDING = timedelta(hours=1)


class NotifyConfig(ConfigModel):
    #: where to post new reviews (a Slack incoming-webhook URL is itself a secret)
    webhook: Secret
    format: Literal["json", "slack"] = "json"
    #: HMAC key used to sign the body (``X-Callgate-Signature``)
    secret: Secret | None = None
    #: deliveries tried at most (the first one included), with exponential backoff between
    max_attempts: PositiveInt = 5


class AccessConfig(ConfigModel):
    """Time-boxed access windows (``callgate access request``) on the rule's connections."""

    #: the policy (``policies[].name``) an approved window applies to the requester
    grant_policy: NonEmptyStr
    #: the longest window that may be requested
    max_duration: PositiveDuration = DEFAULT_MAX_ACCESS
    #: how long a request waits for approvers before it expires
    pending_timeout: PositiveDuration = DEFAULT_ACCESS_PENDING
    #: who may ask for a window (default: any authenticated caller)
    requesters: SubjectsConfig | None = None

    @model_validator(mode="after")
    def _requesters_name_someone(self) -> AccessConfig:
        if self.requesters is not None and not self.requesters.names_anyone:
            raise path_error("requesters", "expected groups or users who may request access")
        return self


class ApprovalConfig(ConfigModel):
    #: connection names, or ``"*"`` for every connection
    connections: tuple[NonEmptyStr, ...] = Field(min_length=1)
    approvers: SubjectsConfig
    #: distinct approvers needed; the requester never counts
    min_approvals: PositiveInt = 1
    #: hold: the statement waits in the session; deferred: error now, retry after approval
    mode: Literal["hold", "deferred"] = "hold"
    #: how long a held statement waits for a decision (deferred: how long the review stays open)
    timeout: PositiveDuration = timedelta(seconds=60)
    #: deferred mode: how long an approval stays usable (none: exactly one use)
    window: PositiveDuration | None = None
    #: true: an approval covers the statement whatever its bind parameters
    any_parameters: StrictBool = False
    #: access windows on these connections (``callgate access request``)
    access: AccessConfig | None = None
    notify: tuple[NotifyConfig, ...] = ()

    @model_validator(mode="after")
    def _names_someone(self) -> ApprovalConfig:
        if not self.approvers.names_anyone:
            raise path_error("approvers", "expected groups or users who may approve")
        if self.window is not None and self.mode != "deferred":
            raise path_error("window", "window is only used with mode: deferred")
        return self

    def applies_to(self, connection: str) -> bool:
        return "*" in self.connections or connection in self.connections


def check_grant_policies(approvals: Sequence[ApprovalConfig], policy_names: Iterable[str]) -> None:
    """Every ``access.grant_policy`` must name a configured policy (a cross-section check)."""
    names = set(policy_names)
    for index, approval in enumerate(approvals):
        if approval.access is not None and approval.access.grant_policy not in names:
            raise ConfigError(
                f"approvals[{index}].access.grant_policy",
                f"policy {approval.access.grant_policy!r} does not exist",
            )
