"""``inject.oauth2_client_credentials``: callgate obtains its own access token and sends it.

The client credentials grant (RFC 6749 §4.4): callgate authenticates to ``token_url`` with the
connection's client id and secret, gets an access token, and forwards each request with
``Authorization: Bearer <token>`` (RFC 6750 §2.1). The token is cached for the connection;
shortly before it expires a new one is fetched in the background while the current one is still
used, and when there is no valid token, however many requests need one wait for a single fetch.
The token and the client secret are never logged and never in an error message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote_plus, urlencode, urlsplit, urlunsplit

import httpx

from callgate.config.connections import OAuth2ClientCredentialsConfig
from callgate.engines.http.inject import (
    Outgoing,
    Refreshed,
    basic_credentials,
    check_field_value,
    replace_headers,
    resolve,
    resolve_secrets,
)
from callgate.errors import (
    CallgateError,
    UpstreamAuthFailed,
    UpstreamProtocolViolation,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

#: seconds for the whole token request; a slower token endpoint fails the waiting requests with
#: 502 rather than holding them (and their callers) for the upstream's longer read timeout
TOKEN_REQUEST_TIMEOUT: Final = 10.0
#: seconds before ``expires_in`` runs out at which the token is refreshed, so a token never
#: expires between callgate and the upstream; never more than half the token's lifetime
EXPIRY_MARGIN: Final = 30.0
#: seconds between attempts to refresh a token that is still valid while the endpoint fails
RETRY_AFTER_FAILURE: Final = 5.0
#: lifetime assumed when the response has no ``expires_in`` (RFC 6749 §5.1 makes it optional):
#: short, so a token that lives less than we assume is not reused for long
DEFAULT_LIFETIME: Final = 300.0
#: a token response is a small JSON object; more than this is refused unread
MAX_TOKEN_RESPONSE: Final = 64 * 1024

# RFC 6749 §5.2: the characters of an ``error`` code. Anything else in that field is not
# repeated in our message (it could be anything, including an echo of what we sent).
_ERROR_CODE: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    #: clock time from which the next request triggers a refresh
    refresh_at: float
    #: clock time at which the token is no longer valid (used while a refresh fails)
    expires_at: float


def _lifetime(raw: object) -> float:
    # expires_in is a number of seconds (RFC 6749 §5.1); some servers send it as a string.
    if isinstance(raw, bool):
        return DEFAULT_LIFETIME
    if isinstance(raw, int | float) and raw > 0:
        return float(raw)
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return DEFAULT_LIFETIME
        if value > 0:
            return value
    return DEFAULT_LIFETIME


def _shown_url(url: str) -> str:
    """``url`` without user info, query or fragment: what error messages and logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OAuth2ClientCredentialsInjector:
    """Bearer tokens from a client credentials grant, cached and refreshed for one connection."""

    needs_body = False

    def __init__(
        self,
        connection: str,
        config: OAuth2ClientCredentialsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._connection = connection
        self._config = config
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._token: _Token | None = None
        self._refreshing: asyncio.Task[_Token] | None = None
        #: clock time before which a failed background refresh is not retried
        self._retry_at = 0.0
        self._where = _shown_url(config.token_url)
        #: token requests started so far (for metrics and tests)
        self.fetches = 0
        #: the client secret as leak checks look for it, read again now and then (rotation)
        self._client_secrets = Refreshed(self._read_client_secrets, clock, lambda found: found)

    # --- the Injector interface -----------------------------------------------------------------

    async def apply(self, req: Outgoing) -> Outgoing:
        token = await self.access_token()
        added = [("Authorization", f"Bearer {token}")]
        return dataclasses.replace(req, headers=replace_headers(req.headers, added))

    def apply_now(self, req: Outgoing) -> None:
        return None  # the token may have to be fetched: always apply()

    def secret_values(self) -> tuple[str, ...]:
        secrets = list(self._client_secrets.secret_values())
        if self._token is not None:
            secrets.append(self._token.value)
        return tuple(dict.fromkeys(s for s in secrets if s))

    def _read_client_secrets(self) -> tuple[str, ...]:
        # The client id is not a secret (RFC 6749 §2.2) and may appear in upstream answers.
        secrets = list(resolve_secrets(self._config.client_secret))
        for client_id in resolve_secrets(self._config.client_id):
            for secret in tuple(secrets):
                secrets.append(basic_credentials(quote_plus(client_id), quote_plus(secret)))
        return tuple(secrets)

    async def aclose(self) -> None:
        refreshing, self._refreshing = self._refreshing, None
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()
            await asyncio.wait([refreshing])  # waits for the cancellation, raises nothing
        self._token = None
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    # --- the token ------------------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token: the cached one, or a new one when there is none valid.

        From ``refresh_at`` on, the cached token is still returned while a new one is fetched
        in the background, so no request waits on the token endpoint while a valid token is at
        hand (and a slow or failing endpoint costs nothing until the token really expires).
        """
        now = self._clock()
        cached = self._token
        if cached is not None and now < cached.expires_at:
            if now >= cached.refresh_at and now >= self._retry_at:
                self._refresh()
            return cached.value
        # Single flight: however many requests find no valid token, they wait for one fetch.
        refreshing = self._refresh()
        # shield: a caller that goes away cancels its own wait, not the shared fetch.
        return (await asyncio.shield(refreshing)).value

    def _refresh(self) -> asyncio.Task[_Token]:
        """The token fetch in flight, started now if there is none."""
        refreshing = self._refreshing
        if refreshing is None:
            self.fetches += 1
            refreshing = asyncio.get_running_loop().create_task(self._fetch())
            refreshing.add_done_callback(self._refreshed)
            self._refreshing = refreshing
        return refreshing

    def _refreshed(self, task: asyncio.Task[_Token]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if task.cancelled():
            return
        failure = task.exception()  # retrieved here, so a failure nobody awaited is not reported
        if failure is None:
            self._token = task.result()
            self._retry_at = 0.0
            return
        cached = self._token
        if cached is not None and self._clock() < cached.expires_at:
            # A background refresh: nobody waits for it, so say it here, and do not ask again
            # with every request while the token endpoint is failing.
            self._retry_at = self._clock() + RETRY_AFTER_FAILURE
            log.warning(
                "connection %r: token refresh failed, the current token is used until it "
                "expires: %s",
                self._connection,
                failure,
            )

    async def _fetch(self) -> _Token:
        config = self._config
        key = "oauth2_client_credentials"
        client_id = resolve(self._connection, f"{key}.client_id", config.client_id)
        client_secret = resolve(self._connection, f"{key}.client_secret", config.client_secret)
        form = [("grant_type", "client_credentials")]
        if config.scope is not None:
            form.append(("scope", config.scope))
        if config.audience is not None:
            # Not in RFC 6749; Auth0 and others take the API to issue for from this parameter.
            form.append(("audience", config.audience))
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if config.auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding, so a
            # secret with ':', '+' or '%' survives; servers decode them that way.
            credentials = basic_credentials(quote_plus(client_id), quote_plus(client_secret))
            headers["Authorization"] = f"Basic {credentials}"
        else:
            form += [("client_id", client_id), ("client_secret", client_secret)]
        started = self._clock()
        status, body = await self._post(urlencode(form).encode("ascii"), headers)
        secrets = (client_secret, client_id)
        if status != 200:
            raise self._refusal(status, body, secrets)
        value, lifetime = self._parse(body)
        check_field_value(self._connection, f"{key} access token", value)
        # Lifetimes count from when the request was sent: the server's clock started before
        # the answer reached us.
        margin = min(EXPIRY_MARGIN, lifetime / 2)
        log.info(
            "connection %r: access token obtained from %s, valid for %ds",
            self._connection,
            self._where,
            int(lifetime),
        )
        return _Token(value, refresh_at=started + lifetime - margin, expires_at=started + lifetime)

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self._client is None:
            # trust_env=False: no proxy or .netrc credentials from the environment; the client
            # secret goes to token_url and nowhere else.
            self._client = httpx.AsyncClient(
                timeout=TOKEN_REQUEST_TIMEOUT, follow_redirects=False, trust_env=False
            )
        try:
            async with self._client.stream(
                "POST", self._config.token_url, content=body, headers=headers
            ) as response:
                received = bytearray()
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) > MAX_TOKEN_RESPONSE:
                        raise UpstreamProtocolViolation(
                            f"connection {self._connection!r}: the token endpoint {self._where} "
                            f"answered with more than {MAX_TOKEN_RESPONSE} bytes"
                        )
                return response.status_code, bytes(received)
        except httpx.HTTPError as exc:
            # The exception's text names the URL or the socket error, never what we sent; it
            # is not chained, so no traceback carries the request (and its Basic credential).
            reason = str(exc) or type(exc).__name__
            raise UpstreamUnavailable(
                f"connection {self._connection!r}: cannot get an access token from "
                f"{self._where}: {reason}"
            ) from None

    def _refusal(self, status: int, body: bytes, secrets: tuple[str, ...]) -> CallgateError:
        code = ""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            if (
                isinstance(error, str)
                and _ERROR_CODE.fullmatch(error)
                and not any(s and s in error for s in secrets)
            ):
                code = f", {error}"
        message = (
            f"connection {self._connection!r}: the token endpoint {self._where} refused "
            f"callgate's client credentials (HTTP {status}{code})"
        )
        if 400 <= status < 500:
            return UpstreamAuthFailed(message)
        return UpstreamUnavailable(
            f"connection {self._connection!r}: the token endpoint {self._where} answered "
            f"HTTP {status}{code}"
        )

    def _parse(self, body: bytes) -> tuple[str, float]:
        def bad(what: str) -> UpstreamProtocolViolation:
            return UpstreamProtocolViolation(
                f"connection {self._connection!r}: the token endpoint {self._where} sent {what}"
            )

        try:
            parsed = json.loads(body)
        except ValueError:
            raise bad("a response that is not JSON") from None
        if not isinstance(parsed, dict):
            raise bad("a JSON response that is not an object")
        value = parsed.get("access_token")
        if not isinstance(value, str) or not value:
            raise bad("no access_token")
        token_type = parsed.get("token_type", "Bearer")
        # RFC 6749 §7.1: we only know how to send a bearer token (RFC 6750); the type is
        # case-insensitive. A missing token_type is read as Bearer, which is what servers that
        # leave it out issue.
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise bad("a token whose token_type is not Bearer")
        return value, _lifetime(parsed.get("expires_in"))
