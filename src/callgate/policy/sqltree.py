"""PostgreSQL's parse tree as pglast's JSON gives it: node types, statement kinds, small readers.

pglast's JSON wraps a node as ``{"TypeName": {...fields}}``, except fields that the C struct
types as a pointer to one specific struct (``InsertStmt.relation`` is a ``RangeVar*``): those are
bare field dicts. :data:`TYPED_FIELDS` (built from pglast's own slot metadata) names their type.
"""

from __future__ import annotations

from typing import Final

from pglast import ast

#: a node's fields as pglast's JSON gives them
Fields = dict[str, object]


def _struct_types() -> tuple[frozenset[str], dict[tuple[str, str], str]]:
    names = frozenset(
        name
        for name in dir(ast)
        if isinstance(getattr(ast, name), type) and issubclass(getattr(ast, name), ast.Node)
    )
    # pglast's JSON also wraps lists that are nodes of their own (DROP TABLE a.b: List of names)
    names |= {"List", "IntList", "OidList"}
    typed: dict[tuple[str, str], str] = {}
    for name in names:
        slots: object = getattr(getattr(ast, name, None), "__slots__", None)
        if not isinstance(slots, dict):
            continue
        for field_name, info in slots.items():
            c_type = str(getattr(info, "c_type", ""))
            target = c_type[:-1]
            # Node*/Expr* fields hold wrapped nodes; only concrete struct pointers are bare.
            if c_type.endswith("*") and target in names and target not in ("Node", "Expr"):
                typed[(name, str(field_name))] = target
    return names, typed


NODE_TYPES, TYPED_FIELDS = _struct_types()

#: statements that define or change schema objects: kind ``ddl``
DDL_STATEMENTS: Final = (
    "AlterCollationStmt",
    "AlterDatabaseRefreshCollStmt",
    "AlterDatabaseSetStmt",
    "AlterDatabaseStmt",
    "AlterDomainStmt",
    "AlterEnumStmt",
    "AlterEventTrigStmt",
    "AlterExtensionContentsStmt",
    "AlterExtensionStmt",
    "AlterFdwStmt",
    "AlterForeignServerStmt",
    "AlterFunctionStmt",
    "AlterObjectDependsStmt",
    "AlterObjectSchemaStmt",
    "AlterOpFamilyStmt",
    "AlterOperatorStmt",
    "AlterPublicationStmt",
    "AlterSeqStmt",
    "AlterStatsStmt",
    "AlterSubscriptionStmt",
    "AlterTSConfigurationStmt",
    "AlterTSDictionaryStmt",
    "AlterTableMoveAllStmt",
    "AlterTableSpaceOptionsStmt",
    "AlterTableStmt",
    "AlterTypeStmt",
    "CommentStmt",
    "CompositeTypeStmt",
    "CreateAmStmt",
    "CreateCastStmt",
    "CreateConversionStmt",
    "CreateDomainStmt",
    "CreateEnumStmt",
    "CreateEventTrigStmt",
    "CreateExtensionStmt",
    "CreateFdwStmt",
    "CreateForeignServerStmt",
    "CreateForeignTableStmt",
    "CreateFunctionStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "CreatePLangStmt",
    "CreatePublicationStmt",
    "CreateRangeStmt",
    "CreateSchemaStmt",
    "CreateSeqStmt",
    "CreateStatsStmt",
    "CreateStmt",
    "CreateSubscriptionStmt",
    "CreateTableSpaceStmt",
    "CreateTransformStmt",
    "CreateTrigStmt",
    "CreatedbStmt",
    "DefineStmt",
    "DropStmt",
    "DropSubscriptionStmt",
    "DropTableSpaceStmt",
    "DropdbStmt",
    "ImportForeignSchemaStmt",
    "IndexStmt",
    "RefreshMatViewStmt",
    "RenameStmt",
    "ReplicaIdentityStmt",
    "SecLabelStmt",
    "CreateTableAsStmt",
    "ViewStmt",
    "RuleStmt",
)

#: statements whose kinds do not depend on their content
STATEMENT_KINDS: Final[dict[str, tuple[str, ...]]] = {
    # privilege: who may do what, and who we are
    "GrantStmt": ("privilege",),
    "GrantRoleStmt": ("privilege",),
    "AlterDefaultPrivilegesStmt": ("privilege",),
    "CreateRoleStmt": ("privilege",),
    "AlterRoleStmt": ("privilege",),
    "AlterRoleSetStmt": ("privilege",),
    "DropRoleStmt": ("privilege",),
    "ReassignOwnedStmt": ("privilege",),
    "DropOwnedStmt": ("privilege",),
    "AlterOwnerStmt": ("ddl", "privilege"),
    "CreatePolicyStmt": ("ddl", "privilege"),
    "AlterPolicyStmt": ("ddl", "privilege"),
    "CreateUserMappingStmt": ("ddl", "privilege"),
    "AlterUserMappingStmt": ("ddl", "privilege"),
    "DropUserMappingStmt": ("ddl", "privilege"),
    "AlterSystemStmt": ("ddl", "privilege"),
    # transaction control
    "TransactionStmt": ("transaction",),
    "ConstraintsSetStmt": ("transaction",),
    # session
    "VariableShowStmt": ("session",),
    "DeallocateStmt": ("session",),
    # utility
    "VacuumStmt": ("utility",),
    "ClusterStmt": ("utility",),
    "ReindexStmt": ("utility",),
    "CheckPointStmt": ("utility",),
    "ListenStmt": ("utility",),
    "UnlistenStmt": ("utility",),
    "NotifyStmt": ("utility",),
    "FetchStmt": ("utility",),
    "ClosePortalStmt": ("utility",),
    "LoadStmt": ("utility", "unsafe_io"),
    # procedural
    "DoStmt": ("procedural",),
    "CallStmt": ("procedural",),
    # everything that defines or changes schema objects
    **dict.fromkeys(DDL_STATEMENTS, ("ddl",)),
}

