"""Conditions on a JSON request body: ``"$.amount > 10000"``, ``"exists $.refund"``.

Grammar (docs/policy.md, "JSON body conditions")::

    condition := "exists" PATH | "not exists" PATH | PATH OP LITERAL
    OP        := "==" | "!=" | "<" | "<=" | ">" | ">="
    LITERAL   := number | 'string' | "string" | true | false | null

PATH is the JSONPath subset of :mod:`callgate.masking.jsonpath`. A comparison is judged for each
value the path selects; :meth:`JsonCondition.holds` says how those combine (any value for deny and
review rules, every value for allow rules: ambiguity never widens what is allowed).

Each value is compared the way an API that coerces types might read it, so that a caller cannot
slip past ``$.amount > 10000`` by sending ``"amount": "20000"``:

- against a number: a number compares as itself; a string that reads as a number (JSON number
  syntax, optional sign and surrounding spaces, or ``0x`` hex) compares as that number; ``null``
  and booleans never satisfy an ordering (``<`` …) and are not equal; any other value (an object,
  an array, a string that is not a number) *cannot be compared*;
- against a string: only strings compare (by code point); otherwise false;
- against ``true``/``false``: booleans, and the strings ``"true"``/``"false"`` (any case);
- against ``null``: only ``null``.

A value that cannot be compared counts as satisfying the condition for deny and review rules and
as not satisfying it for allow rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from callgate.masking.jsonpath import JsonPath, JsonPathError, parse_prefix, select

Op = Literal["==", "!=", "<", "<=", ">", ">=", "exists", "not exists"]

_OPS: Final = ("==", "!=", "<=", ">=", "<", ">")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LOOSE_NUMBER: Final = re.compile(
    r"[ \t\n\r]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\n\r]*"
)
_HEX: Final = re.compile(r"[ \t\n\r]*[+-]?0[xX][0-9a-fA-F]+[ \t\n\r]*")
_EXISTS: Final = re.compile(r"(not[ \t]+)?exists[ \t]+")
_SPACE: Final = re.compile(r"[ \t]*")
_KEYWORDS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}

#: a literal: int, float, str, bool or None
Scalar = int | float | str | bool | None


class ConditionError(ValueError):
    """A condition outside the grammar; the message says where and what was expected."""


@dataclass(frozen=True, slots=True)
class JsonCondition:
    text: str
    path: JsonPath
    op: Op
    literal: Scalar = None

    def holds(self, doc: Any, *, every: bool) -> bool:
        """Whether the condition holds for the parsed body ``doc``.

        ``every=False`` (deny and review rules): some selected value satisfies it, or cannot be
        compared. ``every=True`` (allow rules): at least one value is selected and every one
        satisfies it. ``exists``/``not exists`` look only at whether anything is selected."""
        values = select(doc, self.path)
        if self.op == "exists":
            return bool(values)
        if self.op == "not exists":
            return not values
        if not values:
            return False
        compare = _comparer(self.op, self.literal)
        if every:
            return all(compare(v) is True for v in values)
        return any(compare(v) is not False for v in values)


def _as_number(value: Any) -> int | float | None:
    """``value`` read as a number the way a lenient API might, or ``None`` if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        if _LOOSE_NUMBER.fullmatch(value):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                return float(text)
        if _HEX.fullmatch(value):
            return int(value.strip(), 16)
    return None


def _order(op: str, left: Any, right: Any) -> bool:
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _comparer(op: Op, literal: Scalar) -> Callable[[Any], bool | None]:
    """A function giving, for one selected value, True, False or None (cannot be compared)."""

    def equal(value: Any) -> bool | None:
        if literal is None:
            return value is None
        if isinstance(literal, bool):
            if isinstance(value, bool):
                return value is literal
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return (value.strip().lower() == "true") is literal
            return False
        if isinstance(literal, str):
            return isinstance(value, str) and value == literal
        if value is None or isinstance(value, bool):
            return False
        number = _as_number(value)
        if number is None:
            return None if isinstance(value, str | dict | list) else False
        return bool(number == literal)

    if op == "==":
        return equal
    if op == "!=":

        def unequal(value: Any) -> bool | None:
            same = equal(value)
            return None if same is None else not same

        return unequal

    def ordered(value: Any) -> bool | None:
        if isinstance(literal, str):
            return isinstance(value, str) and _order(op, value, literal)
        if value is None or isinstance(value, bool):
            return False
        number = _as_number(value)
        if number is None:
            return None
        return _order(op, number, literal)

    return ordered


def _literal(text: str, pos: int) -> tuple[Scalar, int]:
    if pos >= len(text):
        raise ConditionError(f"expected a value after the operator at position {pos}")
    ch = text[pos]
    if ch in ("'", '"'):
        return _quoted(text, pos)
    if (m := _NUMBER.match(text, pos)) is not None:
        number_text = m.group()
        number: int | float = (
            int(number_text) if not any(c in number_text for c in ".eE") else float(number_text)
        )
        return number, m.end()
    for word, value in _KEYWORDS.items():
        if text.startswith(word, pos):
            return value, pos + len(word)  # type: ignore[return-value]
    raise ConditionError(
        f"expected a number, a quoted string, true, false or null at position {pos}"
    )


def _quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            if nxt in ("\\", "'", '"'):
                out.append(nxt)
                i += 2
                continue
            raise ConditionError(f"unknown escape \\{nxt} at position {i}")
        out.append(ch)
        i += 1
    raise ConditionError(f"unterminated string starting at position {pos}")


def _unexpected(source: str, end: int) -> ConditionError:
    at = _SPACE.match(source, end).end()  # type: ignore[union-attr]
    return ConditionError(f"unexpected {source[at]!r} at position {at}")


@lru_cache(maxsize=4096)
def parse_condition(text: str) -> JsonCondition:
    """Parse one condition. Raises :class:`ConditionError` naming the position."""
    source = text.strip()
    exists = _EXISTS.match(source)
    try:
        if exists is not None:
            path, end = parse_prefix(source, exists.end())
            if end != len(source):
                raise _unexpected(source, end)
            op: Op = "not exists" if exists.group(1) else "exists"
            return JsonCondition(source, path, op)
        path, end = parse_prefix(source, 0)
    except JsonPathError as exc:
        raise ConditionError(str(exc)) from None
    if not path.steps:
        raise ConditionError("expected a path below $ (such as $.amount) at position 1")
    i = _SPACE.match(source, end).end()  # type: ignore[union-attr]
    op_text = next((o for o in _OPS if source.startswith(o, i)), None)
    if op_text is None:
        shown = repr(source[i]) if i < len(source) else "the end"
        raise ConditionError(
            f"expected an operator (==, !=, <, <=, >, >=) after the path, found {shown} "
            f"at position {i}; or write 'exists $.path'"
        )
    i = _SPACE.match(source, i + len(op_text)).end()  # type: ignore[union-attr]
    literal, end = _literal(source, i)
    if end != len(source):
        raise _unexpected(source, end)
    if op_text in ("<", "<=", ">", ">=") and (literal is None or isinstance(literal, bool)):
        raise ConditionError(f"{op_text} needs a number or a string, not {json.dumps(literal)}")
    return JsonCondition(source, path, op_text, literal)  # type: ignore[arg-type]
