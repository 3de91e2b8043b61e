"""``callgate demo`` end to end: one run shows allow, block, approval, masking and audit.

The tour starts its own throwaway PostgreSQL cluster (initdb, pg_ctl) and talks to it with psql, so
these tests need the PostgreSQL server binaries; without them they skip (fail in CI).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from callgate.demo import DemoError, Upstream, _as_service_user, _pg_bin, demo_config
from tests.conftest import unavailable
from tests.support.gateway import GatewayError, callgate_exe

#: seconds the whole tour may take (it takes well under a minute on the development machine)
DEMO_TIMEOUT = 240


def test_config_renders_and_never_holds_the_upstream_password() -> None:
    with_password = Upstream("db.internal", 5433, "app user", "postgres", "s3cret")
    text = demo_config(with_password, "callgate_demo_abc123", 15432)
    cfg = yaml.safe_load(text)
    assert "s3cret" not in text
    assert cfg["connections"][0]["upstream"] == {
        "host": "db.internal",
        "port": 5433,
        "database": "callgate_demo_abc123",
        "user": "app user",
        "password": "env:DEMO_UPSTREAM_PASSWORD",
        "tls": "prefer",
    }
    assert cfg["listeners"][0]["bind"] == "127.0.0.1:15432"
    assert cfg["approvals"][0]["approvers"] == {"groups": ["dba"]}
    trust = demo_config(Upstream("127.0.0.1", 5432, "postgres", "postgres", None), "db", 1)
    assert "password" not in yaml.safe_load(trust)["connections"][0]["upstream"]


@pytest.fixture(scope="module")
def demo_output() -> str:
    try:
        for tool in ("initdb", "pg_ctl", "psql"):
            _pg_bin(tool)
        _as_service_user([])
        exe = callgate_exe()
    except (DemoError, GatewayError) as exc:
        unavailable(f"callgate demo: {exc}")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CALLGATE_DEMO_DSN", "CALLGATE_CONFIG", "CALLGATE_CREDENTIAL")
    }
    done = subprocess.run(
        [str(exe), "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return out


def _section(out: str, heading: str) -> str:
    start = out.index(f"── {heading}")
    end = out.find("\n── ", start + 1)
    return out[start : end if end != -1 else len(out)]


@pytest.mark.integration
def test_demo_walks_through_the_five_steps_in_order(demo_output: str) -> None:
    headings = [
        "1. Allow",
        "2. Block",
        "3. Approval",
        "4. Masking",
        "5. Audit",
    ]
    positions = [demo_output.index(f"── {h}") for h in headings]
    assert positions == sorted(positions)


@pytest.mark.integration
def test_allow_and_block(demo_output: str) -> None:
    allow = _section(demo_output, "1. Allow")
    assert "Ada Lovelace | 135.75" in allow
    assert "INSERT 0 1" in allow
    block = _section(demo_output, "2. Block")
    assert '-c "delete from orders"' in block
    assert re.search(
        r"ERROR:  42501: denied by policy 'functions use the shop' rule 2 "
        r"\(deny kinds update, delete where absent\)",
        block,
    )
    assert re.search(r"ERROR:  42501: denied by policy .* \(deny functions pg_read_file", block)
    assert re.search(r"count \n-------\n\s+5\n", block)  # the DELETE never reached the table
    assert "FATAL:  invalid credential" in block


@pytest.mark.integration
def test_held_update_is_approved_and_completes(demo_output: str) -> None:
    approval = _section(demo_output, "3. Approval")
    review = re.search(r"\$ callgate reviews approve (rv_\w+) --as \"\$DBA_KEY\"", approval)
    assert review, approval
    assert re.search(rf"{review.group(1)}\s+pending\s+invoice-fn\s+shop", approval)
    assert f"approved review {review.group(1)}" in approval
    assert approval.rstrip().endswith("UPDATE 1")


@pytest.mark.integration
def test_masking_for_the_function_and_not_for_the_exempt_group(demo_output: str) -> None:
    masking = _section(demo_output, "4. Masking")
    fn, support = masking.split('PGPASSWORD="$SUPPORT_KEY"')
    assert "***********.com" in fn and "ada@example.com" not in fn
    assert "pays by card [REDACTED]" in fn and "4111 1111 1111 1111" not in fn
    assert "ada@example.com" in support and "4111 1111 1111 1111" in support


@pytest.mark.integration
def test_audit_shows_the_sessions_and_verifies(demo_output: str) -> None:
    audit = _section(demo_output, "5. Audit")
    assert "$ callgate sessions list" in audit
    assert "review: update orders set amount = 130.50 where id = 1" in audit
    assert "query.masked" in audit and "email (public.customers.email): 3" in audit
    assert '"type":"review.approved","requester":"invoice-fn","by":"dba-alice"' in audit
    assert "$ callgate audit verify" in audit
    assert "verified: ok" in audit


@pytest.mark.integration
def test_no_secret_printed_and_nothing_left_behind(demo_output: str) -> None:
    # API keys only ever as their first 12 characters
    assert re.findall(r"cgk_[0-9A-Za-z]{9,}", demo_output) == []
    assert re.search(r"FN_KEY=cgk_[0-9A-Za-z]{8}…", demo_output)
    assert "BEGIN PRIVATE KEY" not in demo_output
    workdir = re.search(r"\(working in (\S+)\)", demo_output)
    assert workdir and not Path(workdir.group(1)).exists()
    for pattern in (
        r"PostgreSQL is up on 127\.0\.0\.1:(\d+)",
        r"callgate listens for PostgreSQL clients on 127\.0\.0\.1:(\d+)",
    ):
        port = re.search(pattern, demo_output)
        assert port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(port[1])), 1):
            pass
