"""Scrubbing ErrorResponse and NoticeResponse fields (§55.8) of masked values.

The server puts values in messages: a unique violation's detail ``Key (email)=(a@b.com) already
exists.``, a check violation's ``Failing row contains (…)``, a failed cast's ``invalid input
syntax for type integer: "a@b.com"``, a ``RAISE`` in a function with anything at all. What is
hidden depends on the statement (:class:`~callgate.masking.plan.MessageScrub`):

* always, when column rules apply: the values of ``Key (…)=(…)`` when a named column (of the
  table in the ``t`` field) is covered by a rule, or when the key is an expression; the row of
  ``Failing row contains (…)`` when the table may have a covered column;
* ``values`` (the statement touches a covered column, or a result column of unknown source):
  every other detail is replaced; quoted values in the message and context of data errors (class
  22) are replaced; messages of ``RAISE`` (P0001, and notices with 00000) are replaced;
* ``all`` (part of the statement cannot be seen through: a function, view, DO, CALL): message,
  detail, hint, context and internal query are replaced, keeping severity and SQLSTATE;
* content detectors, when they apply, replace their hits in every text field left.

Identifiers (schema, table, column, constraint, data type names) are kept: they are not values.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from callgate.masking.lineage import Source
from callgate.masking.styles import REDACTED, replace_hits

if TYPE_CHECKING:
    from callgate.masking.plan import MaskPlan, MaskRules

#: fields whose text may quote values (message, detail, hint, context, internal query)
TEXT_FIELDS: Final = frozenset("MDHWq")
HIDDEN_DETAIL: Final = "[detail hidden by callgate: it may contain masked values]"
HIDDEN_MESSAGE: Final = "[message hidden by callgate: it may contain masked values]"


class MessageScrub(StrEnum):
    """How much of an ErrorResponse/NoticeResponse is hidden (see :mod:`.notices`)."""

    #: only detector hits and ``Key (…)=(…)``/``Failing row`` details of masked columns
    STRUCTURED = "structured"
    #: the statement touches masked columns: details and quoted values in messages go too
    VALUES = "values"
    #: part of the statement cannot be seen through: message, detail, hint and context go
    ALL = "all"


_KEY: Final = re.compile(
    r"^(?P<head>Key \((?P<cols>.*?)\)=\()(?P<vals>.*)(?P<tail>\) (?:already exists|is not "
    r"present in table .*|is still referenced from table .*|is duplicated|conflicts with "
    r"existing key .*))\.$",
    re.DOTALL,
)
_FAILING_ROW: Final = re.compile(r"^Failing row contains \(.*\)\.$", re.DOTALL)
_QUOTED: Final = re.compile(r'"(?:[^"]|"")*"')
_IDENT: Final = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")$')


def decode_fields(body: bytes) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            end = n  # unterminated: take the rest, it is scrubbed like any value
        fields.append((code, body[pos + 1 : end].decode("utf-8", "replace")))
        pos = end + 1
    return fields


def encode_fields(fields: list[tuple[str, str]]) -> bytes:
    parts = [
        code.encode() + value.replace("\0", "").encode("utf-8") + b"\0" for code, value in fields
    ]
    parts.append(b"\0")
    return b"".join(parts)


def scrub_error_fields(body: bytes, plan: MaskPlan) -> bytes:
    """The ErrorResponse/NoticeResponse body to send the client (``body`` when unchanged)."""
    rules = plan.rules
    if rules.is_empty:
        return body
    fields = decode_fields(body)
    values = dict(fields)
    sqlstate = values.get("C", "")
    schema, table = values.get("s"), values.get("t")
    mode = plan.messages
    raise_ = sqlstate == "P0001" or sqlstate == "00000"
    # class 22 (data exception) messages quote the offending value; class 23 messages name only
    # constraints and columns, their values are in the detail
    data_error = sqlstate.startswith("22")
    out: list[tuple[str, str]] = []
    for code, value in fields:
        if code not in TEXT_FIELDS:
            out.append((code, value))
            continue
        if mode == MessageScrub.ALL:
            if code == "M":
                out.append((code, HIDDEN_MESSAGE))
            continue
        new = value
        if rules.columns:
            if code == "D":
                new = _scrub_detail(new, rules, schema, table, mode == MessageScrub.VALUES)
            elif mode == MessageScrub.VALUES and code == "M" and raise_:
                new = HIDDEN_MESSAGE
            elif mode == MessageScrub.VALUES and code in "MW" and data_error:
                new = _QUOTED.sub(f'"{REDACTED}"', new)
            elif mode == MessageScrub.VALUES and code in "Hq" and (raise_ or data_error):
                continue
        if rules.detectors is not None:
            hits = rules.detectors.find(new)
            if hits:
                replaced = replace_hits(new, hits, rules.detector_styles)
                new = replaced if replaced is not None else HIDDEN_DETAIL
        out.append((code, new))
    if out == fields:
        return body
    return encode_fields(out)


def _scrub_detail(
    detail: str, rules: MaskRules, schema: str | None, table: str | None, strict: bool
) -> str:
    key = _KEY.match(detail)
    if key is not None:
        if not _key_covered(key.group("cols"), rules, schema, table):
            return detail
        tail = key.group("tail")
        if "conflicts with existing key" in tail:
            tail = re.sub(r"=\(.*\)$", f"=({REDACTED})", tail, flags=re.DOTALL)
        return f"{key.group('head')}{REDACTED}{tail}."
    if _FAILING_ROW.match(detail):
        if table is None or rules.covers_any([Source(schema, table, "*")]):
            return f"Failing row contains ({REDACTED})."
        return detail
    return HIDDEN_DETAIL if strict else detail


def _key_covered(cols: str, rules: MaskRules, schema: str | None, table: str | None) -> bool:
    names = [part.strip() for part in cols.split(",")]
    if not all(_IDENT.match(name) for name in names):
        names = ["*"]  # an expression index: any column may be inside
    else:
        names = [n[1:-1].replace('""', '"') if n.startswith('"') else n for n in names]
    if table is None:
        return any(
            glob.column.match(name) or name == "*"
            for rule in rules.columns
            for glob in rule.globs
            for name in names
        )
    return rules.covers_any(Source(schema, table, name) for name in names)
