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
    if not isinstance(value, str) or not value.startswith("$"):
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise message_error(f"expected a JSON path starting with '$', got {shown}")
    return value


HttpMethod = Annotated[str, PlainValidator(_to_method)]
PathGlob = Annotated[str, PlainValidator(_to_path_glob)]
JsonPath = Annotated[str, PlainValidator(_to_json_path)]


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
    #: true: the statement is sent with bind parameters
    any_parameters: StrictBool = False

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
    """What to mask: exactly one of ``columns`` (globs), ``detect`` (detectors), ``json``."""

    #: ``table.column`` globs
    columns: tuple[NonEmptyStr, ...] | None = Field(default=None, min_length=1)
    #: content detectors, applied to every text value
    detect: tuple[DetectorName, ...] | None = Field(default=None, min_length=1)
    #: JSON paths into HTTP/JSON bodies (YAML key ``json``)
    json_paths: tuple[JsonPath, ...] | None = Field(default=None, alias="json", min_length=1)
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
            )
            if value is not None
        ]
        if len(chosen) != 1:
            found = " and ".join(chosen) if chosen else "none"
            raise message_error(f"expected exactly one of columns, detect, json; found {found}")
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
