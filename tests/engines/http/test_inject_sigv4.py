"""AWS SigV4 injection against a real AWS stand-in: moto in server mode, signature checking on.

Every request below is built the way the HTTP engine builds it (no AWS credential from the
caller), signed by :class:`AwsSigV4Injector`, and sent with httpx exactly as ``apply`` returned
it. moto recomputes each signature from the bytes it received with the IAM user's real secret,
so an accepted request proves a correct signature, and a connection configured with a wrong
secret must be refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import pytest

from callgate.config.connections import AwsSigV4Config, ConnectionConfig
from callgate.engines.http.inject import SECRET_REFRESH_SECONDS, Outgoing, build_injector
from callgate.engines.http.sigv4 import AwsSigV4Injector, canonical_url
from callgate.errors import InternalError, UpstreamAuthFailed
from tests.identity_oidc.provider import require_servers
from tests.support.moto import ACCOUNT_ID, REGION, AwsKey, MotoServer, MotoUnavailable

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        server.start()
    except MotoUnavailable as exc:
        if require_servers():
            pytest.fail(f"{exc} (servers are required: CI/CALLGATE_REQUIRE_SERVERS is set)")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def key_of(moto: MotoServer) -> AwsKey:
    assert moto.key is not None
    return moto.key


def signer(
    moto: MotoServer,
    service: str = "s3",
    *,
    secret: str | None = None,
    access_key_id: str | None = None,
    session_token: str | None = None,
) -> AwsSigV4Injector:
    key = key_of(moto)
    settings: dict[str, Any] = {
        "service": service,
        "region": REGION,
        "access_key_id": access_key_id or key.access_key_id,
        "secret_access_key": secret if secret is not None else key.secret_access_key,
    }
    if session_token is not None:
        settings["session_token"] = session_token
    return AwsSigV4Injector("aws", AwsSigV4Config.model_validate(settings))


def outgoing(
    moto: MotoServer,
    method: str,
    path: str,
    body: bytes | None = b"",
    *,
    host: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    length: int | None = None,
) -> Outgoing:
    """A request as the engine hands it over: Host set, no caller credential."""
    sent = [("Host", host or moto.host), ("User-Agent", "callgate-test"), *headers]
    size = len(body) if body is not None else length
    if size:
        sent.append(("Content-Length", str(size)))
    return Outgoing(method, moto.endpoint + path, sent, body, size)


async def send(
    client: httpx.AsyncClient, req: Outgoing, stream: bytes | None = None
) -> httpx.Response:
    """Send ``req`` as signed; a ``None`` body is streamed from ``stream`` in chunks."""
    content: bytes | AsyncIterator[bytes]
    if req.body is not None:
        content = req.body
    else:
        data = stream or b""

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), CHUNK):
                yield data[start : start + CHUNK]
                await asyncio.sleep(0)

        content = chunks()
    return await client.request(req.method, req.url, headers=req.headers, content=content)


async def signed(
    client: httpx.AsyncClient,
    injector: AwsSigV4Injector,
    req: Outgoing,
    stream: bytes | None = None,
) -> httpx.Response:
    return await send(client, await injector.apply(req), stream)


def bucket_name() -> str:
    return f"cg-{secrets.token_hex(6)}"


def aws_error(response: httpx.Response) -> str:
    found = re.search(r"<Code>([^<]+)</Code>", response.text)
    return found.group(1) if found else f"(no code: {response.status_code} {response.text[:200]})"


def header(req: Outgoing, name: str) -> list[str]:
    return [v for n, v in req.headers if n.lower() == name.lower()]


# --- S3 ----------------------------------------------------------------------------------------


def test_s3_path_style_create_put_get_list(moto: MotoServer) -> None:
    bucket = bucket_name()
    # Characters AWS encodes in a canonical URI: a key with them is only accepted if the URL
    # sent is the URL signed.
    key = "reports/2024 Q1/sales+tax (final)&more~v1.csv"
    body = b"id,amount\n1,10\n"

    async def main() -> None:
        s3 = signer(moto)
        async with httpx.AsyncClient() as client:
            created = await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}"))
            assert created.status_code == 200, created.text
            put = await signed(
                client,
                s3,
                outgoing(
                    moto,
                    "PUT",
                    f"/{bucket}/{quote(key)}",
                    body,
                    headers=[("Content-Type", "text/csv"), ("x-amz-meta-owner", "billing")],
                ),
            )
            assert put.status_code == 200, put.text
            got = await signed(client, s3, outgoing(moto, "GET", f"/{bucket}/{quote(key)}"))
            assert got.status_code == 200, got.text
            assert got.content == body
            assert got.headers["x-amz-meta-owner"] == "billing"
            # A query with a space written as "+" and a "/": both re-encoded before signing.
            listed = await signed(
                client,
                s3,
                outgoing(moto, "GET", f"/{bucket}?list-type=2&prefix=reports/2024+Q1/"),
            )
            assert listed.status_code == 200, listed.text
            assert f"<Key>{key.replace('&', '&amp;')}</Key>" in listed.text
            buckets = await signed(client, s3, outgoing(moto, "GET", "/"))
            assert buckets.status_code == 200, buckets.text
            assert f"<Name>{bucket}</Name>" in buckets.text

    asyncio.run(main())


def test_s3_virtual_host_style(moto: MotoServer) -> None:
    bucket = bucket_name()
    aws_host = f"{bucket}.s3.{REGION}.amazonaws.com"
    custom_host = f"{bucket}.s3.storage.example"  # an S3-compatible service's own domain

    async def main() -> None:
        s3 = signer(moto)
        async with httpx.AsyncClient() as client:
            created = await signed(client, s3, outgoing(moto, "PUT", "/", host=aws_host))
            assert created.status_code == 200, created.text
            for host, name in ((aws_host, "aws.txt"), (custom_host, "custom.txt")):
                req = outgoing(moto, "PUT", f"/{name}", name.encode(), host=host)
                put = await signed(client, s3, req)
                assert put.status_code == 200, (host, put.text)
                got = await signed(client, s3, outgoing(moto, "GET", f"/{name}", host=host))
                assert got.status_code == 200, (host, got.text)
                assert got.content == name.encode()
            listed = await signed(client, s3, outgoing(moto, "GET", "/?list-type=2", host=aws_host))
            assert listed.status_code == 200, listed.text
            assert "<Key>aws.txt</Key>" in listed.text and "<Key>custom.txt</Key>" in listed.text
            # The same objects seen path-style: one bucket, two addressing styles.
            path_style = await signed(client, s3, outgoing(moto, "GET", f"/{bucket}/aws.txt"))
            assert path_style.content == b"aws.txt"

    asyncio.run(main())


def test_s3_streamed_upload_is_signed_unsigned_payload(moto: MotoServer) -> None:
    bucket = bucket_name()
    data = secrets.token_bytes(3 * CHUNK + 123)

    async def main() -> None:
        s3 = signer(moto)
        assert s3.needs_body is False
        async with httpx.AsyncClient() as client:
            await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}"))
            req = await s3.apply(
                outgoing(moto, "PUT", f"/{bucket}/stream.bin", None, length=len(data))
            )
            assert req.body is None
            assert header(req, "X-Amz-Content-SHA256") == ["UNSIGNED-PAYLOAD"]
            put = await send(client, req, data)
            assert put.status_code == 200, put.text
            got = await signed(client, s3, outgoing(moto, "GET", f"/{bucket}/stream.bin"))
            assert got.status_code == 200, got.text
            assert got.content == data
            # A buffered body is hashed instead: the signature then covers the bytes.
            buffered = await s3.apply(outgoing(moto, "PUT", f"/{bucket}/b.bin", b"abc"))
            assert header(buffered, "X-Amz-Content-SHA256") == [
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            ]

    asyncio.run(main())


def test_s3_large_buffered_body_is_hashed_off_the_loop(moto: MotoServer) -> None:
    bucket = bucket_name()
    data = secrets.token_bytes(2 * 1024 * 1024)

    async def main() -> None:
        s3 = signer(moto)
        async with httpx.AsyncClient() as client:
            await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}"))
            put = await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}/big", data))
            assert put.status_code == 200, put.text
            got = await signed(client, s3, outgoing(moto, "GET", f"/{bucket}/big"))
            assert got.content == data

    asyncio.run(main())


def test_caller_sent_aws_credentials_are_replaced(moto: MotoServer) -> None:
    """A caller's own (forged) signature, token and presigned parameters never reach AWS."""
    bucket = bucket_name()
    forged = [
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAFORGED/20200101/x/s3/aws4_request"),
        ("X-Amz-Date", "20200101T000000Z"),
        ("x-amz-security-token", "caller-token"),
        ("X-Amz-Content-Sha256", "0" * 64),
    ]
    presigned = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAFORGED%2F20200101&"
        "X-Amz-Signature=deadbeef&x-amz-expires=60"
    )

    async def main() -> None:
        s3 = signer(moto)
        async with httpx.AsyncClient() as client:
            await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}"))
            req = await s3.apply(
                outgoing(moto, "PUT", f"/{bucket}/k?{presigned}", b"v", headers=forged)
            )
            assert "x-amz-" not in urlsplit(req.url).query.lower()
            assert header(req, "Authorization")[0].startswith(
                f"AWS4-HMAC-SHA256 Credential={key_of(moto).access_key_id}/"
            )
            for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
                assert len(header(req, name)) == 1, name
            assert header(req, "X-Amz-Security-Token") == []
            put = await send(client, req)
            assert put.status_code == 200, put.text

    asyncio.run(main())


