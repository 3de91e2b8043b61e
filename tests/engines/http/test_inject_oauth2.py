"""OAuth2 client credentials injection against real token endpoints.

The main peer is the repo's real OpenID provider (tests/oidc_provider: panva's oidc-provider),
with clients that may only use the ``client_credentials`` grant and authenticate with
``client_secret_basic`` or ``client_secret_post``; the tokens it issues are JWTs, verified here
with its published keys. Failures a real provider will not produce on demand (a 503, a body that
is not JSON, a token of another type, an answer too large) come from a small token endpoint
served by the test (:class:`TokenEndpoint`), which also checks client authentication.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
import pytest

from callgate.config.connections import ConnectionConfig, OAuth2ClientCredentialsConfig
from callgate.engines.http.inject import Outgoing, build_injector
from callgate.engines.http.oauth2 import (
    EXPIRY_MARGIN,
    MAX_TOKEN_RESPONSE,
    RETRY_AFTER_FAILURE,
    OAuth2ClientCredentialsInjector,
)
from callgate.errors import (
    CallgateError,
    UpstreamAuthFailed,
    UpstreamProtocolViolation,
    UpstreamUnavailable,
)
from tests.identity_oidc.provider import Client, OIDCProvider, ProviderUnavailable, require_servers
from tests.support.net import free_port

pytestmark = pytest.mark.integration

TTL = 600  # the provider's access token lifetime, seconds
# A secret with characters RFC 6749 §2.3.1 makes a client form-encode before Basic encoding
# (":" would otherwise end the id, "+" and "%" would be misread). Client secrets are printable
# ASCII (RFC 6749 Appendix A, VSCHAR), which the provider enforces.
TRICKY_SECRET = "s3:cr+et/=%&~* " + secrets.token_urlsafe(12)
BASIC = Client("cg-basic", client_secret=TRICKY_SECRET)
POST = Client("cg-post", auth_method="client_secret_post")


class Clock:
    """Monotonic time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    server = OIDCProvider(
        tmp_path_factory.mktemp("oauth2-provider"), (BASIC, POST), access_token_ttl=TTL
    )
    try:
        server.start()
    except ProviderUnavailable as exc:
        if require_servers():
            pytest.fail(f"{exc} (servers are required: CI/CALLGATE_REQUIRE_SERVERS is set)")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def config(token_url: str, client: Client, **settings: Any) -> OAuth2ClientCredentialsConfig:
    return OAuth2ClientCredentialsConfig.model_validate(
        {
            "token_url": token_url,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "auth_method": client.auth_method,
            **settings,
        }
    )


def injector(
    token_url: str, client: Client, *, clock: Clock | None = None, **settings: Any
) -> OAuth2ClientCredentialsInjector:
    return OAuth2ClientCredentialsInjector(
        "api", config(token_url, client, **settings), clock=clock or Clock()
    )


def request(*headers: tuple[str, str]) -> Outgoing:
    return Outgoing(
        "GET",
        "https://api.example/v1/charges",
        [("Host", "api.example"), *headers],
        b"",
        0,
    )


def bearer(req: Outgoing) -> str:
    values = [v for n, v in req.headers if n.lower() == "authorization"]
    assert len(values) == 1, req.headers
    scheme, _, token = values[0].partition(" ")
    assert scheme == "Bearer"
    return token


def token_requests(provider: OIDCProvider) -> int:
    return provider.request_counts().get("/token", 0)


async def next_token(injector: OAuth2ClientCredentialsInjector, old: str) -> str:
    """The token the injector sends once its background refresh has replaced ``old``."""
    for _ in range(250):
        token = bearer(await injector.apply(request()))
        if token != old:
            return token
        await asyncio.sleep(0.02)
    raise AssertionError("the token was not refreshed within 5 s")


async def logged(caplog: pytest.LogCaptureFixture, words: str) -> None:
    for _ in range(250):
        if words in caplog.text:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{words!r} was not logged within 5 s")


def verified_claims(provider: OIDCProvider, token: str) -> dict[str, Any]:
    keys = jwt.PyJWKClient(f"{provider.issuer}/jwks")
    key = keys.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=provider.audience,
        issuer=provider.issuer,
    )
    return claims


# --- against the real provider ------------------------------------------------------------------


