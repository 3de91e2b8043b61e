"""``callgate reviews`` and ``callgate access`` (the sub-apps), in-process and as a separate
process approving a statement held by a running service (with the wake-up latency)."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml
from typer.testing import CliRunner

from callgate.approvals import ApprovalService, ReviewState
from callgate.cli import access, reviews
from callgate.identity import ApiKeys, secret_key_from_config
from callgate.store import SqliteStore
from tests.approvals.conftest import ALICE, base_config, make_config, run, running

runner = CliRunner()


def _setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    config_path = tmp_path / "callgate.yaml"
    config_path.write_text(yaml.safe_dump(base_config()))
    config = make_config(tmp_path)

    async def main() -> dict[str, str]:
        async with SqliteStore(tmp_path / "state.db") as store:
            keys = ApiKeys(store, secret_key_from_config(config))
            return {
                "alice": await keys.create_key("alice", ["functions"]),
                "mallory": await keys.create_key("mallory", ["functions"]),
                "dba": await keys.create_key("dba-one", ["dba"]),
            }

    return config_path, run(main)


def _request(tmp_path: Path, sql: str = "INSERT INTO orders VALUES (1)") -> str:
    async def main() -> str:
        async with running(tmp_path, start=False) as (service, _):
            review = await service.request(
                ALICE, connection="orders", statement_sql=sql, policy_version="v1"
            )
            return review.id

    return run(main)


def test_reviews_cli_list_approve_deny(tmp_path: Path) -> None:
    cfg, keys = _setup(tmp_path)
    rid = _request(tmp_path)
    rid2 = _request(tmp_path, "INSERT INTO orders VALUES (2)")

    result = runner.invoke(reviews.app, ["list", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert rid in result.stdout and "INSERT INTO orders VALUES (1)" in result.stdout

    result = runner.invoke(reviews.app, ["list", "-c", str(cfg), "--as", keys["mallory"]])
    assert result.exit_code == 0 and rid not in result.stdout

    result = runner.invoke(reviews.app, ["approve", rid, "-c", str(cfg)])
    assert result.exit_code == 1 and "needs your credential" in result.stderr

    result = runner.invoke(
        reviews.app, ["approve", rid, "-c", str(cfg)], env={"CALLGATE_CREDENTIAL": keys["mallory"]}
    )
    assert result.exit_code == 1 and "not an approver" in result.stderr

    result = runner.invoke(reviews.app, ["approve", rid, "-c", str(cfg), "--as", keys["alice"]])
    assert result.exit_code == 1 and "own request" in result.stderr

    result = runner.invoke(reviews.app, ["approve", rid, "-c", str(cfg), "--as", "cgk_bad"])
    assert result.exit_code == 1 and "invalid credential" in result.stderr

    result = runner.invoke(
        reviews.app,
        ["approve", rid, "--reason", "fine", "-c", str(cfg), "--credential", keys["dba"], "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["state"] == "approved" and data["approvals"][0]["reason"] == "fine"

    result = runner.invoke(reviews.app, ["deny", rid2, "-c", str(cfg), "--as", keys["dba"]])
    assert result.exit_code == 2  # --reason is required
    result = runner.invoke(
        reviews.app, ["deny", rid2, "--reason", "no", "-c", str(cfg), "--as", keys["dba"]]
    )
    assert result.exit_code == 0 and f"denied review {rid2}" in result.stdout

    result = runner.invoke(reviews.app, ["approve", rid2, "-c", str(cfg), "--as", keys["dba"]])
    assert result.exit_code == 1 and "denied" in result.stderr

    result = runner.invoke(reviews.app, ["list", "--state", "all", "-c", str(cfg), "--json"])
    states = {r["id"]: r["state"] for r in json.loads(result.stdout)}
    assert states == {rid: "approved", rid2: "denied"}


def test_access_cli(tmp_path: Path) -> None:
    cfg, keys = _setup(tmp_path)
    result = runner.invoke(
        access.app,
        ["request", "orders", "--duration", "30m", "--reason", "incident 9", "-c", str(cfg),
         "--as", keys["alice"], "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rid = json.loads(result.stdout)["id"]
    result = runner.invoke(reviews.app, ["approve", rid, "-c", str(cfg), "--as", keys["dba"]])
    assert result.exit_code == 0, result.output
    result = runner.invoke(access.app, ["list", "-c", str(cfg), "--json"])
    (grant,) = json.loads(result.stdout)
    assert (grant["subject"], grant["policy"], grant["status"]) == (
        "alice",
        "oncall-write",
        "active",
    )
    result = runner.invoke(
        access.app, ["revoke", grant["id"], "-c", str(cfg), "--as", keys["mallory"]]
    )
    assert result.exit_code == 1
    result = runner.invoke(access.app, ["revoke", grant["id"], "-c", str(cfg), "--as", keys["dba"]])
    assert result.exit_code == 0, result.output
    result = runner.invoke(access.app, ["list", "-c", str(cfg)])
    assert "no grants" in result.stdout
    result = runner.invoke(
        access.app,
        ["request", "orders", "--duration", "30h", "--reason", "x", "-c", str(cfg),
         "--as", keys["alice"]],
    )  # fmt: skip
    assert result.exit_code == 1 and "at most" in result.stderr


CLI = "from callgate.cli.reviews import app; app(prog_name='callgate reviews')"


def test_separate_process_approval_wakes_the_held_statement(tmp_path: Path) -> None:
    """The CLI in another process approves; the waiting service wakes. Latency is measured from
    the approval's commit time (``decided_at``, taken just before the commit, so it is an upper
    bound on "approve() returned") to ``wait()`` returning."""
    cfg, keys = _setup(tmp_path)

    async def main() -> list[float]:
        async with running(tmp_path) as (service, store):
            latencies: list[float] = []
            for i in range(12):
                review = await service.request(
                    ALICE,
                    connection="orders",
                    statement_sql=f"INSERT INTO orders VALUES ({i})",
                    policy_version="v1",
                )
                woke: list[float] = []

                async def wait(rid: str = review.id, woke: list[float] = woke) -> None:
                    outcome = await service.wait(rid)
                    woke.append(time.time())
                    assert outcome.approved and outcome.review.id == rid

                waiter = asyncio.create_task(wait())
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", CLI, "approve", review.id, "-c", str(cfg),
                    "--as", keys["dba"], "--json",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                await asyncio.wait_for(waiter, 5)
                decided_at = datetime.fromisoformat(json.loads(out)["decided_at"]).timestamp()
                latencies.append(woke[0] - decided_at)
            await service.flush()
            approved = [e for e in await store.session_events(None) if e.type == "review.approved"]
            assert len(approved) == 12  # the CLI's decisions, audited by the serving process
            return latencies

    latencies = run(main)
    median_ms = statistics.median(latencies) * 1000
    print(
        f"separate-process (CLI) approve -> wait() median {median_ms:.1f} ms,"
        f" max {max(latencies) * 1000:.1f} ms over {len(latencies)}"
    )
    assert median_ms < 200


def test_approvals_from_the_cli_process_do_not_touch_the_audit_chain(tmp_path: Path) -> None:
    """Only the serving process appends to the audit chain (it holds the chain head)."""
    cfg, keys = _setup(tmp_path)
    rid = _request(tmp_path)
    result = runner.invoke(reviews.app, ["approve", rid, "-c", str(cfg), "--as", keys["dba"]])
    assert result.exit_code == 0

    async def main() -> None:
        async with SqliteStore(tmp_path / "state.db") as store:
            assert await store.session_events(None) == []
        async with running(tmp_path) as (service, store):
            await service.flush()
            types = [e.type for e in await store.session_events(None)]
            assert types == ["review.requested", "review.approved"]
            assert (await service.get_review(rid)).state is ReviewState.APPROVED

    run(main)


def test_service_type_is_exported() -> None:
    assert ApprovalService.__name__ == "ApprovalService"
