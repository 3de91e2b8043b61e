"""``policies:`` — who may do what on which connection, and what gets masked."""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import Field, PlainValidator, StrictBool, model_validator

from callgate.config.fields import (
    ConfigModel,
    NonEmptyStr,
    NonNegativeInt,
    describe_type,
    message_error,
    path_error,
)

Kind = Literal[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "copy_from",
    "copy_to",
    "ddl",
    "privilege",
    "procedural",
    "unsafe_io",
    "transaction",
    "session",
    "explain",
    "utility",
    "unknown",
]
#: the statement kinds of SPEC §2, in the order the spec lists them
KINDS: Final[tuple[str, ...]] = get_args(Kind)

Detector = Literal[
    "email",
    "credit_card",
    "iban",
    "us_ssn",
    "phone",
    "ipv4",
    "ipv6",
    "jwt",
    "aws_access_key",
    "private_key",
    "api_key",
]
DETECTORS: Final[tuple[str, ...]] = get_args(Detector)

Action = Literal["allow", "review", "deny"]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

MaskStyle = Literal["redact", "partial", "hash", "null", "email"]

_METHOD = re.compile(r"[A-Z]+")
#: an HTTP field name (RFC 9110 §5.1, a token) where the glob characters ``*?[]!`` may appear
_HEADER_GLOB = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\[\]?-]+")

#: response headers that say how the body is framed or encoded: masking them would leave the
#: caller unable to read the response, so mask rules may not name them
FRAMING_HEADERS: Final = (
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
)

#: the keys of ConditionsConfig that only SQL statements have, and those only HTTP requests have
SQL_CONDITIONS: Final = (
    "kinds",
    "tables",
    "columns",
    "functions",
    "where",
    "locks",
    "any_parameters",
)
HTTP_CONDITIONS: Final = ("methods", "paths", "query", "headers", "json")


def _choice(what: str, choices: tuple[str, ...]) -> Any:
    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        if not isinstance(value, str):
            raise message_error(f"expected a {what}, got {describe_type(value)}")
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise message_error(f"unknown {what} {value!r}{hint}; expected one of {', '.join(choices)}")

    return check


StatementKind = Annotated[Kind, PlainValidator(_choice("statement kind", KINDS))]
DetectorName = Annotated[Detector, PlainValidator(_choice("detector", DETECTORS))]


def _to_method(value: object) -> str:
    if not isinstance(value, str) or not _METHOD.fullmatch(value.upper()):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected an HTTP method such as GET or POST, got {shown}")
    return value.upper()


def _to_path_glob(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected a URL path glob starting with '/', got {shown}")
    return value


def _to_json_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip().startswith("$"):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected a JSON path starting with '$', got {shown}")
    # Imported here: the masking package pulls in the SQL parser, which loading a config
    # without JSON paths should not pay for.
    from callgate.masking.jsonpath import JsonPathError, parse_json_path

    try:
        parse_json_path(value)
    except JsonPathError as exc:
        raise message_error(
            f"{exc}: {value!r} is not in the JSON path subset ($, .name, ['name'], [n], [*], "
            "..name)"
        ) from None
    return value.strip()


def _to_json_condition(value: object) -> str:
    if not isinstance(value, str):
        raise message_error(
            f'expected a condition such as "$.amount > 10000" or "exists $.refund", '
            f"got {describe_type(value)}"
        )
    from callgate.policy.jsoncond import ConditionError, parse_condition  # see _to_json_path

    try:
        return parse_condition(value).text
    except ConditionError as exc:
        raise message_error(f"{exc}, in {value!r}") from None


def _to_header_field(value: object) -> str:
    if not isinstance(value, str) or not _HEADER_GLOB.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected an HTTP header name (a glob allowed), got {shown}")
    return value.lower()


def _to_masked_header(value: object) -> str:
    name = _to_header_field(value)
    framing = [header for header in FRAMING_HEADERS if fnmatchcase(header, name)]
    if framing:
        raise message_error(
            f"{value!r} would mask {', '.join(framing)}, which frame the response (the caller "
            "could not read it); these are never masked"
        )
    return name


def _to_condition_header(value: object) -> str:
    name = _to_header_field(value)
    if any(ch in name for ch in "*?["):
        raise message_error(f"expected an HTTP header name (no glob), got {value!r}")
    if name == "authorization":
        raise message_error(
            "authorization carries the caller's credential, which callgate removes before "
            "policy sees the request; it cannot be a condition"
        )
    return name


HttpMethod = Annotated[str, PlainValidator(_to_method)]
PathGlob = Annotated[str, PlainValidator(_to_path_glob)]
JsonPath = Annotated[str, PlainValidator(_to_json_path)]
JsonCondition = Annotated[str, PlainValidator(_to_json_condition)]
MaskedHeader = Annotated[str, PlainValidator(_to_masked_header)]
ConditionHeader = Annotated[str, PlainValidator(_to_condition_header)]


class ValueMatchConfig(ConfigModel):
    """A condition on a query parameter or a header: ``GLOB``, ``[GLOB, …]`` or
    ``{present: true|false}`` (``{values: …}`` is the long form of the first two)."""

    #: shell globs on the (decoded) value; empty with ``present: true`` means any value
    values: tuple[str, ...] = ()
    #: false: the parameter or header must be absent
    present: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"values": (data,)}
        if isinstance(data, list | tuple):
            if not data:
                raise message_error("expected at least one glob")
            for item in data:
                if not isinstance(item, str):
                    raise message_error(_VALUE_HINT.format(describe_type(item)))
            return {"values": tuple(data)}
        if isinstance(data, dict):
            return data
        raise message_error(_VALUE_HINT.format(describe_type(data)))

    @model_validator(mode="after")
    def _consistent(self) -> ValueMatchConfig:
        if not self.present and self.values:
            raise message_error("values cannot be given with present: false")
        return self