def test_token_from_the_provider_replaces_the_callers_authorization(
    provider: OIDCProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_OAUTH_SECRET", TRICKY_SECRET)
    conn = ConnectionConfig.model_validate(
        {
            "name": "payments",
            "protocol": "http",
            "upstream": {"url": "https://api.example"},
            "inject": {
                "oauth2_client_credentials": {
                    "token_url": f"{provider.issuer}/token",
                    "client_id": BASIC.client_id,
                    "client_secret": "env:CG_TEST_OAUTH_SECRET",
                    "scope": "api",
                }
            },
        }
    )

    async def main() -> str:
        built = build_injector(conn)
        assert isinstance(built, OAuth2ClientCredentialsInjector)
        assert built.needs_body is False
        try:
            sent = await built.apply(request(("authorization", "Bearer the-callers-own-token")))
            token = bearer(sent)
            assert ("Host", "api.example") in sent.headers
            assert token in built.secret_values()
            assert TRICKY_SECRET in built.secret_values()
            return token
        finally:
            await built.aclose()

    token = asyncio.run(main())
    claims = verified_claims(provider, token)
    assert claims["client_id"] == BASIC.client_id
    assert "api" in claims["scope"].split()


def test_client_secret_post(provider: OIDCProvider) -> None:
    async def main() -> None:
        post = injector(f"{provider.issuer}/token", POST)
        try:
            token = bearer(await post.apply(request()))
        finally:
            await post.aclose()
        assert verified_claims(provider, token)["client_id"] == POST.client_id

    asyncio.run(main())


def test_one_token_for_many_requests(provider: OIDCProvider) -> None:
    async def main() -> None:
        cached = injector(f"{provider.issuer}/token", BASIC)
        before = token_requests(provider)
        try:
            tokens = {bearer(await cached.apply(request())) for _ in range(25)}
        finally:
            await cached.aclose()
        assert len(tokens) == 1
        assert cached.fetches == 1
        assert token_requests(provider) - before == 1

    asyncio.run(main())


def test_refreshed_before_expiry(provider: OIDCProvider) -> None:
    clock = Clock()

    async def main() -> None:
        refreshing = injector(f"{provider.issuer}/token", BASIC, clock=clock)
        before = token_requests(provider)
        try:
            first = bearer(await refreshing.apply(request()))
            clock.advance(TTL - EXPIRY_MARGIN - 5)  # still outside the margin: cached
            assert bearer(await refreshing.apply(request())) == first
            assert token_requests(provider) - before == 1
            clock.advance(10)  # inside the margin: still valid, so used while a new one comes
            assert bearer(await refreshing.apply(request())) == first
            second = await next_token(refreshing, first)
            assert bearer(await refreshing.apply(request())) == second
            assert token_requests(provider) - before == 2
            clock.advance(3 * TTL)  # long expired: the request waits for a new token
            third = bearer(await refreshing.apply(request()))
            assert third not in (first, second)
            assert token_requests(provider) - before == 3
            # The old token is no longer one of the secrets the injector holds.
            assert first not in refreshing.secret_values()
            assert third in refreshing.secret_values()
        finally:
            await refreshing.aclose()
        for token in (first, second, third):
            assert verified_claims(provider, token)["client_id"] == BASIC.client_id

    asyncio.run(main())


def test_concurrent_requests_share_one_refresh(provider: OIDCProvider) -> None:
    clock = Clock()

    async def main() -> None:
        shared = injector(f"{provider.issuer}/token", BASIC, clock=clock)
        before = token_requests(provider)
        try:
            sent = await asyncio.gather(*(shared.apply(request()) for _ in range(50)))
            assert len({bearer(r) for r in sent}) == 1
            assert token_requests(provider) - before == 1
            clock.advance(TTL)
            again = await asyncio.gather(*(shared.apply(request()) for _ in range(50)))
            assert len({bearer(r) for r in again}) == 1
            assert bearer(again[0]) != bearer(sent[0])
            assert token_requests(provider) - before == 2
            assert shared.fetches == 2
        finally:
            await shared.aclose()

    asyncio.run(main())


def test_a_cancelled_caller_does_not_cancel_the_shared_refresh(provider: OIDCProvider) -> None:
    async def main() -> None:
        shared = injector(f"{provider.issuer}/token", BASIC)
        try:
            first = asyncio.ensure_future(shared.apply(request()))
            second = asyncio.ensure_future(shared.apply(request()))
            await asyncio.sleep(0)  # both waiting on the one refresh
            first.cancel()
            token = bearer(await second)
            assert first.cancelled()
            assert shared.fetches == 1
            assert bearer(await shared.apply(request())) == token
        finally:
            await shared.aclose()

    asyncio.run(main())


def test_wrong_client_secret(provider: OIDCProvider, caplog: pytest.LogCaptureFixture) -> None:
    wrong_secret = "not-the-secret-" + secrets.token_hex(8)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore at their most talkative

    async def main() -> None:
        wrong = OAuth2ClientCredentialsInjector(
            "payments",
            OAuth2ClientCredentialsConfig.model_validate(
                {
                    "token_url": f"{provider.issuer}/token?tenant=1",
                    "client_id": BASIC.client_id,
                    "client_secret": wrong_secret,
                }
            ),
        )
        try:
            with pytest.raises(UpstreamAuthFailed) as caught:
                await wrong.apply(request())
        finally:
            await wrong.aclose()
        error = caught.value
        assert error.http_status == 502
        assert error.message == (
            f"connection 'payments': the token endpoint {provider.issuer}/token refused "
            "callgate's client credentials (HTTP 401, invalid_client)"
        )
        assert wrong_secret not in str(error)
        assert wrong.secret_values() == (
            wrong_secret,
            base64.b64encode(f"{BASIC.client_id}:{wrong_secret}".encode()).decode(),
        )

    asyncio.run(main())
    assert wrong_secret not in caplog.text


def test_secrets_never_logged(provider: OIDCProvider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> tuple[str, ...]:
        logged = injector(f"{provider.issuer}/token", BASIC)
        try:
            await logged.apply(request())
            return logged.secret_values()
        finally:
            await logged.aclose()

    values = asyncio.run(main())
    assert len(values) == 3  # the client secret, its Basic encoding, the access token
    assert "access token obtained" in caplog.text
    for value in values:
        assert value not in caplog.text


# --- a token endpoint of our own, for the failures --------------------------------------------


class TokenEndpoint:
    """``POST /token`` on a loopback port, answering as ``mode`` says; checks client auth."""

    CLIENT_ID = "local-client"
    CLIENT_SECRET = "local-" + secrets.token_urlsafe(16)

    def __init__(self) -> None:
        #: ok | unavailable | not_json | mac | huge | echo | no_expiry | string_expiry
        self.mode = "ok"
        self.expires_in: Any = 60
        self.issued = 0
        #: seconds to wait before answering
        self.delay = 0.0
        #: how each request authenticated the client
        self.methods: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, headers: Any, body: bytes) -> tuple[int, bytes]:
        form = parse_qs(body.decode())
        if form.get("grant_type") != ["client_credentials"]:
            return 400, json.dumps({"error": "unsupported_grant_type"}).encode()
        scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
        if scheme == "Basic" and "client_secret" not in form:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            user, password = unquote_plus(user), unquote_plus(password)
            self.methods.append("client_secret_basic")
        elif not scheme and form.get("client_id") and form.get("client_secret"):
            user, password = form["client_id"][0], form["client_secret"][0]
            self.methods.append("client_secret_post")
        else:  # none, or both (RFC 6749 §2.3: one method per request)
            return 400, json.dumps({"error": "invalid_request"}).encode()
        if user != self.CLIENT_ID or password != self.CLIENT_SECRET:
            return 401, json.dumps({"error": "invalid_client"}).encode()
        mode = self.mode
        if mode == "unavailable":
            return 503, b"<html>maintenance</html>"
        if mode == "not_json":
            return 200, b"access_token=abc&token_type=bearer"
        if mode == "huge":
            return 200, b" " * (MAX_TOKEN_RESPONSE + 1) + b"{}"
        if mode == "echo":
            # A server that repeats what it got: none of it may reach our messages.
            return 400, json.dumps({"error": password, "error_description": password}).encode()
        with self._lock:
            self.issued += 1
            value = f"local-token-{self.issued}-{secrets.token_hex(8)}"
        token: dict[str, Any] = {"access_token": value, "token_type": "Bearer"}
        if mode == "mac":
            token["token_type"] = "mac"
        if mode != "no_expiry":
            token["expires_in"] = self.expires_in
        return 200, json.dumps(token).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                time.sleep(endpoint.delay)
                length = int(self.headers.get("Content-Length") or 0)
                status, body = endpoint.answer(self.headers, self.rfile.read(length))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint().start()
    try:
        yield server
    finally:
        server.stop()


LOCAL = Client(TokenEndpoint.CLIENT_ID, client_secret=TokenEndpoint.CLIENT_SECRET)


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("unavailable", UpstreamUnavailable, "answered HTTP 503"),
        ("not_json", UpstreamProtocolViolation, "not JSON"),
        ("mac", UpstreamProtocolViolation, "not Bearer"),
        ("huge", UpstreamProtocolViolation, f"more than {MAX_TOKEN_RESPONSE} bytes"),
        ("echo", UpstreamAuthFailed, "refused callgate's client credentials (HTTP 400)"),
    ],
)
def test_token_endpoint_failures(
    endpoint: TokenEndpoint,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    error: type[CallgateError],
    words: str,
) -> None:
    endpoint.mode = mode
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        failing = injector(endpoint.url, LOCAL)
        try:
            with pytest.raises(error) as caught:
                await failing.apply(request())
        finally:
            await failing.aclose()
        assert caught.value.http_status == 502
        assert words in caught.value.message
        assert TokenEndpoint.CLIENT_SECRET not in caught.value.message

    asyncio.run(main())
    assert TokenEndpoint.CLIENT_SECRET not in caplog.text