def test_tampering_after_signing_is_refused(moto: MotoServer) -> None:
    """The signature covers the path, the query and the x-amz-* headers."""
    bucket = bucket_name()

    async def main() -> None:
        s3 = signer(moto)
        async with httpx.AsyncClient() as client:
            await signed(client, s3, outgoing(moto, "PUT", f"/{bucket}"))
            base = await s3.apply(
                outgoing(moto, "PUT", f"/{bucket}/k", b"v", headers=[("x-amz-meta-a", "1")])
            )
            assert (await send(client, base)).status_code == 200
            tampered = [
                Outgoing(base.method, base.url + "2", base.headers, base.body, base.body_length),
                Outgoing(
                    base.method,
                    base.url,
                    [(n, "2" if n == "x-amz-meta-a" else v) for n, v in base.headers],
                    base.body,
                    base.body_length,
                ),
                Outgoing(base.method, base.url + "?acl", base.headers, base.body, 1),
            ]
            for req in tampered:
                response = await send(client, req)
                assert response.status_code == 403, (req.url, response.text)
                assert aws_error(response) == "SignatureDoesNotMatch"

    asyncio.run(main())


def test_wrong_secret_is_refused_by_s3(moto: MotoServer) -> None:
    async def main() -> None:
        wrong = signer(moto, secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        unknown = signer(moto, access_key_id="AKIAIOSFODNN7EXAMPLE")
        async with httpx.AsyncClient() as client:
            refused = await signed(client, wrong, outgoing(moto, "GET", "/"))
            assert refused.status_code == 403
            assert aws_error(refused) == "SignatureDoesNotMatch"
            stranger = await signed(client, unknown, outgoing(moto, "GET", "/"))
            assert stranger.status_code == 403
            assert aws_error(stranger) == "InvalidAccessKeyId"

    asyncio.run(main())


# --- STS (a service that needs the payload hash) ---------------------------------------------


def sts_call(moto: MotoServer, action: str, **params: str) -> Outgoing:
    body = urlencode({"Action": action, "Version": "2011-06-15", **params}).encode()
    return outgoing(
        moto,
        "POST",
        "/",
        body,
        headers=[("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
    )


def test_sts_get_caller_identity(moto: MotoServer) -> None:
    async def main() -> None:
        sts = signer(moto, "sts")
        assert sts.needs_body is True
        async with httpx.AsyncClient() as client:
            posted = await signed(client, sts, sts_call(moto, "GetCallerIdentity"))
            assert posted.status_code == 200, posted.text
            assert f"<Arn>{key_of(moto).arn}</Arn>" in posted.text
            assert f"<Account>{ACCOUNT_ID}</Account>" in posted.text

    asyncio.run(main())


def test_wrong_secret_is_refused_by_sts(moto: MotoServer) -> None:
    async def main() -> None:
        wrong = signer(moto, "sts", secret="not-the-secret")
        unknown = signer(moto, "sts", access_key_id="AKIAIOSFODNN7EXAMPLE")
        async with httpx.AsyncClient() as client:
            refused = await signed(client, wrong, sts_call(moto, "GetCallerIdentity"))
            assert refused.status_code == 403
            assert aws_error(refused) == "SignatureDoesNotMatch"
            stranger = await signed(client, unknown, sts_call(moto, "GetCallerIdentity"))
            assert stranger.status_code == 403
            assert aws_error(stranger) == "InvalidClientTokenId"

    asyncio.run(main())


def test_streaming_body_for_a_service_that_signs_the_payload_is_a_bug(moto: MotoServer) -> None:
    async def main() -> None:
        sts = signer(moto, "sts")
        with pytest.raises(InternalError, match="whole body is needed"):
            await sts.apply(outgoing(moto, "POST", "/", None, length=10))
        # No body at all is fine: it is hashed as the empty string.
        empty = await sts.apply(outgoing(moto, "GET", "/", None, length=0))
        assert header(empty, "Authorization")

    asyncio.run(main())


def test_session_token_from_an_assumed_role(moto: MotoServer) -> None:
    """Temporary credentials (AssumeRole) sign with X-Amz-Security-Token."""
    role = f"cg-role-{secrets.token_hex(4)}"
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": key_of(moto).arn},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )

    def iam_call(action: str, **params: str) -> Outgoing:
        body = urlencode({"Action": action, "Version": "2010-05-08", **params}).encode()
        content_type = ("Content-Type", "application/x-www-form-urlencoded")
        return outgoing(moto, "POST", "/", body, headers=[content_type])

    async def main() -> None:
        iam = signer(moto, "iam")
        sts = signer(moto, "sts")
        async with httpx.AsyncClient() as client:
            made = await signed(
                client, iam, iam_call("CreateRole", RoleName=role, AssumeRolePolicyDocument=trust)
            )
            assert made.status_code == 200, made.text
            role_arn = re.search(r"<Arn>([^<]+)</Arn>", made.text)
            assert role_arn is not None
            policy = json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            )
            allowed = await signed(
                client,
                iam,
                iam_call("PutRolePolicy", RoleName=role, PolicyName="all", PolicyDocument=policy),
            )
            assert allowed.status_code == 200, allowed.text
            assumed = await signed(
                client,
                sts,
                sts_call(moto, "AssumeRole", RoleArn=role_arn.group(1), RoleSessionName="cg"),
            )
            assert assumed.status_code == 200, assumed.text
            fields = {
                name: re.search(rf"<{name}>([^<]+)</{name}>", assumed.text)
                for name in ("AccessKeyId", "SecretAccessKey", "SessionToken")
            }
            access, secret, token = (m.group(1) for m in fields.values() if m is not None)

            temporary = signer(
                moto, "sts", access_key_id=access, secret=secret, session_token=token
            )
            req = await temporary.apply(sts_call(moto, "GetCallerIdentity"))
            assert header(req, "X-Amz-Security-Token") == [token]
            who = await send(client, req)
            assert who.status_code == 200, who.text
            assert f"assumed-role/{role}/cg" in who.text

            bad_token = signer(
                moto, "sts", access_key_id=access, secret=secret, session_token=token[:-4] + "AAAA"
            )
            refused = await signed(client, bad_token, sts_call(moto, "GetCallerIdentity"))
            assert refused.status_code == 403, refused.text

            temporary_s3 = signer(moto, access_key_id=access, secret=secret, session_token=token)
            listed = await signed(client, temporary_s3, outgoing(moto, "GET", "/"))
            assert listed.status_code == 200, listed.text

    asyncio.run(main())


# --- config, secrets and logs -----------------------------------------------------------------


def test_built_from_config_with_secret_references(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of(moto)
    monkeypatch.setenv("CG_TEST_AWS_KEY_ID", key.access_key_id)
    monkeypatch.setenv("CG_TEST_AWS_SECRET", key.secret_access_key)
    conn = ConnectionConfig.model_validate(
        {
            "name": "aws-sts",
            "protocol": "http",
            "upstream": {"url": moto.endpoint},
            "inject": {
                "aws_sigv4": {
                    "service": "sts",
                    "region": REGION,
                    "access_key_id": "env:CG_TEST_AWS_KEY_ID",
                    "secret_access_key": "env:CG_TEST_AWS_SECRET",
                }
            },
        }
    )
    caplog.set_level(logging.DEBUG)  # botocore, httpx and httpcore at their most talkative

    now = [1000.0]

    async def main() -> None:
        injector = build_injector(conn, clock=lambda: now[0])
        assert isinstance(injector, AwsSigV4Injector)
        assert injector.secret_values() == (key.secret_access_key,)
        async with httpx.AsyncClient() as client:
            who = await signed(client, injector, sts_call(moto, "GetCallerIdentity"))
            assert who.status_code == 200, who.text
        await injector.aclose()

        monkeypatch.delenv("CG_TEST_AWS_SECRET")
        await injector.apply(sts_call(moto, "GetCallerIdentity"))  # resolved keys are reused
        now[0] += SECRET_REFRESH_SECONDS  # until they are read again
        with pytest.raises(UpstreamAuthFailed) as caught:
            await injector.apply(sts_call(moto, "GetCallerIdentity"))
        assert "env:CG_TEST_AWS_SECRET" in caught.value.message

    asyncio.run(main())
    assert key.secret_access_key not in caplog.text


def test_session_token_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """botocore logs the canonical request (with X-Amz-Security-Token) at DEBUG: not ours."""
    token = "FQoGZXIvYXdzE" + secrets.token_urlsafe(40)
    config = AwsSigV4Config.model_validate(
        {
            "service": "s3",
            "region": REGION,
            "access_key_id": "ASIAEXAMPLEKEY",
            "secret_access_key": "secret-" + secrets.token_hex(8),
            "session_token": token,
        }
    )
    caplog.set_level(logging.DEBUG)
    injector = AwsSigV4Injector("aws", config)
    req = Outgoing("GET", "https://b.s3.amazonaws.com/k", [("Host", "b.s3.amazonaws.com")], b"", 0)
    signed_req = asyncio.run(injector.apply(req))
    assert header(signed_req, "X-Amz-Security-Token") == [token]
    assert token not in caplog.text
    assert set(injector.secret_values()) == {token, config.secret_access_key.resolve()}


# --- canonical URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("https://h/", "https://h/"),
        ("https://h", "https://h/"),
        ("https://h/b/a b+c(d)", "https://h/b/a%20b%2Bc%28d%29"),
        ("https://h/b/a%20b%2Fc", "https://h/b/a%20b%2Fc"),
        ("https://h/b//x/./y", "https://h/b//x/./y"),
        ("https://h/b/%C3%A9t%C3%A9", "https://h/b/%C3%A9t%C3%A9"),
        ("https://h/b/été", "https://h/b/%C3%A9t%C3%A9"),
        ("https://h/b?uploads", "https://h/b?uploads"),
        ("https://h/b?prefix=a+b/c&delimiter=/", "https://h/b?prefix=a%20b%2Fc&delimiter=%2F"),
        ("https://h/b?a=%2B&&b=", "https://h/b?a=%2B&b="),
        ("https://h/b?X-Amz-Signature=x&y=1&x-amz-credential=z", "https://h/b?y=1"),
        ("https://h:8443/b#frag", "https://h:8443/b"),
    ],
)
def test_canonical_url(given: str, sent: str) -> None:
    assert canonical_url(given) == sent