_VALUE_HINT: Final = (
    "expected a glob, a list of globs or {{present: true|false}}, got {}; "
    'quote numbers and booleans ("true", "100")'
)


class SubjectsConfig(ConfigModel):
    """A set of callers: by group or subject (globs allowed), minus those in ``except``."""

    groups: tuple[NonEmptyStr, ...] = ()
    users: tuple[NonEmptyStr, ...] = ()
    except_: SubjectsConfig | None = Field(default=None, alias="except")

    @property
    def names_anyone(self) -> bool:
        return bool(self.groups or self.users)

    def matches(self, subject: str, groups: frozenset[str]) -> bool:
        """True when ``subject`` or one of ``groups`` is named here and not excluded."""
        named = any(fnmatchcase(subject, pattern) for pattern in self.users) or any(
            fnmatchcase(group, pattern) for pattern in self.groups for group in groups
        )
        if not named:
            return False
        return self.except_ is None or not self.except_.matches(subject, groups)


class ConditionsConfig(ConfigModel):
    """What a rule applies to. Every condition given must hold; none given: everything."""

    #: the statement has any of these kinds
    kinds: tuple[StatementKind, ...] = ()
    #: the statement touches a table matching any glob (``schema.table`` or ``table``)
    tables: tuple[NonEmptyStr, ...] = ()
    #: the statement reads or writes a column matching any glob (``table.column``)
    columns: tuple[NonEmptyStr, ...] = ()
    #: the statement calls a function matching any glob
    functions: tuple[NonEmptyStr, ...] = ()
    #: ``absent``: an UPDATE or DELETE without a WHERE clause
    where: Literal["absent"] | None = None
    #: true: the statement takes row locks (SELECT … FOR UPDATE/SHARE); false: it does not
    locks: StrictBool | None = None
    #: HTTP: the request method is one of these
    methods: tuple[HttpMethod, ...] = ()
    #: HTTP: the request path matches any glob
    paths: tuple[PathGlob, ...] = ()
    #: HTTP: query parameters (decoded name → condition on its values)
    query: dict[NonEmptyStr, ValueMatchConfig] = Field(default_factory=dict)
    #: HTTP: request headers (lower-cased name → condition on its values)
    headers: dict[ConditionHeader, ValueMatchConfig] = Field(default_factory=dict)
    #: HTTP: conditions on the JSON request body (``"$.amount > 10000"``, ``"exists $.x"``)
    json_conditions: tuple[JsonCondition, ...] = Field(default=(), alias="json")
    #: true: the statement is sent with bind parameters
    any_parameters: StrictBool = False

    @model_validator(mode="after")
    def _one_protocol(self) -> ConditionsConfig:
        sql = self.sql_keys
        http = self.http_keys
        if sql and http:
            raise message_error(
                f"a rule has SQL conditions ({', '.join(SQL_CONDITIONS)}) or HTTP conditions "
                f"({', '.join(HTTP_CONDITIONS)}), not both; found {', '.join(sql)} and "
                f"{', '.join(http)} (write two rules)"
            )
        return self

    @property
    def sql_keys(self) -> list[str]:
        """The SQL conditions given."""
        return [
            key
            for key, value in (
                ("kinds", self.kinds),
                ("tables", self.tables),
                ("columns", self.columns),
                ("functions", self.functions),
                ("where", self.where is not None),
                ("locks", self.locks is not None),
                ("any_parameters", self.any_parameters),
            )
            if value
        ]

    @property
    def http_keys(self) -> list[str]:
        """The HTTP conditions given."""
        return [
            key
            for key, value in (
                ("methods", self.methods),
                ("paths", self.paths),
                ("query", self.query),
                ("headers", self.headers),
                ("json", self.json_conditions),
            )
            if value
        ]

    @property
    def matches_everything(self) -> bool:
        return self == _EVERYTHING