def test_token_endpoint_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}/token"

    async def main() -> None:
        unreachable = injector(url, LOCAL)
        try:
            with pytest.raises(UpstreamUnavailable, match="cannot get an access token from"):
                await unreachable.apply(request())
        finally:
            await unreachable.aclose()

    asyncio.run(main())


def test_a_failed_refresh_keeps_the_token_until_it_expires(
    endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    endpoint.expires_in = 100  # refreshed from 70 s (a 30 s margin), expired at 100 s

    async def main() -> None:
        resilient = injector(endpoint.url, LOCAL, clock=clock)
        try:
            token = bearer(await resilient.apply(request()))
            endpoint.mode = "unavailable"
            clock.advance(80)
            assert bearer(await resilient.apply(request())) == token
            await logged(caplog, "token refresh failed")
            assert "answered HTTP 503" in caplog.text
            assert resilient.fetches == 2
            # Not asked again with every request while it fails; again after a pause.
            for _ in range(5):
                assert bearer(await resilient.apply(request())) == token
            assert resilient.fetches == 2
            clock.advance(RETRY_AFTER_FAILURE)
            assert bearer(await resilient.apply(request())) == token
            assert resilient.fetches == 3
            clock.advance(30)  # expired: now the failure is the request's
            with pytest.raises(UpstreamUnavailable, match="answered HTTP 503"):
                await resilient.apply(request())
            endpoint.mode = "ok"
            assert bearer(await resilient.apply(request())) != token
        finally:
            await resilient.aclose()

    asyncio.run(main())
    assert TokenEndpoint.CLIENT_SECRET not in caplog.text


def test_a_slow_refresh_holds_no_request(endpoint: TokenEndpoint) -> None:
    clock = Clock()

    async def main() -> None:
        timely = injector(endpoint.url, LOCAL, clock=clock)
        try:
            token = bearer(await timely.apply(request()))
            endpoint.delay = 1.0
            clock.advance(50)  # inside the margin of a 60 s token
            started = time.monotonic()
            for _ in range(10):
                assert bearer(await timely.apply(request())) == token
            assert time.monotonic() - started < 0.5
            assert timely.fetches == 2  # one refresh, in the background
            assert await next_token(timely, token) != token
        finally:
            await timely.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("expires_in", "cached_for"),
    [
        (None, 300.0),  # no expires_in: the default lifetime, less the margin
        ("120", 120.0),  # a string, as some servers send it
        (4, 4.0),  # short-lived: the margin is at most half the lifetime
        (-5, 300.0),  # nonsense: the default
    ],
)
def test_lifetime_from_the_response(
    endpoint: TokenEndpoint, expires_in: Any, cached_for: float
) -> None:
    clock = Clock()
    if expires_in is None:
        endpoint.mode = "no_expiry"
    else:
        endpoint.expires_in = expires_in
    margin = min(EXPIRY_MARGIN, cached_for / 2)

    async def main() -> None:
        timed = injector(endpoint.url, LOCAL, clock=clock)
        try:
            first = bearer(await timed.apply(request()))
            clock.advance(cached_for - margin - 0.5)
            assert bearer(await timed.apply(request())) == first
            assert timed.fetches == 1
            clock.advance(1)  # refresh due
            assert bearer(await timed.apply(request())) == first
            assert timed.fetches == 2
            assert await next_token(timed, first) != first
        finally:
            await timed.aclose()

    asyncio.run(main())


