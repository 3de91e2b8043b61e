"""``callgate policy test`` for HTTP requests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from callgate.cli.policy import app

RUNNER = CliRunner()

CONFIG = {
    "connections": [
        {"name": "payments", "protocol": "http", "upstream": {"url": "https://api.example"}}
    ],
    "policies": [
        {
            "name": "pay",
            "subjects": {"groups": ["fn"]},
            "connections": ["payments"],
            "rules": [
                {"allow": {"methods": ["GET", "POST"], "paths": ["/v1/charges/**"]}},
                {"deny": {"methods": ["POST"], "json": ["$.amount > 10000"]}},
                {"deny": {"headers": {"x-debug": "1"}}},
            ],
            "mask": [{"json": ["$..card.number"], "style": "partial"}],
        }
    ],
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "callgate.yaml"
    path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = RUNNER.invoke(
        app,
        [
            "test",
            "-c",
            str(config),
            "--subject",
            "fn-1",
            "--groups",
            "fn",
            "--connection",
            "payments",
            *args,
        ],
    )
    return result.exit_code, result.output


def test_http_request_decisions(config_file: Path) -> None:
    code, out = run(config_file, "--method", "GET", "--path", "/v1/charges/ch_1")
    assert code == 0
    assert re.search(r"^decision:\s+allow$", out, re.M)
    assert re.search(r"^body read:\s+no$", out, re.M)
    assert "pay / mask[0]: json $..card.number style=partial" in out

    code, out = run(
        config_file, "--method", "POST", "--path", "/v1/charges", "--body", '{"amount": 20000}'
    )
    assert code == 0
    assert re.search(r"^decision:\s+deny$", out, re.M)
    assert "pay / rules[1]: deny methods=[POST] json=[$.amount > 10000]" in out
    assert re.search(r"^body read:\s+yes", out, re.M)

    code, out = run(
        config_file, "--method", "GET", "--path", "/v1/charges/x", "--header", "X-Debug: 1"
    )
    assert re.search(r"^decision:\s+deny$", out, re.M)


def test_http_json_output(config_file: Path) -> None:
    code, out = run(
        config_file,
        "--json",
        "--method",
        "POST",
        "--path",
        "v1/charges",
        "--query",
        "?a=1",
        "--body",
        "amount=5",
        "--content-type",
        "application/x-www-form-urlencoded",
    )
    assert code == 0
    data = json.loads(out)
    assert data["decision"] == "deny"  # a form body cannot be read: the deny rule applies
    assert data["request"] == {
        "method": "POST",
        "path": "/v1/charges",
        "query": "a=1",
        "body_read": True,
    }


def test_http_argument_errors(config_file: Path) -> None:
    code, out = run(config_file)
    assert code != 0
    assert "give either the SQL text or --method" in out
    code, out = run(config_file, "SELECT 1", "--method", "GET")
    assert code != 0
    code, out = run(config_file, "--method", "GET", "--header", "no colon")
    assert code != 0
    assert "--header expects 'Name: value'" in out
