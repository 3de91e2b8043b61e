"""Mask plans: which output columns a statement's result must have masked, and how.

Three steps, each cheap enough for the hot path:

1. :meth:`MaskRules.for_principal` (once per session, or per policy reload): the ``mask`` rules
   of every policy that applies to the caller on the connection, minus the policies whose
   ``mask_exempt`` names the caller.
2. :meth:`MaskRules.plan` (once per statement, before it is forwarded): with the statement's
   lineage. Refuses the statement (:class:`~callgate.errors.StatementDenied`) when an output
   column's sources cannot be seen and a rule says ``on_unknown: deny``.
3. :meth:`MaskPlan.for_row_description` (once per result, at its RowDescription): with the
   columns' origins from the catalog. Gives the :class:`~callgate.masking.rows.RowRewriter`.

A column is masked when **either** signal says so: a source in its lineage matches a rule, or
its RowDescription origin does. Where neither can prove it free of masked sources (a view, a
function callgate cannot see through, an OID the catalog does not know), it is masked with the
strictest style of the column rules (``on_unknown: mask``) or the statement is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import TYPE_CHECKING, Final

from callgate.errors import StatementDenied
from callgate.masking.catalog import ColumnOrigin
from callgate.masking.copy import CopyRewriter
from callgate.masking.detectors import DetectorSet
from callgate.masking.lineage import ColumnLineage, CopyFormat, Source, StatementLineage
from callgate.masking.notices import MessageScrub
from callgate.masking.rows import (
    K_INT8_BIN,
    K_NUMERIC_BIN,
    SCAN_ALWAYS,
    SCAN_FLAGGED,
    SCAN_NEVER,
    UNSCANNED_TYPES,
    ColumnMask,
    RowDescription,
    RowRewriter,
    value_kind,
)
from callgate.masking.styles import Style, strictest
from callgate.model import Principal

if TYPE_CHECKING:
    from callgate.config import MaskRuleConfig, PolicyConfig


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(translate(text))


@dataclass(frozen=True, slots=True)
class ColumnGlob:
    """``column``, ``table.column`` or ``schema.table.column``; each part a glob."""

    text: str
    schema: re.Pattern[str] | None
    table: re.Pattern[str] | None
    column: re.Pattern[str]

    @classmethod
    def compile(cls, text: str) -> ColumnGlob:
        parts = text.split(".")
        if len(parts) > 3:
            parts = [".".join(parts[:-2]), parts[-2], parts[-1]]
        column = _pattern(parts[-1])
        table = _pattern(parts[-2]) if len(parts) >= 2 else None
        schema = _pattern(parts[-3]) if len(parts) == 3 else None
        return cls(text, schema, table, column)

    def could_match(self, source: Source) -> bool:
        """True when ``source`` is, or may be (unknown schema, ``*`` column), covered."""
        if self.table is not None and not self.table.match(source.table):
            return False
        if (
            self.schema is not None
            and source.schema is not None
            and not self.schema.match(source.schema)
        ):
            return False
        return source.column == "*" or bool(self.column.match(source.column))


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """One compiled ``mask: [{columns: …}]`` rule."""

    label: str
    globs: tuple[ColumnGlob, ...]
    style: Style
    deny_unknown: bool

    def covers(self, source: Source) -> bool:
        return any(glob.could_match(source) for glob in self.globs)


@dataclass(frozen=True, slots=True)
class DetectRule:
    """One compiled ``mask: [{detect: …}]`` rule."""

    label: str
    detectors: tuple[str, ...]
    style: Style


def applicable_mask_rules(
    policies: Iterable[PolicyConfig], principal: Principal, connection: str, granted: Iterable[str]
) -> list[tuple[str, MaskRuleConfig]]:
    """``(label, rule)`` for every mask rule that applies to the caller on the connection: the
    policies naming the caller (or granted to it by an access window, whatever their
    ``subjects`` say), minus those whose ``mask_exempt`` names it. Every protocol's plan starts
    here."""
    extra = frozenset(granted)
    out: list[tuple[str, MaskRuleConfig]] = []
    for policy in policies:
        if not policy.applies_to(connection):
            continue
        if policy.name not in extra and not policy.subjects.matches(
            principal.subject, principal.groups
        ):
            continue
        exempt = policy.mask_exempt
        if exempt is not None and exempt.matches(principal.subject, principal.groups):
            continue
        out.extend((f"{policy.name} / mask[{i}]", rule) for i, rule in enumerate(policy.mask))
    return out


@dataclass(frozen=True, slots=True)
class MaskRules:
    """Every mask rule that applies to one caller on one connection."""

    columns: tuple[ColumnRule, ...] = ()
    detects: tuple[DetectRule, ...] = ()
    detectors: DetectorSet | None = None
    #: detector name → the style of its hits (the strictest rule naming it)
    detector_styles: Mapping[str, Style] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.columns and self.detectors is None

    @classmethod
    def for_principal(
        cls,
        policies: Iterable[PolicyConfig],
        principal: Principal,
        connection: str,
        *,
        secret: bytes,
        granted: Iterable[str] = (),
    ) -> MaskRules:
        """The rules of ``policies`` (the ones that apply on ``connection``) for ``principal``.

        ``granted``: names of policies an access grant applies to the caller whatever their
        ``subjects`` say (their ``mask_exempt`` still counts)."""
        columns: list[ColumnRule] = []
        detects: list[DetectRule] = []
        for label, rule in applicable_mask_rules(policies, principal, connection, granted):
            style = style_of(rule, secret)
            if rule.columns:
                columns.append(
                    ColumnRule(
                        label,
                        tuple(ColumnGlob.compile(g) for g in rule.columns),
                        style,
                        rule.on_unknown == "deny",
                    )
                )
            elif rule.detect:
                detects.append(DetectRule(label, tuple(rule.detect), style))
        return cls.compile(columns, detects)

    @classmethod
    def compile(cls, columns: Sequence[ColumnRule], detects: Sequence[DetectRule]) -> MaskRules:
        styles: dict[str, Style] = {}
        for rule in detects:
            for name in rule.detectors:
                best = strictest([rule.style, *([styles[name]] if name in styles else [])])
                if best is not None:
                    styles[name] = best
        detectors = DetectorSet.compile(styles) if styles else None
        return cls(tuple(columns), tuple(detects), detectors, styles)

    # -- per statement ------------------------------------------------------------------------

    def plan(self, lineage: StatementLineage | None) -> MaskPlan:
        """The plan for a statement whose lineage is ``lineage`` (``None``: not known).

        Raises :class:`StatementDenied` when an output column cannot be proven free of masked
        sources and a column rule says ``on_unknown: deny``.
        """
        if self.is_empty:
            return MaskPlan(self, lineage, MessageScrub.STRUCTURED)
        if lineage is not None and lineage.items is not None and self.columns:
            for item in lineage.items:
                if item.unknown and not self.covers_any(item.sources):
                    self.check_unknown()
        return MaskPlan(self, lineage, self._scrub(lineage))

    def check_unknown(self) -> None:
        deny = [rule for rule in self.columns if rule.deny_unknown]
        if deny:
            raise StatementDenied(
                f"denied by {deny[0].label}: callgate cannot tell which columns feed part of "
                "the result (a view, a function or a relation it cannot see through), and the "
                "rule says on_unknown: deny"
            )

    def covers_any(self, sources: Iterable[Source]) -> bool:
        return any(rule.covers(s) for s in sources for rule in self.columns)

    def _scrub(self, lineage: StatementLineage | None) -> MessageScrub:
        if not self.columns:
            return MessageScrub.STRUCTURED
        if lineage is None or lineage.opaque:
            return MessageScrub.ALL
        if self.covers_any(lineage.referenced) or any(item.unknown for item in lineage.items or ()):
            return MessageScrub.VALUES
        return MessageScrub.STRUCTURED

    def style_for(self, sources: Iterable[Source]) -> tuple[Style | None, str]:
        """The strictest style of the column rules covering any of ``sources``, and why."""
        matched = [
            (rule, source) for source in sources for rule in self.columns if rule.covers(source)
        ]
        if not matched:
            return None, ""
        best = strictest(rule.style for rule, _ in matched)
        return best, ", ".join(sorted({str(source) for _, source in matched}))

    @property
    def unknown_style(self) -> Style | None:
        return strictest(rule.style for rule in self.columns)


def style_of(rule: MaskRuleConfig, secret: bytes) -> Style:
    return Style(rule.style, keep=rule.keep, secret=secret)


#: a plan that masks nothing
_NO_RULES: Final = MaskRules()


@dataclass(frozen=True, slots=True)
class MaskPlan:
    """What to mask in one statement's results."""

    rules: MaskRules
    lineage: StatementLineage | None
    messages: MessageScrub = MessageScrub.STRUCTURED

    @property
    def is_noop(self) -> bool:
        """Nothing of this statement's results can need masking: pass everything in bulk."""
        return self.rules.is_empty

    def for_row_description(
        self,
        description: RowDescription,
        origins: Sequence[ColumnOrigin] | None = None,
        formats: Sequence[int] | None = None,
    ) -> RowRewriter:
        """The rewriter for the result that ``description`` starts.

        ``origins``: :func:`~callgate.masking.catalog.resolve_columns` of the description, or
        ``None`` when the engine has no catalog (origins then prove nothing). ``formats``: the
        result format codes of the Bind (0, 1 or n codes, §55.7 Bind) when the description came
        from a Describe of a statement, whose format codes are not yet known; ``None`` uses the
        description's own.

        Raises :class:`StatementDenied` for an unknown column under ``on_unknown: deny``.
        """
        fields = description.fields
        count = len(fields)
        if origins is not None and len(origins) != count:
            raise ValueError("one origin per column is needed")
        fmts = _formats(formats, count) if formats is not None else [f.format for f in fields]
        rules = self.rules
        if rules.is_empty:
            return RowRewriter(description, (None,) * count)
        lineage = self.lineage.columns(count) if self.lineage is not None else None
        masks: list[ColumnMask | None] = []
        for index, f in enumerate(fields):
            style, reason = (None, "")
            if rules.columns:
                origin = origins[index] if origins is not None else None
                col = lineage[index] if lineage is not None else None
                style, reason = self._column_style(col, origin)
            kind = value_kind(f.type_oid, fmts[index])
            scan = SCAN_NEVER
            detectors = rules.detectors
            if detectors is not None and f.type_oid not in UNSCANNED_TYPES:
                if kind not in (K_INT8_BIN, K_NUMERIC_BIN):
                    scan = SCAN_FLAGGED
                elif "credit_card" in detectors.names:
                    # binary numbers: digits the flags cannot see; only a card number can hide
                    scan = SCAN_ALWAYS
            if style is None and scan == SCAN_NEVER:
                masks.append(None)
            else:
                masks.append(ColumnMask(style, kind, scan, reason))
        return RowRewriter(
            description,
            tuple(masks),
            rules.detectors,
            rules.detector_styles,
        )

    def _column_style(
        self, col: ColumnLineage | None, origin: ColumnOrigin | None
    ) -> tuple[Style | None, str]:
        rules = self.rules
        exact = [s for s in col.sources if s.column != "*"] if col is not None else []
        if origin is not None and origin.column is not None and origin.column.kind == "table":
            # A plain column reference to a table: its value is exactly that column's.
            return rules.style_for([origin.column.source, *exact])
        sources = list(col.sources) if col is not None else []
        if origin is not None and origin.column is not None:
            sources.append(origin.column.source)  # a view's column: rules may name the view
        style, reason = rules.style_for(sources)
        if style is not None:
            return style, reason
        unknown = col is None or col.unknown
        if origin is not None and origin.status == "unresolved":
            unknown = True
        if origin is not None and origin.column is not None:  # a view or other relation
            unknown = True
        if not unknown:
            return None, ""
        rules.check_unknown()
        return rules.unknown_style, "unknown source"

    def for_copy(self, copy_format: CopyFormat | None, column_count: int) -> CopyRewriter:
        """The rewriter of a ``COPY … TO STDOUT`` result of ``column_count`` columns (from the
        CopyOutResponse). ``copy_format``: from the statement's lineage (``None``: unknown,
        which is refused when anything may need masking)."""
        rules = self.rules
        if rules.is_empty:
            return CopyRewriter(copy_format or CopyFormat(), (None,) * column_count)
        lineage = self.lineage.columns(column_count) if self.lineage is not None else None
        styles: list[Style | None] = []
        for index in range(column_count):
            style: Style | None = None
            if rules.columns:
                style, _ = self._column_style(lineage[index] if lineage is not None else None, None)
            styles.append(style)
        return CopyRewriter(copy_format, tuple(styles), rules.detectors, rules.detector_styles)


def _formats(codes: Sequence[int], count: int) -> list[int]:
    """Bind's result format codes for ``count`` columns (§55.7 Bind)."""
    if not codes:
        return [0] * count
    if len(codes) == 1:
        return [codes[0]] * count
    if len(codes) != count:
        raise ValueError("result format codes do not match the column count")
    return list(codes)


def no_masking() -> MaskPlan:
    """The plan of a caller no mask rule applies to."""
    return MaskPlan(_NO_RULES, None)
