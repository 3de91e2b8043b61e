"""AWS through the running gateway: a caller holding no AWS keys uses S3 and STS; callgate signs
each request with the connection's keys (SigV4), against moto with signature checks on. A
connection configured with a wrong secret is refused by moto, so the signatures are real."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.engines.http.conftest import MakeThrough, Through
from tests.engines.http.test_inject_sigv4 import moto  # noqa: F401  (the module's fixture)
from tests.support.moto import MotoServer

pytestmark = pytest.mark.integration


def aws_gateway(make_through: MakeThrough, server: MotoServer, *, secret: str) -> Through:
    assert server.key is not None
    keys = {"access_key_id": "env:AWS_TEST_KEY_ID", "secret_access_key": "env:AWS_TEST_SECRET"}
    connections = [
        {
            "name": name,
            "protocol": "http",
            "upstream": {"url": server.endpoint},
            "inject": {"aws_sigv4": {"service": name, "region": "us-east-1", **keys}},
        }
        for name in ("s3", "sts")
    ]
    policy = {
        "name": "functions use aws",
        "subjects": {"groups": ["apps"]},
        "connections": ["s3", "sts"],
        "rules": [{"allow": {}}],
    }
    env = {"AWS_TEST_KEY_ID": server.key.access_key_id, "AWS_TEST_SECRET": secret}
    return make_through({"connections": connections, "policies": [policy]}, env=env)


def test_s3_and_sts_through_callgate_with_no_keys_at_the_caller(
    make_through: MakeThrough,
    moto: MotoServer,  # noqa: F811
) -> None:
    assert moto.key is not None
    th = aws_gateway(make_through, moto, secret=moto.key.secret_access_key)
    with th.client() as c:
        assert c.put("/s3/cg-e2e-bucket").status_code == 200
        put = c.put("/s3/cg-e2e-bucket/reports/q1.txt", content=b"hello through callgate")
        assert put.status_code == 200, put.text
        got = c.get("/s3/cg-e2e-bucket/reports/q1.txt")
        assert got.status_code == 200 and got.content == b"hello through callgate"
        listed = c.get("/s3/cg-e2e-bucket", params={"list-type": "2", "prefix": "reports/"})
        assert listed.status_code == 200 and "<Key>reports/q1.txt</Key>" in listed.text
        who = c.post(
            "/sts/",
            content=b"Action=GetCallerIdentity&Version=2011-06-15",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert who.status_code == 200, who.text
        assert moto.key.arn in who.text
        for r in (put, got, listed, who):
            assert moto.key.secret_access_key not in r.text
    # the caller's own credential never reached AWS, and no secret is in the recording
    recorded = json.dumps([th.events(s["id"]) for s in th.sessions()])
    assert moto.key.secret_access_key not in recorded
    assert th.key not in recorded


def test_a_wrong_secret_is_refused_by_aws(
    make_through: MakeThrough,
    moto: MotoServer,  # noqa: F811
) -> None:
    th = aws_gateway(make_through, moto, secret="not-the-secret-" + "x" * 25)
    with th.client() as c:
        r: Any = c.get("/s3/cg-e2e-bucket/reports/q1.txt")
        assert r.status_code == 403
        assert "SignatureDoesNotMatch" in r.text
        who = c.post(
            "/sts/",
            content=b"Action=GetCallerIdentity&Version=2011-06-15",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert who.status_code == 403
