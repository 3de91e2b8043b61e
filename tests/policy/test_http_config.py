"""HTTP rule conditions and HTTP mask rules in the config: what loads, and errors that name the
key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callgate.config import parse_config
from callgate.errors import ConfigError


def config(rules: list[Any] | None = None, mask: list[Any] | None = None) -> dict[str, Any]:
    return {
        "connections": [
            {"name": "payments", "protocol": "http", "upstream": {"url": "https://x.example"}}
        ],
        "policies": [
            {
                "name": "pay",
                "subjects": {"groups": ["fn"]},
                "connections": ["payments"],
                "rules": rules or [],
                "mask": mask or [],
            }
        ],
    }


def test_http_conditions_load(tmp_path: Path) -> None:
    cfg = parse_config(
        config(
            [
                {
                    "deny": {
                        "methods": ["post"],
                        "paths": ["/v1/charges/**"],
                        "query": {"force": "true", "mode": ["a*", "b"], "dry": {"present": False}},
                        "headers": {"X-Tenant": "t-*"},
                        "json": [
                            "$.amount > 10000",
                            " exists $.refund ",
                            "$.items[*].sku == 'X'",
                            'not exists $..["odd key"]',
                        ],
                    }
                }
            ],
            [
                {"json": ["$.data[*].card.number", "$..ssn"], "style": "partial"},
                {"headers": ["Set-Cookie", "x-api-*"], "style": "hash"},
            ],
        ),
        tmp_path,
    )
    when = cfg.policies[0].rules[0].when
    assert when.methods == ("POST",)
    assert when.query["force"].values == ("true",)
    assert when.query["mode"].values == ("a*", "b")
    assert when.query["dry"].present is False
    assert set(when.headers) == {"x-tenant"}  # names are lower-cased
    assert when.json_conditions[1] == "exists $.refund"
    assert cfg.policies[0].mask[1].headers == ("set-cookie", "x-api-*")
    dumped = cfg.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert dumped["policies"][0]["rules"][0]["when"]["json"][0] == "$.amount > 10000"
    # a dump reads back as the same config
    again = parse_config({**config(), "policies": dumped["policies"]}, tmp_path)
    assert again.policies == cfg.policies


MISTAKES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "sql and http conditions in one rule",
        config([{"allow": {"kinds": ["select"]}}, {"deny": {"kinds": ["ddl"], "paths": ["/x"]}}]),
        "policies[0].rules[1].deny",
        "not both; found kinds and paths (write two rules)",
    ),
    (
        "json condition with a bad operator",
        config([{"deny": {"json": ["$.amount => 10"]}}]),
        "policies[0].rules[0].deny.json[0]",
        "expected an operator (==, !=, <, <=, >, >=)",
    ),
    (
        "json condition outside the path subset",
        config([{"deny": {"json": ["exists $.a", "$.items[?(@.x > 1)].y == 2"]}}]),
        "policies[0].rules[0].deny.json[1]",
        "filters, slices and unions are not supported",
    ),
    (
        "json condition without a path",
        config([{"deny": {"json": ["amount > 10"]}}]),
        "policies[0].rules[0].deny.json[0]",
        "expected a JSON path starting with $",
    ),
    (
        "json condition on the root",
        config([{"deny": {"json": ["$ == 1"]}}]),
        "policies[0].rules[0].deny.json[0]",
        "expected a path below $",
    ),
    (
        "ordering against a boolean",
        config([{"allow": {"json": ["$.ok < true"]}}]),
        "policies[0].rules[0].allow.json[0]",
        "< needs a number or a string",
    ),
    (
        "unterminated string",
        config([{"deny": {"json": ["$.currency == 'usd"]}}]),
        "policies[0].rules[0].deny.json[0]",
        "unterminated string",
    ),
    (
        "json condition not a string",
        config([{"deny": {"json": [{"amount": 1}]}}]),
        "policies[0].rules[0].deny.json[0]",
        "expected a condition such as",
    ),
    (
        "boolean query value",
        config([{"deny": {"query": {"force": True}}}]),
        "policies[0].rules[0].deny.query.force",
        'quote numbers and booleans ("true", "100")',
    ),
    (
        "empty query glob list",
        config([{"deny": {"query": {"force": []}}}]),
        "policies[0].rules[0].deny.query.force",
        "expected at least one glob",
    ),
    (
        "values with present false",
        config([{"deny": {"query": {"force": {"present": False, "values": ["x"]}}}}]),
        "policies[0].rules[0].deny.query.force",
        "values cannot be given with present: false",
    ),
    (
        "unknown key in a value condition",
        config([{"deny": {"query": {"force": {"presnt": True}}}}]),
        "policies[0].rules[0].deny.query.force.presnt",
        "unknown key 'presnt' (did you mean 'present'?)",
    ),
    (
        "authorization header condition",
        config([{"deny": {"headers": {"Authorization": "Bearer *"}}}]),
        "policies[0].rules[0].deny.headers.Authorization",
        "cannot be a condition",
    ),
    (
        "bad header name in a condition",
        config([{"deny": {"headers": {"x tenant": "a"}}}]),
        "policies[0].rules[0].deny.headers['x tenant']",
        "expected an HTTP header name",
    ),
    (
        "bad mask json path",
        config(mask=[{"json": ["$.a", "$.b[1:2]"]}]),
        "policies[0].mask[0].json[1]",
        "slices and unions are not supported (one index, * or name) at position 5: '$.b[1:2]' is "
        "not in the JSON path subset",
    ),
    (
        "mask json path with a trailing dot",
        config(mask=[{"json": ["$.a."]}]),
        "policies[0].mask[0].json[0]",
        "expected a member name, * or [ after .",
    ),
    (
        "masking a framing header",
        config(mask=[{"headers": ["set-cookie", "content-*"]}]),
        "policies[0].mask[0].headers[1]",
        "would mask content-encoding, content-length, content-type",
    ),
    (
        "headers and json in one mask rule",
        config(mask=[{"headers": ["x-a"], "json": ["$.a"]}]),
        "policies[0].mask[0]",
        "expected exactly one of columns, detect, json, headers; found json and headers",
    ),
    (
        "empty mask headers",
        config(mask=[{"headers": []}]),
        "policies[0].mask[0].headers",
        "expected at least 1 entry",
    ),
]


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [pytest.param(d, p, m, id=name) for name, d, p, m in MISTAKES],
)
def test_mistake_names_key_path(
    data: dict[str, Any], path: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    assert caught.value.path == path
    assert message in caught.value.message
