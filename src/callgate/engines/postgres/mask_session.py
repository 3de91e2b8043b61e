"""Per-session masking state: the caller's rules, the catalog, statement lineage and plans.

* :class:`CatalogCache` (one per connection, owned by the listener): the upstream's catalog
  (:data:`~callgate.masking.CATALOG_SQL`), read over a short-lived connection of callgate's own
  so that it never disturbs a caller's session. It is fetched when a session whose caller has
  ``columns`` rules starts and the cache is empty or stale, and marked stale after any session
  on the connection sends a DDL statement; the next statement planned refreshes it. A relation
  created since the last refresh (or one another session created and did not commit yet, or the
  caller's own temporary tables) is unknown to it, which is never assumed harmless: its columns
  are masked (or refused with ``on_unknown: deny``).
* :class:`SessionMasking` (one per session with mask rules): plans each statement before it is
  forwarded (raising :class:`~callgate.errors.StatementDenied` for ``on_unknown: deny``) and owns
  the :class:`~callgate.engines.postgres.masker.ResultMasker` of the session's results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from callgate.engines.postgres import upstream as up
from callgate.engines.postgres.masker import ResultMasker, StatementMask
from callgate.engines.postgres.wire import read_message
from callgate.errors import StatementDenied, UpstreamProtocolViolation
from callgate.masking import (
    CATALOG_SQL,
    CatalogSnapshot,
    MaskRules,
    RelationInfo,
    SessionLineage,
    StatementLineage,
    no_catalog,
    statement_lineage,
    statement_lineages,
)
from callgate.masking.lineage import ColumnsOf
from callgate.protocols.postgres import messages as m

log = logging.getLogger("callgate.postgres.masking")

#: the catalog query's rows are small; a message larger than this is not a catalog row
MAX_CATALOG_MESSAGE: Final = 1 << 20
#: statement texts whose lineage is kept per session (repeated statements skip the parser)
LINEAGE_CACHE_ENTRIES: Final = 512


class CatalogCache:
    """The catalog of one connection's upstream database, shared by its sessions."""

    def __init__(self, target: up.UpstreamTarget) -> None:
        self._target = target
        self._snapshot: CatalogSnapshot | None = None
        self._stale = True
        self._lock = asyncio.Lock()
        #: bumped at every refresh: sessions key their lineage caches on it
        self.generation = 0

    def invalidate(self) -> None:
        self._stale = True

    async def get(self) -> CatalogSnapshot:
        """The current snapshot (``public`` as its search path), read again when stale."""
        if not self._stale and self._snapshot is not None:
            return self._snapshot
        async with self._lock:
            if self._stale or self._snapshot is None:
                self._stale = False  # a DDL sent while we read marks it stale again
                try:
                    rows = await fetch_catalog(self._target)
                except BaseException:
                    self._stale = True
                    raise
                self._snapshot = CatalogSnapshot.from_rows(rows)
                self.generation += 1
            return self._snapshot


async def fetch_catalog(target: up.UpstreamTarget) -> list[list[str | None]]:
    """Run :data:`CATALOG_SQL` on a connection of callgate's own and return its rows."""
    conn = await up.connect(target, ())
    try:
        conn.writer.write(m.encode_query(CATALOG_SQL))
        await conn.writer.drain()
        rows: list[list[str | None]] = []
        error: str | None = None
        while True:
            f = await asyncio.wait_for(
                read_message(conn.reader, max_size=MAX_CATALOG_MESSAGE, upstream=True),
                target.connect_timeout,
            )
            if f.type == m.BackendType.DATA_ROW:
                rows.append(m.decode_data_row_text(f.body))
            elif f.type == m.BackendType.ERROR_RESPONSE:
                error = m.decode_error_fields(f.body).message or "no message"
            elif f.type == m.BackendType.READY_FOR_QUERY:
                break
        if error is not None:
            raise UpstreamProtocolViolation(f"callgate could not read the catalog: {error}")
        if any(len(row) != 6 or any(v is None for v in row) for row in rows):
            raise UpstreamProtocolViolation("the catalog query returned malformed rows")
        return rows
    except TimeoutError as exc:
        raise UpstreamProtocolViolation("the catalog query did not finish in time") from exc
    finally:
        if not conn.writer.is_closing():
            conn.writer.write(m.TERMINATE)
        conn.writer.close()


