"""The JSONPath subset callgate understands, shared by mask rules and policy conditions.

Grammar (docs/masking.md, "JSON paths")::

    path     := "$" step*
    step     := "." name | ".*" | "[" selector "]"
              | ".." name | "..*" | ".." "[" selector "]"
    selector := integer | "*" | 'string' | "string"
    name     := one or more letters, digits, "_", "-" or "$"

- ``.name`` / ``['name']``: the member ``name`` of an object (exact, case-sensitive);
- ``[n]``: element ``n`` of an array, counted from 0; ``[-1]`` is the last;
- ``[*]`` / ``.*``: every member of an object or element of an array;
- ``..name`` (and ``..[…]``, ``..*``): the selector applied to the node and every node below it.

Nothing else (filters, slices, unions, functions) is accepted: a path that is not in the
subset is a config error at load, never silently read as something narrower.

Strings inside brackets take the escapes ``\\'``, ``\\"``, ``\\\\`` and ``\\uXXXX``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final


class JsonPathError(ValueError):
    """A path outside the subset; ``position`` is the offset in the text where it goes wrong."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class Step:
    """One selector: a member name, an array index or a wildcard, maybe applied to descendants."""

    #: ``..``: applied to the node and every node below it
    descend: bool = False
    name: str | None = None
    index: int | None = None
    wildcard: bool = False

    def matches(self, key: str | int, length: int) -> bool:
        """True when the child at ``key`` (a member name, or an index in an array of
        ``length`` elements) is selected."""
        if self.wildcard:
            return True
        if isinstance(key, str):
            return key == self.name
        index = self.index
        if index is None:
            return False
        return key == (index + length if index < 0 else index)

    @property
    def text(self) -> str:
        prefix = ".." if self.descend else ""
        if self.wildcard:
            return prefix + ("*" if self.descend else "[*]")
        if self.index is not None:
            return f"{prefix}[{self.index}]"
        name = self.name or ""
        if _NAME.fullmatch(name):
            return f"{prefix or '.'}{name}"
        return f"{prefix}[{json.dumps(name)}]"


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return self.text


_NAME: Final = re.compile(r"[\w$-]+")
_INT: Final = re.compile(r"-?[0-9]+")
_SPACE: Final = re.compile(r"[ \t]*")


