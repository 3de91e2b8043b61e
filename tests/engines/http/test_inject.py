"""Static credential injection (headers, basic, query) and choosing an injector from config."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import pytest

from callgate.config.connections import ConnectionConfig
from callgate.engines.http.inject import (
    SECRET_REFRESH_SECONDS,
    BasicInjector,
    HeaderInjector,
    Injector,
    Outgoing,
    QueryInjector,
    build_injector,
    set_query_params,
)
from callgate.engines.http.oauth2 import OAuth2ClientCredentialsInjector
from callgate.engines.http.sigv4 import AwsSigV4Injector
from callgate.errors import UpstreamAuthFailed

TOKEN = "tok_live_4f9a+/=&x"


def connection(inject: dict[str, Any] | None, tmp_path: Path | None = None) -> ConnectionConfig:
    data: dict[str, Any] = {
        "name": "payments",
        "protocol": "http",
        "upstream": {"url": "https://api.payments.example"},
    }
    if inject is not None:
        data["inject"] = inject
    context = {"base_dir": tmp_path} if tmp_path is not None else None
    return ConnectionConfig.model_validate(data, context=context)


def built(inject: dict[str, Any], tmp_path: Path | None = None) -> Injector:
    injector = build_injector(connection(inject, tmp_path))
    assert injector is not None
    return injector


def request(
    url: str = "https://api.payments.example/v1/charges?limit=10", *headers: Any
) -> Outgoing:
    return Outgoing(
        "POST",
        url,
        [("Host", "api.payments.example"), ("Content-Type", "application/json"), *headers],
        b'{"amount": 100}',
        15,
    )


def apply(injector: Injector, req: Outgoing) -> Outgoing:
    return asyncio.run(injector.apply(req))


# --- choosing ------------------------------------------------------------------------------------


def test_no_inject_no_injector() -> None:
    assert build_injector(connection(None)) is None


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        ({"headers": {"X-Api-Key": "k"}}, HeaderInjector),
        ({"basic": {"user": "u", "password": "p"}}, BasicInjector),
        ({"query": {"api_key": "k"}}, QueryInjector),
        (
            {
                "oauth2_client_credentials": {
                    "token_url": "https://idp.example/token",
                    "client_id": "c",
                    "client_secret": "s",
                }
            },
            OAuth2ClientCredentialsInjector,
        ),
        (
            {
                "aws_sigv4": {
                    "service": "s3",
                    "region": "eu-west-1",
                    "access_key_id": "AKIA",
                    "secret_access_key": "s",
                }
            },
            AwsSigV4Injector,
        ),
    ],
)
def test_one_injector_per_kind(inject: dict[str, Any], kind: type[Any]) -> None:
    injector = built(inject)
    assert isinstance(injector, kind)
    assert injector.needs_body is False
    asyncio.run(injector.aclose())


@pytest.mark.parametrize(
    "inject",
    [
        {"headers": {"X-Api-Key": "k-1234567890", "X-Tenant": "acme"}},
        {"basic": {"user": "u", "password": "p-1234567890"}},
        {"query": {"api_key": "k-1234567890"}},
    ],
)
def test_static_kinds_apply_without_waiting(inject: dict[str, Any]) -> None:
    injector = built(inject)
    now = injector.apply_now(request())
    assert now is not None
    assert now == apply(injector, request())


def test_kinds_that_may_wait_say_so() -> None:
    oauth = built(
        {
            "oauth2_client_credentials": {
                "token_url": "https://idp.example/token",
                "client_id": "c",
                "client_secret": "s",
            }
        }
    )
    sigv4 = built(
        {
            "aws_sigv4": {
                "service": "s3",
                "region": "eu-west-1",
                "access_key_id": "AKIA",
                "secret_access_key": "s",
            }
        }
    )
    assert oauth.apply_now(request()) is None
    assert sigv4.apply_now(request()) is None
    asyncio.run(oauth.aclose())


def test_nothing_is_resolved_at_build_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CG_TEST_UNSET", raising=False)
    injector = built({"headers": {"X-Api-Key": "env:CG_TEST_UNSET"}})
    assert injector.secret_values() == ()  # nothing to leak when nothing can be read
    with pytest.raises(UpstreamAuthFailed) as caught:
        apply(injector, request())
    assert caught.value.http_status == 502
    assert caught.value.message == (
        "connection 'payments': callgate's credential for the upstream cannot be read "
        "(inject.headers.X-Api-Key: env:CG_TEST_UNSET: environment variable is not set)"
    )


# --- headers -------------------------------------------------------------------------------------


def test_header_templates_replace_the_callers_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_TOKEN", TOKEN)
    injector = built(
        {
            "headers": {
                "Authorization": "Bearer ${env:CG_TEST_TOKEN}",
                "X-Tenant": "acme",
            }
        }
    )
    req = request(
        "https://api.payments.example/v1/charges",
        ("authorization", "Bearer caller"),
        ("X-TENANT", "evil"),
        ("X-Request-Id", "r1"),
    )
    sent = apply(injector, req)
    assert sent.headers == [
        ("Host", "api.payments.example"),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "r1"),
        ("Authorization", f"Bearer {TOKEN}"),
        ("X-Tenant", "acme"),
    ]
    assert (sent.method, sent.url, sent.body, sent.body_length) == (
        req.method,
        req.url,
        req.body,
        req.body_length,
    )
    assert req.headers[2] == ("authorization", "Bearer caller")  # the input is not changed
    # The token alone, not "Bearer <token>": a leak in any other framing is still found.
    assert injector.secret_values() == (TOKEN, "acme")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked(inject: dict[str, Any], clock: FakeClock, tmp_path: Path | None = None) -> Injector:
    injector = build_injector(connection(inject, tmp_path), clock=clock)
    assert injector is not None
    return injector


def test_a_rotated_file_secret_is_used_once_the_refresh_interval_passed(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("first-key-value\n")
    clock = FakeClock()
    injector = clocked({"headers": {"X-Api-Key": "file:api-key"}}, clock, tmp_path)
    assert ("X-Api-Key", "first-key-value") in apply(injector, request()).headers
    key.write_text("rotated-key-value\n")
    # Within the interval the secret is not read again: still the first value.
    clock.now += SECRET_REFRESH_SECONDS * 0.9
    assert ("X-Api-Key", "first-key-value") in apply(injector, request()).headers
    clock.now += SECRET_REFRESH_SECONDS * 0.1
    assert ("X-Api-Key", "rotated-key-value") in apply(injector, request()).headers
    # The value it replaced is still kept from callers (a response to an earlier request).
    assert injector.secret_values() == ("rotated-key-value", "first-key-value")
    key.write_text("third-key-value\n")
    clock.now += SECRET_REFRESH_SECONDS
    assert ("X-Api-Key", "third-key-value") in apply(injector, request()).headers
    assert injector.secret_values() == ("third-key-value", "rotated-key-value")


def test_a_secret_is_read_again_when_the_clock_goes_back(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("first-key-value\n")
    clock = FakeClock()
    injector = clocked({"headers": {"X-Api-Key": "file:api-key"}}, clock, tmp_path)
    apply(injector, request())
    key.write_text("rotated-key-value\n")
    clock.now -= 0.001
    assert ("X-Api-Key", "rotated-key-value") in apply(injector, request()).headers


def test_a_secret_that_cannot_be_read_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CG_TEST_LATE", raising=False)
    clock = FakeClock()
    injector = clocked({"headers": {"X-Api-Key": "env:CG_TEST_LATE"}}, clock)
    with pytest.raises(UpstreamAuthFailed):
        apply(injector, request())
    monkeypatch.setenv("CG_TEST_LATE", TOKEN)
    # Same instant: the failure was not remembered, the next request reads the secret.
    assert ("X-Api-Key", TOKEN) in apply(injector, request()).headers


def test_a_secret_that_disappears_fails_requests_after_the_interval(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("first-key-value\n")
    clock = FakeClock()
    injector = clocked({"headers": {"X-Api-Key": "file:api-key"}}, clock, tmp_path)
    apply(injector, request())
    key.unlink()
    clock.now += SECRET_REFRESH_SECONDS
    with pytest.raises(UpstreamAuthFailed) as caught:
        apply(injector, request())
    assert caught.value.message.endswith(f"file:{key}: file does not exist)")
    assert "first-key-value" not in caught.value.message


def test_basic_and_query_secrets_rotate_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_PASSWORD", "first-password")
    monkeypatch.setenv("CG_TEST_TOKEN", "first-token-value")
    clock = FakeClock()
    basic = clocked({"basic": {"user": "callgate", "password": "env:CG_TEST_PASSWORD"}}, clock)
    query = clocked({"query": {"api_key": "env:CG_TEST_TOKEN"}}, clock)
    apply(basic, request())
    apply(query, request())
    monkeypatch.setenv("CG_TEST_PASSWORD", "second-password")
    monkeypatch.setenv("CG_TEST_TOKEN", "second-token-value")
    clock.now += SECRET_REFRESH_SECONDS
    encoded = base64.b64encode(b"callgate:second-password").decode()
    assert ("Authorization", f"Basic {encoded}") in apply(basic, request()).headers
    assert apply(query, request()).url.endswith("&api_key=second-token-value")
    assert "second-password" in basic.secret_values()
    assert "first-password" in basic.secret_values()


@pytest.mark.parametrize("bad", ["line\r\nX-Injected: 1", "esc\x1b[0m", "lf\nonly"])
def test_a_header_value_with_a_line_break_is_refused(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_BAD", bad)
    injector = built({"headers": {"X-Api-Key": "env:CG_TEST_BAD"}})
    with pytest.raises(UpstreamAuthFailed, match="control character") as caught:
        apply(injector, request())
    assert bad not in str(caught.value)


# --- basic ---------------------------------------------------------------------------------------


def test_basic_replaces_the_callers_authorization() -> None:
    injector = built({"basic": {"user": "app", "password": "pä:ss word"}})
    sent = apply(injector, request("https://api.payments.example/", ("AUTHORIZATION", "x")))
    expected = base64.b64encode("app:pä:ss word".encode()).decode()
    assert [v for n, v in sent.headers if n.lower() == "authorization"] == [f"Basic {expected}"]
    # The password and its base64 form; the user name identifies and is not a secret.
    assert injector.secret_values() == ("pä:ss word", expected)


def test_basic_user_with_a_colon_is_refused() -> None:
    injector = built({"basic": {"user": "a:b", "password": "secret-pw"}})
    with pytest.raises(UpstreamAuthFailed, match="contains ':'") as caught:
        apply(injector, request())
    assert "secret-pw" not in str(caught.value)


# --- query ---------------------------------------------------------------------------------------


def test_query_parameters_are_added_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_TOKEN", TOKEN)
    injector = built({"query": {"api_key": "env:CG_TEST_TOKEN", "v": "2 beta"}})
    sent = apply(injector, request())
    assert sent.url == (
        "https://api.payments.example/v1/charges?limit=10&api_key=tok_live_4f9a%2B%2F%3D%26x&v=2%20beta"
    )
    assert sent.headers == request().headers
    assert set(injector.secret_values()) == {
        TOKEN,
        "tok_live_4f9a%2B%2F%3D%26x",
        "2 beta",
        "2%20beta",
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p", "https://h/p?api_key=S"),
        ("https://h/p?", "https://h/p?api_key=S"),
        ("https://h/p?api_key=caller", "https://h/p?api_key=S"),
        ("https://h/p?api%5Fkey=caller&a=1", "https://h/p?a=1&api_key=S"),
        ("https://h/p?a=1&api_key=x&api_key=y&b", "https://h/p?a=1&b&api_key=S"),
        # Other parameters are kept byte for byte, whatever their encoding.
        ("https://h/p?q=a+b&r=%7e&s", "https://h/p?q=a+b&r=%7e&s&api_key=S"),
        ("https://h/p?api_keys=1", "https://h/p?api_keys=1&api_key=S"),
        ("https://h/p?x=1#frag", "https://h/p?x=1&api_key=S#frag"),
    ],
)
def test_set_query_params(url: str, expected: str) -> None:
    assert set_query_params(url, [("api_key", "S")]) == expected


# --- logs ----------------------------------------------------------------------------------------


def test_static_kinds_log_nothing_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CG_TEST_TOKEN", TOKEN)
    injectors = [
        built({"headers": {"Authorization": "Bearer ${env:CG_TEST_TOKEN}"}}),
        built({"basic": {"user": "app", "password": "env:CG_TEST_TOKEN"}}),
        built({"query": {"key": "env:CG_TEST_TOKEN"}}),
    ]
    for injector in injectors:
        apply(injector, request())
        assert TOKEN in injector.secret_values()
    assert TOKEN not in caplog.text
