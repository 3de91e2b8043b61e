"""``approvals:`` — who approves reviewed statements and access requests, and how."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator

from callgate.config.fields import (
    ConfigModel,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    Secret,
    path_error,
)
from callgate.config.policies import SubjectsConfig


class NotifyConfig(ConfigModel):
    #: where to post new reviews (a Slack incoming-webhook URL is itself a secret)
    webhook: Secret
    format: Literal["json", "slack"] = "json"
    #: HMAC key used to sign the body (``json`` format)
    secret: Secret | None = None


class ApprovalConfig(ConfigModel):
    #: connection names, or ``"*"`` for every connection
    connections: tuple[NonEmptyStr, ...] = Field(min_length=1)
    approvers: SubjectsConfig
    #: distinct approvers needed; the requester never counts
    min_approvals: PositiveInt = 1
    #: hold: the statement waits in the session; deferred: error now, retry after approval
    mode: Literal["hold", "deferred"] = "hold"
    #: how long a held statement waits for a decision
    timeout: PositiveDuration = timedelta(seconds=60)
    #: deferred mode and access requests: how long an approval stays valid once granted
    window: PositiveDuration | None = None
    notify: tuple[NotifyConfig, ...] = ()

    @model_validator(mode="after")
    def _names_someone(self) -> ApprovalConfig:
        if not self.approvers.names_anyone:
            raise path_error("approvers", "expected groups or users who may approve")
        return self

    def applies_to(self, connection: str) -> bool:
        return "*" in self.connections or connection in self.connections
