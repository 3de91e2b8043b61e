"""Built-in PostgreSQL functions whose call changes what a statement is.

Names are as PostgreSQL folds them (unquoted identifiers are lower case). A call matches when its
last name part is in a set here and it is unqualified or qualified with ``pg_catalog``: a function
written ``"PG_READ_FILE"`` (quoted) or ``evil.pg_read_file`` is a different, user-created function.
Policy rules on ``functions`` still see every name, so a deny on ``pg_read_file`` (no schema)
catches ``evil.pg_read_file`` too (see docs/policy.md).
"""

from __future__ import annotations

from typing import Final

#: read or write files on the database server, reach other servers, or move large objects between
#: the server's file system and the database: kind ``unsafe_io``
UNSAFE_IO_FUNCTIONS: Final[frozenset[str]] = frozenset(
    {
        # server file access (core; default roles pg_read_server_files / pg_write_server_files)
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_current_logfile",
        # adminpack
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        # large objects: the server-side ones touch files, the rest move data outside any table
        "lo_import",
        "lo_export",
        "lo_open",
        "lo_close",
        "lo_creat",
        "lo_create",
        "lo_unlink",
        "lo_get",
        "lo_put",
        "lo_from_bytea",
        "lo_truncate",
        "lo_truncate64",
        "lo_lseek",
        "lo_lseek64",
        "lo_tell",
        "lo_tell64",
        "loread",
        "lowrite",
    }
)

#: prefixes of function families that reach other servers (dblink, dblink_exec, dblink_connect…)
UNSAFE_IO_PREFIXES: Final[tuple[str, ...]] = ("dblink", "lo_")

#: functions that run SQL given as text; the argument at this index is that SQL. A constant is
#: classified as if it were written in place; anything else makes the statement ``unknown``.
DYNAMIC_SQL_FUNCTIONS: Final[dict[str, int]] = {
    "query_to_xml": 0,
    "query_to_xmlschema": 0,
    "query_to_xml_and_xmlschema": 0,
}

#: functions that read a whole table named by a text/regclass argument (at this index)
TABLE_BY_NAME_FUNCTIONS: Final[dict[str, int]] = {
    "table_to_xml": 0,
    "table_to_xmlschema": 0,
    "table_to_xml_and_xmlschema": 0,
}

#: functions that read every table of a schema or database: which tables cannot be known
READS_ANY_TABLE_FUNCTIONS: Final[frozenset[str]] = frozenset(
    {
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
    }
)

#: ``set_config(name, value, is_local)``: a run-time SET
SET_CONFIG: Final = "set_config"

#: settings whose change is a change of identity: kind ``privilege``
PRIVILEGE_SETTINGS: Final[frozenset[str]] = frozenset({"role", "session_authorization"})

#: the setting that changes how unqualified names resolve
SEARCH_PATH: Final = "search_path"

#: catalog views that are written to change settings (``UPDATE pg_settings`` calls set_config)
SETTINGS_VIEWS: Final[frozenset[str]] = frozenset({"pg_settings"})


#: settings that change how the server splits text into tokens. With
#: ``standard_conforming_strings = off`` a backslash escapes a quote in ordinary strings, and some
#: client encodings (SJIS, BIG5, GBK…) have characters whose second byte is a backslash; either way
#: the server would read a text differently from callgate's parser. Any value but these is
#: ``unknown``.
LEXING_SETTINGS: Final[dict[str, frozenset[str]]] = {
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1", "t", "y"}),
    "client_encoding": frozenset({"utf8", "unicode"}),
}


def safe_lexing_value(setting: str, value: str | None) -> bool:
    """True when ``value`` keeps the server's lexing the same as callgate's parser."""
    if value is None:
        return False
    normalized = value.strip().lower()
    if setting == "client_encoding":
        normalized = normalized.replace("-", "").replace("_", "")
    return normalized in LEXING_SETTINGS.get(setting, frozenset())


def builtin_name(parts: tuple[str, ...]) -> str | None:
    """The built-in function a call could reach: its bare name if unqualified or in pg_catalog."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2 and parts[0] == "pg_catalog":
        return parts[1]
    return None


def is_unsafe_io(name: str) -> bool:
    return name in UNSAFE_IO_FUNCTIONS or name.startswith(UNSAFE_IO_PREFIXES)