class SessionMasking:
    """Masking for one session (see the module docstring)."""

    def __init__(
        self,
        rules: MaskRules,
        catalog: CatalogCache | None,
        *,
        max_decoded: int,
        on_masked: Callable[[int | None, list[tuple[str, str, int]]], None],
    ) -> None:
        self.rules = rules
        self.catalog = catalog if rules.columns else None
        self.lineage = SessionLineage()
        self._snapshot: CatalogSnapshot | None = None
        self._columns_of: ColumnsOf = no_catalog
        self._key: tuple[int, tuple[str, ...] | None] | None = None
        self._cache: dict[str, tuple[StatementLineage, ...]] = {}
        self._ddl_in_flight = False
        self.masker = ResultMasker(self.fallback(), max_decoded=max_decoded, on_masked=on_masked)

    def fallback(self) -> StatementMask:
        """For answers of unknown origin: every column is of unknown source."""
        return StatementMask(self.rules.plan(None), None)

    async def prepare(self, search_path: tuple[str, ...] | None, *, idle: bool) -> None:
        """Before planning a statement: the catalog as of now, with the session's search path.

        ``idle``: nothing is in flight and no transaction is open, so a DDL sent earlier has
        finished and is visible to callgate's own connection: the catalog is read again."""
        catalog = self.catalog
        if catalog is None:
            return
        if self._ddl_in_flight and idle:
            self._ddl_in_flight = False
            catalog.invalidate()
        snapshot = await catalog.get()
        key = (catalog.generation, search_path)
        if key != self._key:
            self._key = key
            self._cache.clear()
            if search_path is None:
                self._snapshot = snapshot
                self._columns_of = _qualified_only(snapshot)
            else:
                self._snapshot = snapshot.with_search_path(search_path)
                self._columns_of = self._snapshot.columns_of

    def ddl_sent(self) -> None:
        """A DDL statement was forwarded: every session's catalog is stale once it finishes."""
        if self.catalog is not None:
            self.catalog.invalidate()
            self._ddl_in_flight = True

    def _lineages(self, sql: str) -> tuple[StatementLineage, ...]:
        found = self._cache.get(sql)
        if found is None:
            found = statement_lineages(sql, self._columns_of)
            if len(self._cache) >= LINEAGE_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[sql] = found
        return found

    def _mask(self, lineage: StatementLineage) -> StatementMask:
        plan = self.rules.plan(lineage)  # raises StatementDenied (on_unknown: deny)
        snapshot = self._snapshot
        return StatementMask(plan, snapshot.by_attr if snapshot is not None else None)

    def query_masks(self, sql: str) -> list[StatementMask]:
        """One mask per statement of a simple Query. Raises StatementDenied."""
        lineages = self._lineages(sql)
        # Planned before SessionLineage remembers anything, so a refused batch leaves no trace.
        for lineage in lineages:
            self.rules.plan(lineage)
        return [self._mask(self.lineage.effective(lineage)) for lineage in lineages]

    def parse_lineage(self, sql: str) -> StatementLineage:
        """The lineage of an extended-protocol statement. Raises StatementDenied."""
        parts = self._lineages(sql)
        lineage = parts[0] if len(parts) == 1 else statement_lineage(sql, self._columns_of)
        self.rules.plan(lineage)
        return self.lineage.effective(lineage)

    def mask_of(self, lineage: StatementLineage | None, *, strict: bool = False) -> StatementMask:
        """The mask of a parsed statement (``None``: one callgate did not see parsed).

        ``strict``: raise StatementDenied for ``on_unknown: deny`` (at Execute, where it can
        still be refused); else the fallback, which refuses the result at its description."""
        if lineage is None:
            return self.fallback()
        try:
            return self._mask(lineage)
        except StatementDenied:
            if strict:
                raise
            return self.fallback()


def _qualified_only(snapshot: CatalogSnapshot) -> ColumnsOf:
    """After the search path changed in a way callgate does not know: unqualified names are
    unknown (masked), schema-qualified ones are still resolved."""

    def columns_of(schema: str | None, name: str) -> RelationInfo | None:
        if schema is None:
            return None
        return snapshot.columns_of(schema, name)

    return columns_of
