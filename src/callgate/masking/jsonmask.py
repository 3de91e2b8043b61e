"""Masking of parsed JSON documents: fields by JSON path, and content detectors everywhere.

One walk over the document does both. Every path rule is followed as a small automaton (a set of
``(rule, step)`` states per node), so ``..name`` and ``[*]`` cost one pass however many rules
there are, and parts of the document no path can reach and no detector needs are not walked.

What a masked value becomes (docs/masking.md, "HTTP bodies"):

- a path that selects an object or array masks every scalar inside it (members' names stay);
- a string is masked as a text column would be (:meth:`Style.whole`); ``null`` style gives
  JSON ``null``;
- a number is masked as its JSON text, so the result is a **string** (``"************1111"``,
  ``"tok_…"``, ``"[REDACTED]"``) or ``null``: a number-shaped token would be mistaken for data;
- a boolean becomes ``"[REDACTED]"`` (``partial`` and ``email`` would show most of it), a
  ``tok_…`` of ``true``/``false`` under ``hash``, or ``null``;
- ``null`` stays ``null`` (there is nothing to hide);
- detectors look at every string, every number's text and every member **name**; a hit in a name
  is replaced in the name (``null`` style: ``[REDACTED]``, since a name cannot be null), and two
  names that become equal are told apart with ``~2``, ``~3`` … so that no member is lost.

When several rules select one value, the strictest style wins; a value masked whole by a path rule
is not looked at by detectors again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from callgate.masking.detectors import DetectorSet
from callgate.masking.errors import MaskingFailed
from callgate.masking.jsonpath import JsonPath
from callgate.masking.styles import REDACTED, Style, replace_hits, strictest

#: ``(rule index, step index)``: a rule's path followed up to that step
_State = tuple[int, int]
_NO_STATES: Final[tuple[_State, ...]] = ()
#: texts up to this long have their detector results remembered during one walk, up to this many
_SEEN_LENGTH: Final = 64
_SEEN_ENTRIES: Final = 4096
_UNSEEN: Final = object()
_UNCHANGED: Final = object()


@dataclass(frozen=True, slots=True)
class PathRule:
    """One JSON path of a ``mask: [{json: …}]`` rule, with the rule's style."""

    path: JsonPath
    style: Style
    label: str


class _Walk:
    """One masking pass; counts what it changed."""

    __slots__ = ("count", "detectors", "masker", "seen")

    def __init__(self, masker: JsonMasker, detectors: DetectorSet | None) -> None:
        self.masker = masker
        self.detectors = detectors
        self.count = 0
        #: detector results of short texts already looked at: API responses repeat their
        #: member names and enumerated values in every record
        self.seen: dict[str, object] = {}

    def node(self, value: Any, states: tuple[_State, ...], inherited: Style | None) -> Any:
        masker = self.masker
        style = inherited
        if states:
            ends = masker.ends
            chosen = [masker.rules[r].style for r, s in states if s == ends[r]]
            if chosen:
                style = strictest([*chosen, *([inherited] if inherited is not None else [])])
        if isinstance(value, dict):
            return self._object(value, states, style)
        if isinstance(value, list):
            return self._array(value, states, style)
        if style is not None:
            return self._whole(value, style)
        if self.detectors is not None:
            return self._detect(value)
        return value

    def _object(
        self, value: dict[str, Any], states: tuple[_State, ...], style: Style | None
    ) -> dict[str, Any]:
        advance = self.masker.advance
        detectors = self.detectors
        deep = style is not None or detectors is not None
        if not deep:
            names = self.masker.member_names(states)
            if names is not None:
                return self._members(value, states, names)
        out: dict[str, Any] = {}
        changed = False
        for key, child in value.items():
            child_states = advance(states, key, 0) if states else _NO_STATES
            new_key = self._key(key, out) if detectors is not None else key
            new = self.node(child, child_states, style) if child_states or deep else child
            if new is not child or new_key != key:
                changed = True
            out[new_key] = new
        return out if changed else value

    def _members(
        self, value: dict[str, Any], states: tuple[_State, ...], names: Sequence[str]
    ) -> dict[str, Any]:
        """Only the named members can be reached (and nothing else needs looking at)."""
        out: dict[str, Any] | None = None
        for name in names:
            if name not in value:
                continue
            child = value[name]
            new = self.node(child, self.masker.advance(states, name, 0), None)
            if new is not child:
                if out is None:
                    out = dict(value)
                out[name] = new
        return value if out is None else out

    def _array(self, value: list[Any], states: tuple[_State, ...], style: Style | None) -> Any:
        advance = self.masker.advance
        deep = style is not None or self.detectors is not None
        length = len(value)
        out: list[Any] | None = None
        for index, child in enumerate(value):
            child_states = advance(states, index, length) if states else _NO_STATES
            if not child_states and not deep:
                continue
            new = self.node(child, child_states, style)
            if new is not child:
                if out is None:
                    out = list(value)
                out[index] = new
        return value if out is None else out

    def _whole(self, value: Any, style: Style) -> Any:
        if value is None:
            return None
        self.count += 1
        if isinstance(value, str):
            return style.whole(value)
        if isinstance(value, bool):
            text = "true" if value else "false"
            if style.name == "hash":
                return style.token(text.encode("ascii"))
            return None if style.name == "null" else REDACTED
        return style.whole(json.dumps(value))

    def _detect(self, value: Any) -> Any:
        detectors = self.detectors
        if detectors is None or value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = value
            short = len(text) <= _SEEN_LENGTH
            cached = self.seen.get(text, _UNSEEN) if short else _UNSEEN
            if cached is _UNCHANGED:
                return value
            if cached is not _UNSEEN:
                self.count += 1
                return cached
        else:
            text = str(value) if isinstance(value, int) else json.dumps(value)
            short = False
        hits = detectors.find(text)
        new = replace_hits(text, hits, self.masker.detector_styles) if hits else None
        if short and len(self.seen) < _SEEN_ENTRIES:
            self.seen[text] = new if hits else _UNCHANGED
        if not hits:
            return value
        self.count += 1
        return new

    def _key(self, key: str, taken: Mapping[str, Any]) -> str:
        detectors = self.detectors
        if detectors is None:
            return key
        new = self._key_text(key, detectors)
        if new in taken:
            suffix = 2
            while f"{new}~{suffix}" in taken:
                suffix += 1
            new = f"{new}~{suffix}"
        return new

    def _key_text(self, key: str, detectors: DetectorSet) -> str:
        """``key`` with detector hits replaced (a name cannot be null: ``[REDACTED]``)."""
        cache_key = "\x00k" + key  # names and values mask differently under ``null``
        cached = self.seen.get(cache_key, _UNSEEN)
        if cached is _UNCHANGED:
            return key
        if isinstance(cached, str):
            self.count += 1
            return cached
        hits = detectors.find(key)
        new = key
        if hits:
            self.count += 1
            styles = self.masker.detector_styles
            parts: list[str] = []
            last = 0
            for start, end, name in hits:
                parts.append(key[last:start])
                parts.append(styles[name].hit(key[start:end], name) or REDACTED)
                last = end
            parts.append(key[last:])
            new = "".join(parts)
        if len(key) <= _SEEN_LENGTH and len(self.seen) < _SEEN_ENTRIES:
            self.seen[cache_key] = new if hits else _UNCHANGED
        return new


