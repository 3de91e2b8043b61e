"""``callgate policy test`` (the sub-app, invoked directly)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from callgate.cli.policy import app
from tests.policy.corpus import CORPUS_PATH

RUNNER = CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    corpus = yaml.safe_load(CORPUS_PATH.read_text(encoding="utf-8"))
    path = tmp_path / "callgate.yaml"
    path.write_text(yaml.safe_dump(corpus["config"]), encoding="utf-8")
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = RUNNER.invoke(
        app,
        [
            "test",
            "-c",
            str(config),
            "--subject",
            "alice",
            "--groups",
            "app,other",
            "--connection",
            "app",
            *args,
        ],
    )
    return result.exit_code, result.output


def test_deny_prints_decision_and_rules(config_file: Path) -> None:
    code, out = run(config_file, "DELETE FROM orders")
    assert code == 0
    assert re.search(r"^decision:\s+deny$", out, re.M)
    assert "corpus reference / rules[4]: deny kinds=[update, delete] where=absent" in out
    assert re.search(r"^kinds:\s+delete$", out, re.M)
    assert re.search(r"^tables written:\s+orders$", out, re.M)


def test_json_output(config_file: Path) -> None:
    code, out = run(
        config_file,
        "--json",
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT id FROM d",
    )
    assert code == 0
    data = json.loads(out)
    assert data["decision"] == "review"
    assert data["classification"]["kinds"] == ["delete", "select"]
    assert data["classification"]["tables_written"] == ["orders"]
    assert len(data["policy_version"]) == 12
    assert any("rules[2]" in rule for rule in data["rules"])


def test_search_path_and_prepared(config_file: Path) -> None:
    code, out = run(config_file, "--json", "--search-path", "evil,public", "SELECT id FROM orders")
    assert code == 0 and json.loads(out)["decision"] == "deny"
    code, out = run(config_file, "--json", "--prepared", "q=DELETE FROM orders", "EXECUTE q")
    assert code == 0
    data = json.loads(out)
    assert data["decision"] == "deny"
    assert data["classification"]["kinds"] == ["delete"]


def test_unparseable_sql_is_a_decision_not_an_error(config_file: Path) -> None:
    code, out = run(config_file, "SELEKT 1")
    assert code == 0
    assert re.search(r"^decision:\s+deny$", out, re.M)
    assert "parse error:" in out


def test_caller_without_policy(config_file: Path) -> None:
    result = RUNNER.invoke(
        app, ["test", "-c", str(config_file), "--subject", "eve", "--connection", "app", "SELECT 1"]
    )
    assert result.exit_code == 0
    assert "no policy lets this caller use this connection" in result.output


def test_errors_exit_non_zero(config_file: Path, tmp_path: Path) -> None:
    code, _ = run(tmp_path / "missing.yaml", "SELECT 1")
    assert code == 1
    result = RUNNER.invoke(
        app, ["test", "-c", str(config_file), "--subject", "a", "--connection", "nope", "SELECT 1"]
    )
    assert result.exit_code == 1
    code, _ = run(config_file, "--prepared", "no-equals-sign", "SELECT 1")
    assert code == 1