_EVERYTHING: Final = ConditionsConfig()


class RuleConfig(ConfigModel):
    """One rule, written ``{allow: {...}}``, ``{review: {...}}`` or ``{deny: {...}}``."""

    action: Action
    when: ConditionsConfig = _EVERYTHING

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise message_error(
                f"expected a rule such as {{allow: {{kinds: [select]}}}}, got {describe_type(data)}"
            )
        if "action" in data:  # already in model form (built in code)
            return data
        actions = [key for key in ACTIONS if key in data]
        others = [key for key in data if key not in ACTIONS]
        if others:
            raise path_error(
                str(others[0]), f"unknown key {others[0]!r}; a rule is one of allow, review, deny"
            )
        if len(actions) != 1:
            found = " and ".join(actions) if actions else "none"
            raise message_error(f"a rule has exactly one of allow, review, deny; found {found}")
        action = actions[0]
        conditions = data[action]
        return {"action": action, "when": {} if conditions is None else conditions}


class MaskRuleConfig(ConfigModel):
    """What to mask: exactly one of ``columns`` (globs), ``detect`` (detectors), ``json``
    (JSON paths into HTTP bodies), ``headers`` (HTTP response headers)."""

    #: ``table.column`` globs
    columns: tuple[NonEmptyStr, ...] | None = Field(default=None, min_length=1)
    #: content detectors, applied to every text value
    detect: tuple[DetectorName, ...] | None = Field(default=None, min_length=1)
    #: JSON paths into HTTP/JSON bodies (YAML key ``json``)
    json_paths: tuple[JsonPath, ...] | None = Field(default=None, alias="json", min_length=1)
    #: HTTP response header names (globs, any case); ``set-cookie`` masks the cookie values
    headers: tuple[MaskedHeader, ...] | None = Field(default=None, min_length=1)
    style: MaskStyle = "redact"
    #: partial: how many trailing characters stay visible
    keep: NonNegativeInt = 4
    #: when callgate cannot tell which column a value comes from: mask it anyway, or refuse
    on_unknown: Literal["mask", "deny"] = "mask"

    @model_validator(mode="after")
    def _exactly_one(self) -> MaskRuleConfig:
        chosen = [
            key
            for key, value in (
                ("columns", self.columns),
                ("detect", self.detect),
                ("json", self.json_paths),
                ("headers", self.headers),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            found = " and ".join(chosen) if chosen else "none"
            raise message_error(
                f"expected exactly one of columns, detect, json, headers; found {found}"
            )
        if "keep" in self.model_fields_set and self.style != "partial":
            raise path_error("keep", "keep is only used with style: partial")
        return self


class PolicyConfig(ConfigModel):
    name: NonEmptyStr
    subjects: SubjectsConfig
    #: connection names, or ``"*"`` for every connection
    connections: tuple[NonEmptyStr, ...] = Field(min_length=1)
    rules: tuple[RuleConfig, ...] = ()
    mask: tuple[MaskRuleConfig, ...] = ()
    #: callers who see values unmasked
    mask_exempt: SubjectsConfig | None = None

    @model_validator(mode="after")
    def _names_someone(self) -> PolicyConfig:
        if not self.subjects.names_anyone:
            raise path_error(
                "subjects", 'expected groups or users (use users: ["*"] for every caller)'
            )
        return self

    def applies_to(self, connection: str) -> bool:
        return "*" in self.connections or connection in self.connections