class Duplicates(list[Any]):
    """Every value of a member written more than once in one object (``{"a": 1, "a": 2}``).

    JSON parsers disagree on which one counts (the first, the last, an error), so policy
    conditions see all of them: :func:`loads_keeping_duplicates` stores them in one of these,
    and selection treats it as that many values of the member."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            if isinstance(previous, Duplicates):
                previous.append(value)
            else:
                out[key] = Duplicates([previous, value])
        else:
            out[key] = value
    return out


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6); a parser that accepts them compares them
    # falsely with everything, which would let `$.amount > 10000` miss.
    raise ValueError(f"{name} is not JSON")


def loads_keeping_duplicates(data: bytes | str) -> Any:
    """Strict JSON (no ``NaN``/``Infinity``), with repeated members kept as :class:`Duplicates`.

    Raises ``ValueError`` (including ``RecursionError`` for absurd nesting, turned into
    ``ValueError``) when ``data`` is not JSON."""
    try:
        return json.loads(data, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


# --- parsing --------------------------------------------------------------------------------


def _string(text: str, pos: int) -> tuple[str, int]:
    """A quoted string starting at ``text[pos]`` (the quote); returns it and the end."""
    quote = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if nxt == "u":
                digits = text[i + 2 : i + 6]
                if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise JsonPathError("expected four hex digits after \\u", i)
                out.append(chr(int(digits, 16)))
                i += 6
                continue
            if nxt not in ("\\", "'", '"'):
                raise JsonPathError(f"unknown escape \\{nxt}", i)
            out.append(nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    raise JsonPathError("unterminated string", pos)


def _bracket(text: str, pos: int, descend: bool) -> tuple[Step, int]:
    """``[…]`` starting at ``text[pos]`` (the ``[``)."""
    i = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if i >= len(text):
        raise JsonPathError("unterminated [", pos)
    ch = text[i]
    step: Step
    if ch == "*":
        step, i = Step(descend=descend, wildcard=True), i + 1
    elif ch in ("'", '"'):
        name, i = _string(text, i)
        step = Step(descend=descend, name=name)
    elif (m := _INT.match(text, i)) is not None:
        step, i = Step(descend=descend, index=int(m.group())), m.end()
    else:
        raise JsonPathError(
            "expected an index, * or a quoted name inside [ ] (filters, slices and unions "
            "are not supported)",
            i,
        )
    i = _SPACE.match(text, i).end()  # type: ignore[union-attr]
    if i < len(text) and text[i] in ":,":
        raise JsonPathError("slices and unions are not supported (one index, * or name)", i)
    if i >= len(text) or text[i] != "]":
        raise JsonPathError("expected ]", i)
    return step, i + 1


def parse_prefix(text: str, pos: int = 0) -> tuple[JsonPath, int]:
    """The path starting at ``text[pos]``, and where it ends: the first character that cannot
    continue it (a space, an operator). Raises :class:`JsonPathError`."""
    if not text.startswith("$", pos):
        raise JsonPathError("expected a JSON path starting with $", pos)
    i = pos + 1
    steps: list[Step] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "[":
            step, i = _bracket(text, i, descend=False)
        elif ch == ".":
            descend = text.startswith("..", i)
            i += 2 if descend else 1
            if i < n and text[i] == ".":
                raise JsonPathError("expected a name, * or [ after ..", i)
            if i < n and text[i] == "*":
                step, i = Step(descend=descend, wildcard=True), i + 1
            elif descend and i < n and text[i] == "[":
                step, i = _bracket(text, i, descend=True)
            else:
                m = _NAME.match(text, i)
                if m is None:
                    after = ".." if descend else "."
                    raise JsonPathError(f"expected a member name, * or [ after {after}", i)
                step, i = Step(descend=descend, name=m.group()), m.end()
        else:
            break
        steps.append(step)
    return JsonPath(text[pos:i], tuple(steps)), i


@lru_cache(maxsize=4096)
def parse_json_path(text: str) -> JsonPath:
    """The whole of ``text`` (surrounding spaces allowed) as a path. Raises
    :class:`JsonPathError`."""
    stripped = text.strip()
    offset = len(text) - len(text.lstrip())
    try:
        path, end = parse_prefix(stripped)
    except JsonPathError as exc:
        raise JsonPathError(exc.message, exc.position + offset) from None
    if end != len(stripped):
        raise JsonPathError(f"unexpected {stripped[end]!r}", end + offset)
    return path


# --- selection ------------------------------------------------------------------------------


def _children(node: Any) -> Iterator[tuple[str | int, Any, int]]:
    """``(key, child, length)`` for each child of ``node`` (a repeated member once per value)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, Duplicates):
                for item in value:
                    yield key, item, 0
            else:
                yield key, value, 0
    elif isinstance(node, list):
        length = len(node)
        for index, value in enumerate(node):
            yield index, value, length


def _self_and_below(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, dict | list):
            stack.extend(child for _, child, _ in _children(current))


def _select_step(node: Any, step: Step) -> Iterator[Any]:
    if step.name is not None and not step.descend:
        # the common case, without walking every member
        if isinstance(node, dict) and step.name in node:
            value = node[step.name]
            if isinstance(value, Duplicates):
                yield from value
            else:
                yield value
        return
    for key, child, length in _children(node):
        if step.matches(key, length):
            yield child


def select(doc: Any, path: JsonPath) -> list[Any]:
    """Every value ``path`` selects in ``doc`` (parsed JSON), in no particular order."""
    current = [doc]
    for step in path.steps:
        nodes: Iterator[Any] | list[Any] = current
        if step.descend:
            nodes = (n for top in current for n in _self_and_below(top))
        current = [child for node in nodes for child in _select_step(node, step)]
        if not current:
            break
    return current
