"""Webhook notifications of new reviews: generic JSON or Slack's incoming-webhook format.

Every delivery carries:

- ``X-Callgate-Delivery``: one id per (review, webhook), the same on every retry, so a receiver
  that saw it already can drop the repeat;
- ``X-Callgate-Timestamp``: unix seconds when this attempt was signed;
- ``X-Callgate-Signature: sha256=<hex>``: HMAC-SHA256 with the webhook's ``secret`` over
  ``<timestamp>.<body>``. Because the timestamp is signed, a captured request cannot be replayed
  later: receivers refuse timestamps older than a few minutes (:func:`verify_signature`).

A delivery is retried on a connection error, a timeout, 408, 429 and any 5xx, with exponential
backoff, at most ``max_attempts`` times in all; any other status ends it (2xx: delivered).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from callgate.approvals.models import Review
from callgate.config.approvals import NotifyConfig
from callgate.errors import SecretError
from callgate.store.reviews import ReviewKind

log = logging.getLogger("callgate.approvals")

SIGNATURE_HEADER: Final = "X-Callgate-Signature"
TIMESTAMP_HEADER: Final = "X-Callgate-Timestamp"
DELIVERY_HEADER: Final = "X-Callgate-Delivery"
EVENT_HEADER: Final = "X-Callgate-Event"

#: Seconds before the first retry; each later one waits twice as long (with jitter), up to
#: :data:`MAX_DELAY`.
BASE_DELAY: Final = 0.5
MAX_DELAY: Final = 30.0
#: Seconds one attempt may take (connect, send, answer).
ATTEMPT_TIMEOUT: Final = 10.0
#: Seconds a receiver should accept a signature's timestamp for (clock skew plus delivery time).
SIGNATURE_TOLERANCE: Final = 300.0
#: Characters of SQL shown in a notification (approvers open the review for the rest).
STATEMENT_CHARS: Final = 1000

_RETRY_STATUSES: Final = frozenset({408, 425, 429})

Sleep = Callable[[float], Awaitable[None]]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Callgate-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    ts = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one webhook delivery ended."""

    target: int
    delivery_id: str
    delivered: bool
    attempts: int
    status: int | None
    error: str | None = None


def _clip(text: str, limit: int = STATEMENT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def review_summary(review: Review) -> dict[str, Any]:
    """The review as a notification shows it (never a credential)."""
    return {
        "id": review.id,
        "kind": review.kind.value,
        "state": review.state.value,
        "mode": review.mode,
        "requester": review.requester,
        "requester_groups": list(review.requester_groups),
        "connection": review.connection,
        "statement": _clip(review.statement) if review.statement is not None else None,
        "rules": list(review.rules),
        "reason": review.reason,
        "duration_seconds": review.duration,
        "min_approvals": review.min_approvals,
        "created_at": review.created_at,
        "expires_at": review.expires_at,
    }


def json_body(review: Review, event: str, delivery_id: str) -> dict[str, Any]:
    return {
        "event": event,
        "delivery_id": delivery_id,
        "review": review_summary(review),
        "approve": f"callgate reviews approve {review.id}",
        "deny": f"callgate reviews deny {review.id} --reason …",
    }


def slack_body(review: Review, event: str) -> dict[str, Any]:
    """Slack incoming-webhook JSON: ``text`` (fallback) and Block Kit ``blocks``."""
    if review.kind is ReviewKind.ACCESS:
        minutes = (review.duration or 0.0) / 60
        title = (
            f"{review.requester} asks for {minutes:g} min of access to {review.connection}"
            f" (review {review.id})"
        )
        detail = f"*Reason:* {review.reason or '-'}"
    else:
        title = f"{review.requester} wants to run a statement on {review.connection}"
        detail = "```" + _clip(review.statement or "", 2900).replace("```", "'''") + "```"
    how = (
        f"Approve: `callgate reviews approve {review.id}` · "
        f"Deny: `callgate reviews deny {review.id} --reason …`"
    )
    return {
        "text": title,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": detail}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": how}]},
        ],
    }


def render(target: NotifyConfig, review: Review, event: str, delivery_id: str) -> bytes:
    data = (
        slack_body(review, event)
        if target.format == "slack"
        else json_body(review, event, delivery_id)
    )
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


class WebhookNotifier:
    """Delivers notifications; ``client`` is shared (and closed by :meth:`aclose` if ours)."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        timeout: float = ATTEMPT_TIMEOUT,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay: float = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.0)

    async def notify(
        self, review: Review, targets: Sequence[NotifyConfig], *, event: str, delivery_base: str
    ) -> list[Delivery]:
        """Deliver to every target concurrently; one :class:`Delivery` each, never raises."""
        return list(
            await asyncio.gather(
                *(
                    self.deliver(i, target, review, event, f"{delivery_base}.{i}")
                    for i, target in enumerate(targets)
                )
            )
        )

    async def deliver(
        self, index: int, target: NotifyConfig, review: Review, event: str, delivery_id: str
    ) -> Delivery:
        try:
            url = target.webhook.resolve()
            secret = target.secret.resolve().encode("utf-8") if target.secret else None
        except SecretError as exc:
            log.warning("webhook %d for review %s: %s", index, review.id, exc.message)
            return Delivery(index, delivery_id, False, 0, None, exc.message)
        body = render(target, review, event, delivery_id)
        status: int | None = None
        error: str | None = None
        for attempt in range(1, target.max_attempts + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "callgate",
                DELIVERY_HEADER: delivery_id,
                EVENT_HEADER: event,
                TIMESTAMP_HEADER: str(timestamp),
            }
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
            retry_after: float | None = None
            try:
                response = await self._client.post(
                    url, content=body, headers=headers, timeout=self._timeout
                )
                status, error = response.status_code, None
                if 200 <= status < 300:
                    return Delivery(index, delivery_id, True, attempt, status)
                error = f"HTTP {status}"
                if status < 500 and status not in _RETRY_STATUSES:
                    break  # the receiver refuses this body: sending it again will not help
                retry_after = _retry_after(response)
            except httpx.HTTPError as exc:
                # The URL is a secret (Slack's is the credential): name the failure, not it.
                status, error = None, f"{type(exc).__name__}"
            if attempt < target.max_attempts:
                delay = self.backoff(attempt)
                if retry_after is not None:
                    delay = min(self._max_delay, max(delay, retry_after))
                await self._sleep(delay)
        log.warning(
            "webhook %d for review %s not delivered after %d attempt(s): %s",
            index,
            review.id,
            attempt,
            error,
        )
        return Delivery(index, delivery_id, False, attempt, status, error)

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
