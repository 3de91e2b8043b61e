"""What a walk of the parse tree collects (:class:`Facts`) and where it stands (:class:`Scope`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Facts:
    """What the walk found; turned into a frozen Classification by classify.py."""

    kinds: set[str] = field(default_factory=set)
    read: set[tuple[str | None, str]] = field(default_factory=set)
    written: set[tuple[str | None, str]] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    where_absent: bool = False
    locks: bool = False
    statement_count: int = 0
    prepares: list[tuple[str, Facts]] = field(default_factory=list)
    executes: list[str] = field(default_factory=list)
    deallocates: list[str] = field(default_factory=list)
    sets_search_path: bool = False
    #: the result depends on a constant's value (set_config('role', …)): never cache by shape
    literal_sensitive: bool = False

    def merge(self, other: Facts) -> None:
        self.kinds |= other.kinds
        self.read |= other.read
        self.written |= other.written
        self.columns |= other.columns
        self.functions |= other.functions
        self.where_absent |= other.where_absent
        self.locks |= other.locks
        self.prepares += other.prepares
        self.executes += other.executes
        self.deallocates += other.deallocates
        self.sets_search_path |= other.sets_search_path
        self.literal_sensitive |= other.literal_sensitive


#: one query level's FROM list: alias (or table name) → table name, ``None`` if not a table
Level = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class Scope:
    #: CTE names visible here (an unqualified FROM item with such a name is not a table)
    ctes: frozenset[str] = frozenset()
    #: FROM lists of the enclosing query levels, innermost last
    levels: tuple[Level, ...] = ()
    #: False inside EXPLAIN without ANALYZE: nothing runs, so nothing adds kinds
    effective: bool = True
    #: dynamic SQL nesting
    depth: int = 0