@dataclass(frozen=True, slots=True)
class JsonMasker:
    """Path rules and detectors, compiled for masking parsed JSON documents."""

    rules: tuple[PathRule, ...]
    detectors: DetectorSet | None
    detector_styles: Mapping[str, Style]
    #: per rule, the number of steps of its path (a state at that step selects the node)
    ends: tuple[int, ...]

    @classmethod
    def compile(
        cls,
        rules: Sequence[PathRule],
        detectors: DetectorSet | None,
        detector_styles: Mapping[str, Style],
    ) -> JsonMasker:
        return cls(
            tuple(rules), detectors, detector_styles, tuple(len(r.path.steps) for r in rules)
        )

    @property
    def is_empty(self) -> bool:
        return not self.rules and self.detectors is None

    def advance(
        self, states: tuple[_State, ...], key: str | int, length: int
    ) -> tuple[_State, ...]:
        """The states at the child ``key`` of a node in ``states``."""
        out: list[_State] = []
        rules = self.rules
        ends = self.ends
        for r, s in states:
            if s == ends[r]:
                continue
            step = rules[r].path.steps[s]
            if step.descend:
                out.append((r, s))  # ``..``: keep looking below
            if step.matches(key, length):
                out.append((r, s + 1))
        if len(out) > 1:
            return tuple(dict.fromkeys(out))
        return tuple(out)

    def member_names(self, states: tuple[_State, ...]) -> list[str] | None:
        """The member names the states can step into, when every one steps by a plain name
        (``.name``, not ``..`` or ``*``); ``None`` otherwise."""
        names: list[str] = []
        rules = self.rules
        ends = self.ends
        for r, s in states:
            if s == ends[r]:
                return None
            step = rules[r].path.steps[s]
            if step.descend or step.name is None:
                return None
            if step.name not in names:
                names.append(step.name)
        return names

    def mask(self, doc: Any, *, scan: bool = True) -> tuple[Any, int]:
        """``doc`` masked (the same object when nothing changed) and how many values were.

        ``scan=False``: the detectors are known to find nothing (a prefilter said so)."""
        walk = _Walk(self, self.detectors if scan else None)
        start = tuple((r, 0) for r in range(len(self.rules)))
        try:
            new = walk.node(doc, start, None)
        except RecursionError as exc:
            raise MaskingFailed("a JSON body is nested too deeply to mask") from exc
        return new, walk.count
