"""Inline masking of results: sensitive values never leave callgate unmasked (SPEC §2, §5).

Sans-IO. The engine:

1. per session: ``rules = MaskRules.for_principal(policies, principal, connection, secret=…)``
   and a :class:`CatalogSnapshot` built from :data:`CATALOG_SQL` run upstream;
2. per statement, before forwarding: ``plan = rules.plan(lineage)`` with
   ``lineage = session_lineage.effective(statement_lineage(sql, snapshot.columns_of))``
   (raises ``StatementDenied`` for ``on_unknown: deny``);
3. per result: ``rw = plan.for_row_description(desc, resolve_columns(desc, snapshot.by_attr))``,
   then ``rw.rewrite_row_description``, ``rw.rewrite_rows`` for the DataRows of each read (or
   ``rw.rewrite_data_row`` for one), or
   ``plan.for_copy(...).rewrite_copy_data`` for COPY, and ``scrub_error_fields`` for
   ErrorResponse/NoticeResponse. :class:`MaskingFailed` means: send nothing more, fail it.

See docs/masking.md.
"""

from callgate.masking.catalog import (
    CATALOG_SQL,
    CatalogColumn,
    CatalogSnapshot,
    ColumnOrigin,
    resolve_columns,
)
from callgate.masking.copy import CopyRewriter, decode_copy_out_response
from callgate.masking.detectors import DETECTORS, DetectorSet, Hit
from callgate.masking.errors import MaskingFailed
from callgate.masking.lineage import (
    ColumnLineage,
    CopyFormat,
    RelationInfo,
    SessionLineage,
    Source,
    StarGroup,
    StatementLineage,
    no_catalog,
    statement_lineage,
    statement_lineages,
)
from callgate.masking.notices import MessageScrub, scrub_error_fields
from callgate.masking.plan import MaskPlan, MaskRules, no_masking
from callgate.masking.rows import (
    FieldDescription,
    RowDescription,
    RowRewriter,
    decode_row_description,
    encode_row_description,
)
from callgate.masking.styles import Style

__all__ = [
    "CATALOG_SQL",
    "DETECTORS",
    "CatalogColumn",
    "CatalogSnapshot",
    "ColumnLineage",
    "ColumnOrigin",
    "CopyFormat",
    "CopyRewriter",
    "DetectorSet",
    "FieldDescription",
    "Hit",
    "MaskPlan",
    "MaskRules",
    "MaskingFailed",
    "MessageScrub",
    "RelationInfo",
    "RowDescription",
    "RowRewriter",
    "SessionLineage",
    "Source",
    "StarGroup",
    "StatementLineage",
    "Style",
    "decode_copy_out_response",
    "decode_row_description",
    "encode_row_description",
    "no_catalog",
    "no_masking",
    "resolve_columns",
    "scrub_error_fields",
    "statement_lineage",
    "statement_lineages",
]