#: statements whose handler decides their kinds; any other ``*Stmt`` is ``unknown``
HANDLED_STATEMENTS: Final = frozenset(
    {
        "RawStmt",
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "CopyStmt",
        "ExplainStmt",
        "PrepareStmt",
        "ExecuteStmt",
        "DeclareCursorStmt",
        "VariableSetStmt",
        "TruncateStmt",
        "LockStmt",
        "DiscardStmt",
        "SetOperationStmt",
        "PLAssignStmt",
        "ReturnStmt",
    }
)

#: ``DropStmt.removeType`` values that name relations
DROPPED_RELATIONS: Final = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_FOREIGN_TABLE",
        "OBJECT_SEQUENCE",
        "OBJECT_INDEX",
    }
)


def get(fields: Fields, key: str) -> Fields | None:
    value = fields.get(key)
    return value if isinstance(value, dict) else None


def list_(fields: Fields, key: str) -> list[object]:
    value = fields.get(key)
    return value if isinstance(value, list) else []


def str_(fields: Fields, key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def unwrap(node: object) -> tuple[str, Fields] | None:
    """``{"Type": {...}}`` → ``("Type", {...})``."""
    if isinstance(node, dict) and len(node) == 1:
        ((name, value),) = node.items()
        if isinstance(name, str) and name in NODE_TYPES and isinstance(value, dict):
            return name, value
    return None


def strings(items: list[object]) -> tuple[str, ...] | None:
    """A name list (``[{"String": {"sval": "a"}}, …]``) as a tuple, ``None`` if not all strings."""
    out: list[str] = []
    for item in items:
        node = unwrap(item)
        if node is None or node[0] != "String":
            return None
        value = str_(node[1], "sval")
        if value is None:
            return None
        out.append(value)
    return tuple(out)


def constant_text(node: object) -> str | None:
    """The value of a string constant (possibly cast, ``'x'::text``), else ``None``."""
    unwrapped = unwrap(node)
    while unwrapped is not None and unwrapped[0] == "TypeCast":
        unwrapped = unwrap(unwrapped[1].get("arg"))
    if unwrapped is None or unwrapped[0] != "A_Const":
        return None
    sval = get(unwrapped[1], "sval")
    return None if sval is None else str_(sval, "sval")


def constant_value(node: object) -> str | None:
    """A string or integer constant as text (``'off'``, ``0``), else ``None``."""
    text = constant_text(node)
    if text is not None:
        return text
    unwrapped = unwrap(node)
    if unwrapped is None or unwrapped[0] != "A_Const":
        return None
    ival = get(unwrapped[1], "ival")
    return None if ival is None else str(ival.get("ival", 0))  # pglast omits a zero


def contains(node: object, type_name: str) -> bool:
    if isinstance(node, list):
        return any(contains(item, type_name) for item in node)
    if isinstance(node, dict):
        if type_name in node:
            return True
        return any(contains(value, type_name) for value in node.values())
    return False


def relation(fields: Fields | None) -> tuple[str | None, str] | None:
    if fields is None:
        return None
    name = str_(fields, "relname")
    return None if name is None else (str_(fields, "schemaname"), name)


def alias(fields: Fields) -> str | None:
    alias = get(fields, "alias")
    return None if alias is None else str_(alias, "aliasname")


def is_true(arg: object) -> bool:
    """An EXPLAIN/DefElem boolean: absent means true; anything not clearly false is true."""
    if arg is None:
        return True
    text = constant_text(arg)
    if text is None:
        node = unwrap(arg)
        if node is not None and node[0] == "String":
            text = str_(node[1], "sval")
        elif node is not None and node[0] == "A_Const":
            const = node[1]
            ival, boolval = get(const, "ival"), get(const, "boolval")
            if ival is not None:
                return ival.get("ival", 0) != 0
            if boolval is not None:
                return bool(boolval.get("boolval", False))
            return True
    if text is None:
        return True
    return text.strip().lower() not in {"false", "off", "no", "0", "of", "f", "n"}
