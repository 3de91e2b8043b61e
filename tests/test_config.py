"""The config file: the full example loads; each mistake names its key path and what is expected."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from callgate.cli.certs import make_dev_pair
from callgate.cli.main import app
from callgate.config import (
    Config,
    ConnectionConfig,
    DatabaseUpstream,
    FailureConfig,
    HttpUpstream,
    SubjectsConfig,
    iter_secret_refs,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from callgate.config.durations import DurationError, format_duration
from callgate.config.sizes import SizeError
from callgate.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

# SPEC §2, verbatim.
SPEC_EXAMPLE = """\
gateway:
  store: sqlite:///./callgate.db          # embedded default; postgresql://… for several replicas
  secret_key: env:CALLGATE_SECRET_KEY     # HMAC key (token hashes, mask tokens)
  tls: {cert: certs/gateway.pem, key: certs/gateway-key.pem}
  audit:
    durability: strict
    on_store_failure: deny                # deny | allow
    retention: 90d
    signing_key: file:/etc/callgate/audit-ed25519.pem
    record_rows: 0
    export:
      - {jsonl: /var/log/callgate/audit.jsonl}
      - {webhook: https://siem.example/ingest, secret: env:SIEM_HMAC}
      - {syslog: udp://127.0.0.1:514}

listeners:
  - {protocol: postgres, bind: "127.0.0.1:15432"}
  - {protocol: mysql,    bind: "127.0.0.1:13306"}
  - {protocol: http,     bind: "127.0.0.1:18080"}
  - {protocol: api,      bind: "127.0.0.1:8080"}

identity:
  oidc:
    - name: corp
      issuer: https://idp.example.com
      audience: callgate
      subject_claim: email                # default: sub
      groups_claim: groups
  saml:
    - name: corp-saml
      metadata: file:/etc/callgate/idp-metadata.xml
      groups_attribute: groups

connections:
  - name: orders
    protocol: postgres
    upstream: {host: 127.0.0.1, port: 5432, database: orders, user: app,
               password: env:ORDERS_DB_PASSWORD, tls: prefer}
  - name: payments
    protocol: http
    upstream: {url: https://api.payments.example}
    inject:
      headers: {Authorization: "Bearer ${env:PAYMENTS_TOKEN}"}

policies:
  - name: functions read orders
    subjects: {groups: [functions]}
    connections: [orders]
    rules:
      - {allow: {kinds: [select]}}
      - {review: {kinds: [insert, update, delete]}}
      - {deny: {kinds: [update, delete], where: absent}}
      - {deny: {kinds: [ddl, privilege, unsafe_io]}}
      - {deny: {functions: ["pg_read_file", "dblink*", "lo_*"]}}
      - {allow: {methods: [GET], paths: ["/v1/charges/*"]}}
    mask:
      - {columns: ["customers.email"], style: partial}
      - {detect: [credit_card, email, iban], style: redact}
      - {json: ["$.data[*].card.number"], style: hash}
    mask_exempt: {groups: [support-tier2]}

approvals:
  - connections: [orders]
    approvers: {groups: [dba]}
    min_approvals: 1
    mode: hold
    timeout: 120s
    notify: [{webhook: env:SLACK_WEBHOOK_URL, format: slack}]
"""

SENTINEL = "s3ntinel-VALUE-4b3a2c"
ENV = {
    "CALLGATE_SECRET_KEY": SENTINEL + "-key",
    "ORDERS_DB_PASSWORD": SENTINEL + "-db",
    "PAYMENTS_TOKEN": SENTINEL + "-token",
    "SIEM_HMAC": SENTINEL + "-siem",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.example/" + SENTINEL,
}


def write_certs(directory: Path) -> None:
    cert, key = make_dev_pair([], 1)
    (directory / "certs").mkdir(exist_ok=True)
    (directory / "certs" / "gateway.pem").write_bytes(cert)
    (directory / "certs" / "gateway-key.pem").write_bytes(key)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_certs(tmp_path)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "callgate.yaml").write_text(SPEC_EXAMPLE)
    return tmp_path


@pytest.fixture
def spec_data() -> dict[str, Any]:
    data = yaml.safe_load(SPEC_EXAMPLE)
    assert isinstance(data, dict)
    return data


# --- the valid example ----------------------------------------------------------------------


def test_spec_example_loads(workdir: Path) -> None:
    config = load_config(workdir / "callgate.yaml")
    assert config.source_path == (workdir / "callgate.yaml").resolve()

    gateway = config.gateway
    assert gateway.store_path == workdir.resolve() / "callgate.db"
    assert gateway.store == f"sqlite:///{workdir.resolve() / 'callgate.db'}"
    assert gateway.secret_key is not None
    assert gateway.secret_key.resolve() == ENV["CALLGATE_SECRET_KEY"]
    assert gateway.tls is not None
    assert gateway.tls.cert == workdir.resolve() / "certs" / "gateway.pem"
    assert gateway.tls.client_ca is None
    audit = gateway.audit
    assert (audit.durability, audit.on_store_failure) == ("strict", "deny")
    assert audit.retention == timedelta(days=90)
    assert str(audit.signing_key) == "file:/etc/callgate/audit-ed25519.pem"
    assert [sink.kind for sink in audit.export] == ["jsonl", "webhook", "syslog"]
    assert audit.export[0].jsonl == Path("/var/log/callgate/audit.jsonl")
    assert audit.export[2].syslog_target == ("udp", "127.0.0.1", 514)
    assert gateway.limits.max_message_bytes == 1024**3
    assert gateway.limits.max_decoded_bytes == 64 * 1024**2
    assert gateway.drain_timeout == timedelta(seconds=30)

    assert [(lst.protocol, lst.host, lst.port) for lst in config.listeners] == [
        ("postgres", "127.0.0.1", 15432),
        ("mysql", "127.0.0.1", 13306),
        ("http", "127.0.0.1", 18080),
        ("api", "127.0.0.1", 8080),
    ]

    oidc = config.identity.oidc[0]
    assert (oidc.name, oidc.audience, oidc.subject_claim) == ("corp", ("callgate",), "email")
    assert oidc.clock_skew == timedelta(seconds=60)
    assert config.identity.saml[0].groups_attribute == "groups"
    assert config.identity.failures.lockout == timedelta(minutes=5)

    orders = config.connection("orders")
    assert orders is not None
    upstream = orders.database_upstream
    assert (upstream.host, upstream.port, upstream.database, upstream.user, upstream.tls) == (
        "127.0.0.1",
        5432,
        "orders",
        "app",
        "prefer",
    )
    assert upstream.password is not None
    assert upstream.password.resolve() == ENV["ORDERS_DB_PASSWORD"]
    payments = config.connection("payments")
    assert payments is not None
    assert payments.http_upstream.url == "https://api.payments.example"
    assert payments.inject is not None
    assert payments.inject.kind == "headers"
    assert payments.inject.headers is not None
    assert payments.inject.headers["Authorization"].resolve() == "Bearer " + ENV["PAYMENTS_TOKEN"]
    assert config.connection("nope") is None

    policy = config.policies[0]
    assert policy.subjects.groups == ("functions",)
    assert [rule.action for rule in policy.rules] == [
        "allow",
        "review",
        "deny",
        "deny",
        "deny",
        "allow",
    ]
    assert policy.rules[1].when.kinds == ("insert", "update", "delete")
    assert policy.rules[2].when.where == "absent"
    assert policy.rules[4].when.functions == ("pg_read_file", "dblink*", "lo_*")
    assert policy.rules[5].when.methods == ("GET",)
    assert policy.mask[0].columns == ("customers.email",)
    assert (policy.mask[0].style, policy.mask[0].keep) == ("partial", 4)
    assert policy.mask[1].detect == ("credit_card", "email", "iban")
    assert policy.mask[2].json_paths == ("$.data[*].card.number",)
    assert policy.mask_exempt is not None
    assert policy.mask_exempt.matches("x", frozenset({"support-tier2"}))

    approval = config.approvals[0]
    assert (approval.min_approvals, approval.mode) == (1, "hold")
    assert approval.timeout == timedelta(seconds=120)
    assert approval.notify[0].format == "slack"


def test_dumps_never_contain_a_secret(workdir: Path) -> None:
    text = (workdir / "callgate.yaml").read_text()
    # A literal secret: the config holds the value itself, and still never shows it.
    text = text.replace("password: env:ORDERS_DB_PASSWORD", f"password: {SENTINEL}")
    (workdir / "callgate.yaml").write_text(text)
    config = load_config(workdir / "callgate.yaml")
    dumps = [
        repr(config),
        str(config),
        repr(config.model_dump()),
        json.dumps(config.model_dump(mode="json")),
        config.model_dump_json(),
    ]
    for dump in dumps:
        assert SENTINEL not in dump
    assert "<literal secret>" in dumps[3]
    assert "env:PAYMENTS_TOKEN" in dumps[3]
    found = dict(iter_secret_refs(config))
    assert found["connections[0].upstream.password"].resolve() == SENTINEL
    assert "connections[1].inject.headers.Authorization" in found


def test_json_dump_uses_config_spellings(workdir: Path) -> None:
    dumped = load_config(workdir / "callgate.yaml").model_dump(mode="json")
    assert dumped["gateway"]["audit"]["retention"] == "90d"
    assert dumped["approvals"][0]["timeout"] == "2m"
    assert dumped["policies"][0]["mask"][2]["json"] == ["$.data[*].card.number"]


def test_example_file_loads_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "examples" / "callgate.yaml", tmp_path / "callgate.yaml")
    write_certs(tmp_path)
    (tmp_path / "audit-ed25519.pem").write_text("key")
    (tmp_path / "idp-metadata.xml").write_text("<xml/>")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "inventory-password").write_text("pw\n")
    for name in (*ENV, "BILLING_CLIENT_SECRET"):
        monkeypatch.setenv(name, "value")
    config = load_config(tmp_path / "callgate.yaml")
    assert config.gateway.limits.max_message_bytes == 1024**3
    inventory = config.connection("inventory")
    assert inventory is not None
    assert inventory.database_upstream.port == 3306
    assert config.listeners[4].host == "::1"
    assert config.policies[2].rules[0].when.matches_everything
    result = CliRunner().invoke(app, ["check", "-c", str(tmp_path / "callgate.yaml")])
    assert result.exit_code == 0, result.output
    assert "config OK: 5 listeners, 4 connections, 3 policies" in result.output


# --- mistakes -------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        parts = path.split("/")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        parts = path.split("/")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _append(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for part in path.split("/"):
            node = node[int(part)] if part.isdigit() else node[part]
        node.append(value)

    return mutate


MISTAKES: list[tuple[str, Mutation, str, str]] = [
    (
        "unknown key",
        _set("connections/0/upstream/hostt", "x"),
        "connections[0].upstream.hostt",
        "unknown key 'hostt' (did you mean 'host'?)",
    ),
    (
        "unknown top-level section",
        _set("listener", []),
        "listener",
        "unknown key 'listener' (did you mean 'listeners'?)",
    ),
    (
        "wrong type",
        _set("listeners/0/allow_plaintext", "yes"),
        "listeners[0].allow_plaintext",
        "expected true or false, got a string",
    ),
    (
        "section of the wrong type",
        _set("identity", ["corp"]),
        "identity",
        "expected a mapping, got a list",
    ),
    (
        "bad port",
        _set("connections/0/upstream/port", 70000),
        "connections[0].upstream.port",
        "expected an integer from 1 to 65535, got 70000",
    ),
    (
        "port as text",
        _set("connections/0/upstream/port", "5432"),
        "connections[0].upstream.port",
        "expected an integer from 1 to 65535, got a string",
    ),
    (
        "bad duration",
        _set("approvals/0/timeout", "2 minutes"),
        "approvals[0].timeout",
        "expected a duration such as 30s",
    ),
    (
        "zero duration",
        _set("gateway/drain_timeout", "0s"),
        "gateway.drain_timeout",
        "expected a duration greater than zero",
    ),
    (
        "unknown statement kind",
        _set("policies/0/rules/0/allow/kinds", ["select", "selct"]),
        "policies[0].rules[0].allow.kinds[1]",
        "unknown statement kind 'selct' (did you mean 'select'?)",
    ),
    (
        "rule with two actions",
        _append("policies/0/rules", {"allow": {}, "deny": {"kinds": ["ddl"]}}),
        "policies[0].rules[6]",
        "a rule has exactly one of allow, review, deny; found allow and deny",
    ),
    (
        "rule with no action",
        _append("policies/0/rules", {"permit": {}}),
        "policies[0].rules[6].permit",
        "unknown key 'permit'",
    ),
    (
        "unknown condition",
        _set("policies/0/rules/2/deny/wher", "absent"),
        "policies[0].rules[2].deny.wher",
        "unknown key 'wher' (did you mean 'where'?)",
    ),
    (
        "policy naming an unknown connection",
        _set("policies/0/connections", ["orders", "ordrs"]),
        "policies[0].connections[1]",
        "connection 'ordrs' named by policies[0].connections does not exist",
    ),
    (
        "approval naming an unknown connection",
        _set("approvals/0/connections", ["billing"]),
        "approvals[0].connections[0]",
        "connection 'billing' named by approvals[0].connections does not exist",
    ),
    (
        "duplicate connection names",
        _append(
            "connections",
            {"name": "orders", "protocol": "http", "upstream": {"url": "https://x.example"}},
        ),
        "connections[2].name",
        "connection name 'orders' is already used by connections[0]",
    ),
    (
        "listener without a TLS pair",
        _delete("gateway/tls"),
        "listeners[0]",
        "a postgres listener needs gateway.tls",
    ),
    (
        "duplicate listener bind",
        _append("listeners", {"protocol": "api", "bind": "127.0.0.1:8080"}),
        "listeners[4].bind",
        "127.0.0.1:8080 is already used by listeners[3]",
    ),
    (
        "idle_timeout on a postgres listener",
        _set("listeners/0/idle_timeout", "30s"),
        "listeners[0].idle_timeout",
        "idle_timeout applies to http listeners only",
    ),
    (
        "zero idle_timeout",
        _set("listeners/2/idle_timeout", "0s"),
        "listeners[2].idle_timeout",
        "expected a duration greater than zero",
    ),
    (
        "unbracketed IPv6 bind",
        _set("listeners/0/bind", "::1:5432"),
        "listeners[0].bind",
        'expected "HOST:PORT" (IPv6 as "[::1]:PORT")',
    ),
    (
        "bad connection protocol",
        _set("connections/1/protocol", "ftp"),
        "connections[1].protocol",
        "expected 'postgres', 'mysql' or 'http', got 'ftp'",
    ),
    (
        "database keys in an http upstream",
        _set("connections/1/upstream", {"url": "https://x.example", "host": "x"}),
        "connections[1].upstream.host",
        "unknown key 'host'; expected one of url, ca_file, timeouts",
    ),
    (
        "missing required key",
        _delete("connections/0/upstream/database"),
        "connections[0].upstream.database",
        "required key is missing",
    ),
    (
        "inject on a database",
        _set("connections/0/inject", {"headers": {"A": "b"}}),
        "connections[0].inject",
        "inject is only used by http connections",
    ),
    (
        "two inject kinds",
        _set("connections/1/inject/basic", {"user": "u", "password": "p"}),
        "connections[1].inject",
        "expected exactly one of headers, basic, query, oauth2_client_credentials, aws_sigv4",
    ),
    (
        "ca_file without verification",
        _set("connections/0/upstream/ca_file", "certs/gateway.pem"),
        "connections[0].upstream.ca_file",
        "ca_file is only used with tls: verify-full",
    ),
    (
        "missing TLS file",
        _set("gateway/tls/cert", "certs/missing.pem"),
        "gateway.tls.cert",
        "missing.pem does not exist",
    ),
    (
        "bad store",
        _set("gateway/store", "mysql://db"),
        "gateway.store",
        "expected sqlite:///PATH",
    ),
    (
        "two mask selectors",
        _append("policies/0/mask", {"columns": ["a.b"], "detect": ["email"]}),
        "policies[0].mask[3]",
        "expected exactly one of columns, detect, json, headers; found columns and detect",
    ),
    (
        "unknown detector",
        _append("policies/0/mask", {"detect": ["emial"]}),
        "policies[0].mask[3].detect[0]",
        "unknown detector 'emial' (did you mean 'email'?)",
    ),
    (
        "bad mask style",
        _set("policies/0/mask/1/style", "blur"),
        "policies[0].mask[1].style",
        "expected 'redact', 'partial', 'hash', 'null' or 'email', got 'blur'",
    ),
    (
        "keep without partial",
        _set("policies/0/mask/1/keep", 2),
        "policies[0].mask[1].keep",
        "keep is only used with style: partial",
    ),
    (
        "policy naming nobody",
        _set("policies/0/subjects", {}),
        "policies[0].subjects",
        "expected groups or users",
    ),
    (
        "plain http issuer",
        _set("identity/oidc/0/issuer", "http://idp.example.com"),
        "identity.oidc[0].issuer",
        "expected an https:// URL (http:// only on a loopback host)",
    ),
    (
        "export with two sinks",
        _append("gateway/audit/export", {"jsonl": "a.jsonl", "syslog": "udp://x"}),
        "gateway.audit.export[3]",
        "expected exactly one of jsonl, webhook, syslog; found jsonl and syslog",
    ),
    (
        "bad syslog URL",
        _set("gateway/audit/export/2", {"syslog": "http://x"}),
        "gateway.audit.export[2].syslog",
        "expected udp://HOST[:PORT] or tcp://HOST[:PORT]",
    ),
    (
        "min_approvals zero",
        _set("approvals/0/min_approvals", 0),
        "approvals[0].min_approvals",
        "expected an integer of at least 1, got 0",
    ),
    (
        "negative record_rows",
        _set("gateway/audit/record_rows", -1),
        "gateway.audit.record_rows",
        "expected an integer of at least 0, got -1",
    ),
    (
        "bad connection name",
        _set("connections/0/name", "orders db"),
        "connections[0].name",
        "expected a connection name",
    ),
    (
        "duplicate issuer names",
        _set("identity/saml/0/name", "corp"),
        "identity.saml[0].name",
        "name 'corp' is already used by oidc[0].name",
    ),
    (
        "session token ttl above the max",
        _set("identity/session_token_ttl", "13h"),
        "identity.session_token_ttl",
        "must not be longer than session_token_max_ttl",
    ),
    (
        "malformed template",
        _set("connections/1/inject/headers/Authorization", "Bearer ${PAYMENTS_TOKEN}"),
        "connections[1].inject.headers.Authorization",
        "is not one of ${env:NAME}, ${file:PATH}",
    ),
    (
        "bad header name",
        _set("connections/1/inject/headers", {"Bad Header": "x"}),
        "connections[1].inject.headers['Bad Header']",
        "expected an HTTP header name",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [pytest.param(m, p, msg, id=name) for name, m, p, msg in MISTAKES],
)
def test_mistake_names_key_path(
    mutate: Mutation, path: str, message: str, workdir: Path, spec_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(spec_data)
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, workdir)
    assert caught.value.path == path
    assert message in caught.value.message
    assert caught.value.message.startswith(f"{path}: ")


def test_secret_in_wrong_place_is_not_echoed(workdir: Path, spec_data: dict[str, Any]) -> None:
    data = copy.deepcopy(spec_data)
    data["connections"][0]["upstream"]["password"] = {"value": SENTINEL}
    data["listeners"][0]["allow_plaintext"] = SENTINEL
    with pytest.raises(ConfigError) as caught:
        parse_config(data, workdir)
    assert SENTINEL not in str(caught.value)
    assert SENTINEL not in repr(caught.value.__cause__)
    assert caught.value.__cause__ is None  # pydantic's error (with inputs) is not chained


def test_null_section_counts_as_absent(tmp_path: Path) -> None:
    config = parse_config({"identity": None, "approvals": None}, tmp_path)
    assert config.identity.oidc == ()
    assert config.gateway.store_path == tmp_path.resolve() / "callgate.db"


def test_plaintext_listener_needs_no_tls(tmp_path: Path) -> None:
    config = parse_config(
        {"listeners": [{"protocol": "postgres", "bind": "127.0.0.1:0", "allow_plaintext": True}]},
        tmp_path,
    )
    assert config.listeners[0].port == 0
    api_only = parse_config(
        {"listeners": [{"protocol": "api", "bind": "localhost:8080"}]}, tmp_path
    )
    assert api_only.listeners[0].host == "localhost"


def test_http_listener_idle_timeout(tmp_path: Path) -> None:
    http = {"protocol": "http", "bind": "127.0.0.1:0", "allow_plaintext": True}
    config = parse_config({"listeners": [http, {**http, "idle_timeout": "5s"}]}, tmp_path)
    assert [ls.idle_timeout.total_seconds() for ls in config.listeners] == [60.0, 5.0]


def test_port_zero_binds_may_repeat(tmp_path: Path) -> None:
    listener = {"protocol": "api", "bind": "127.0.0.1:0"}
    config = parse_config({"listeners": [listener, listener]}, tmp_path)
    assert len(config.listeners) == 2


def test_ipv6_bind(tmp_path: Path) -> None:
    config = parse_config({"listeners": [{"protocol": "api", "bind": "[::1]:8443"}]}, tmp_path)
    assert (config.listeners[0].host, config.listeners[0].port) == ("::1", 8443)


def test_mysql_default_port_and_store_forms(tmp_path: Path) -> None:
    data = {
        "gateway": {"store": "postgresql://callgate@db.internal/callgate"},
        "connections": [
            {
                "name": "m",
                "protocol": "mysql",
                "upstream": {"host": "h", "database": "d", "user": "u"},
            },
            {
                "name": "p",
                "protocol": "postgres",
                "upstream": {"host": "h", "database": "d", "user": "u"},
            },
        ],
    }
    config = parse_config(data, tmp_path)
    assert config.gateway.store_path is None
    assert [c.database_upstream.port for c in config.connections] == [3306, 5432]
    absolute = parse_config({"gateway": {"store": "sqlite:////var/lib/cg.db"}}, tmp_path)
    assert absolute.gateway.store_path == Path("/var/lib/cg.db")


def test_mysql_default_port_when_built_in_code() -> None:
    connection = ConnectionConfig(
        name="m",
        protocol="mysql",
        upstream=DatabaseUpstream(host="h", database="d", user="u"),
    )
    assert connection.database_upstream.port == 3306
    with pytest.raises(TypeError):
        _ = connection.http_upstream


def test_http_connection_needs_http_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"connections": [{"name": "h", "protocol": "http", "upstream": {"host": "x"}}]},
            tmp_path,
        )
    assert caught.value.path == "connections[0].upstream.host"
    ok = parse_config(
        {
            "connections": [
                {"name": "h", "protocol": "http", "upstream": {"url": "http://x:8080/v1"}}
            ]
        },
        tmp_path,
    )
    assert isinstance(ok.connections[0].upstream, HttpUpstream)


def test_models_are_frozen(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        config.gateway.audit.record_rows = 5


def test_subjects_matching() -> None:
    subjects = SubjectsConfig.model_validate(
        {"groups": ["eng-*"], "users": ["alice@*"], "except": {"users": ["alice@evil.example"]}}
    )
    assert subjects.matches("bob", frozenset({"eng-db"}))
    assert subjects.matches("alice@acme.example", frozenset())
    assert not subjects.matches("alice@evil.example", frozenset({"eng-db"}))
    assert not subjects.matches("carol", frozenset({"sales"}))
    assert not subjects.matches("carol", frozenset({"ENG-DB"}))  # case-sensitive
    assert not SubjectsConfig().matches("anyone", frozenset({"any"}))


def test_failure_delays() -> None:
    failures = FailureConfig()
    assert [failures.delay_for(n).total_seconds() for n in range(2, 8)] == [0, 1, 2, 4, 5, 5]
    assert failures.delay_for(10**6) == timedelta(seconds=5)


# --- durations and sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90d", 90 * 86400),
        ("30m", 1800),
        ("120s", 120),
        ("500ms", 0.5),
        ("1h30m", 5400),
        ("1d2h3m4s5ms", 93784.005),
        (" 15s ", 15),
        ("1.5h", 5400),
        ("45", 45),
        (45, 45),
        (0.25, 0.25),
        (timedelta(minutes=2), 120),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5x", "m5", "1h1h", "-5s", -1, True, None, [1], "1 h"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(DurationError, match="expected a duration"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for text in ("90d", "1h30m", "500ms", "2m", "1d2h3m4s5ms"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(timedelta(0)) == "0s"


def test_sizes() -> None:
    assert parse_size(1024) == 1024
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("1 GiB") == 1024**3
    for bad in ("1GB", 0, "x", True, 1.5):
        with pytest.raises(SizeError):
            parse_size(bad)


# --- reading the file -----------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "callgate.yaml"
    path.write_text("gateway:\n  store: x\n listeners: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "YAML syntax error" in caught.value.message
    assert "line 3" in caught.value.message
    assert str(path) in caught.value.message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "callgate.yaml"
    path.write_text("gateway:\n  store: sqlite:///a.db\n  store: sqlite:///b.db\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: .*key 'store' appears twice"):
        load_config(path)


def test_non_text_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "callgate.yaml"
    path.write_text("connections:\n  - name: x\n    on: 1\n")
    with pytest.raises(ConfigError, match="key 'on' is read as bool"):
        load_config(path)


def test_missing_empty_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(tmp_path / "list.yaml")


def test_relative_paths_follow_the_config_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../callgate.yaml"))
    assert config.gateway.tls is not None
    assert config.gateway.tls.key == workdir.resolve() / "certs" / "gateway-key.pem"
    assert config.gateway.store_path == workdir.resolve() / "callgate.db"


def test_config_built_in_code_has_no_source() -> None:
    assert Config().source_path is None


# --- callgate check -------------------------------------------------------------------------


def test_check_ok(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signing = workdir / "audit.pem"
    signing.write_text("k")
    metadata = workdir / "idp.xml"
    metadata.write_text("<xml/>")
    text = SPEC_EXAMPLE.replace("/etc/callgate/audit-ed25519.pem", str(signing)).replace(
        "/etc/callgate/idp-metadata.xml", str(metadata)
    )
    (workdir / "callgate.yaml").write_text(text)
    runner = CliRunner()
    result = runner.invoke(app, ["check", "-c", str(workdir / "callgate.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "config OK: 4 listeners, 2 connections, 1 policies"
    assert SENTINEL not in result.output

    monkeypatch.setenv("CALLGATE_CONFIG", str(workdir / "callgate.yaml"))
    as_json = runner.invoke(app, ["check", "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["ok"] is True
    assert (summary["listeners"], summary["connections"], summary["policies"]) == (4, 2, 1)
    # secret_key, signing_key, the SIEM webhook secret, SAML metadata, the orders password,
    # the payments header template, the Slack webhook
    assert summary["secrets"] == 7


def test_check_reports_config_error(workdir: Path) -> None:
    path = workdir / "callgate.yaml"
    path.write_text(SPEC_EXAMPLE.replace("port: 5432", "port: 99999"))
    result = CliRunner().invoke(app, ["check", "-c", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "callgate: connections[0].upstream.port: expected an integer from 1 to 65535, got 99999"
    )


def test_check_reports_unresolvable_secret(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_DB_PASSWORD")
    result = CliRunner().invoke(app, ["check", "-c", str(workdir / "callgate.yaml"), "--json"])
    assert result.exit_code == 1
    # The first unresolvable reference in file order: the audit signing key file.
    assert json.loads(result.stdout) == {
        "ok": False,
        "path": "gateway.audit.signing_key",
        "error": (
            "gateway.audit.signing_key: file:/etc/callgate/audit-ed25519.pem: file does not exist"
        ),
    }
    signing = workdir / "audit.pem"
    signing.write_text("k")
    metadata = workdir / "idp.xml"
    metadata.write_text("<xml/>")
    text = SPEC_EXAMPLE.replace("/etc/callgate/audit-ed25519.pem", str(signing)).replace(
        "/etc/callgate/idp-metadata.xml", str(metadata)
    )
    (workdir / "callgate.yaml").write_text(text)
    result = CliRunner().invoke(app, ["check", "-c", str(workdir / "callgate.yaml")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "callgate: connections[0].upstream.password: env:ORDERS_DB_PASSWORD: "
        "environment variable is not set"
    )
    for value in ENV.values():
        assert value not in result.output


def test_check_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", "-c", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


def test_check_mismatched_tls_pair(workdir: Path) -> None:
    other_cert, _ = make_dev_pair([], 1)
    (workdir / "certs" / "gateway.pem").write_bytes(other_cert)
    result = CliRunner().invoke(app, ["check", "-c", str(workdir / "callgate.yaml")])
    assert result.exit_code == 1
    assert result.stderr.startswith("callgate: gateway.tls: cannot use")