def test_scope_and_audience_are_sent(endpoint: TokenEndpoint) -> None:
    seen: list[dict[str, list[str]]] = []
    answer = endpoint.answer

    def recording(headers: Any, body: bytes) -> tuple[int, bytes]:
        seen.append(parse_qs(body.decode()))
        return answer(headers, body)

    endpoint.answer = recording  # type: ignore[method-assign]

    async def main() -> None:
        scoped = injector(endpoint.url, LOCAL, scope="read write", audience="https://api.example")
        try:
            await scoped.apply(request())
        finally:
            await scoped.aclose()

    asyncio.run(main())
    assert seen == [
        {
            "grant_type": ["client_credentials"],
            "scope": ["read write"],
            "audience": ["https://api.example"],
        }
    ]


def test_both_client_authentication_methods(endpoint: TokenEndpoint) -> None:
    async def main() -> None:
        for method in ("client_secret_basic", "client_secret_post"):
            client = Client(LOCAL.client_id, client_secret=LOCAL.client_secret, auth_method=method)
            authenticated = injector(endpoint.url, client)
            try:
                assert bearer(await authenticated.apply(request())).startswith("local-token-")
            finally:
                await authenticated.aclose()

    asyncio.run(main())
    assert endpoint.methods == ["client_secret_basic", "client_secret_post"]
