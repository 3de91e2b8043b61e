"""Turn pydantic's ValidationError into a ConfigError that names the key path as the user wrote it.

Messages never show a value of unknown meaning (it may be a secret): they name its YAML type.
Values are quoted only by validators that know the field is not secret (kinds, ports, binds...).
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from callgate.config.connections import (
    HTTP_TAG,
    UPSTREAM_TAGS,
    DatabaseUpstream,
    HttpUpstream,
)
from callgate.config.fields import MESSAGE_ERROR, PATH_ERROR, describe_type
from callgate.config.policies import ACTIONS
from callgate.errors import ConfigError

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

Loc = Sequence[str | int]


def format_path(parts: Iterable[str | int]) -> str:
    """``("connections", 0, "upstream", "port")`` → ``connections[0].upstream.port``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _join(prefix: str, relative: str) -> str:
    if not prefix:
        return relative
    if not relative:
        return prefix
    return prefix + relative if relative.startswith("[") else f"{prefix}.{relative}"


def _user_loc(loc: Loc, data: object) -> list[str | int]:
    """The loc as the user wrote it: union tags dropped, a rule's ``when`` named by its action."""
    out: list[str | int] = []
    node: object = data
    for part in loc:
        if part in UPSTREAM_TAGS or part == "[key]":
            continue
        if isinstance(part, int):
            node = node[part] if isinstance(node, list | tuple) and part < len(node) else None
        else:
            if isinstance(node, Mapping) and part == "when" and "when" not in node:
                actions = [action for action in ACTIONS if action in node]
                if len(actions) == 1:
                    part = actions[0]
            node = node.get(part) if isinstance(node, Mapping) else None
        out.append(part)
    return out


def _expand(annotation: Any) -> list[Any]:
    """Unwrap ``Annotated`` and unions to the types a value may have."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _expand(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in get_args(annotation) for t in _expand(arg)]
    return [annotation]


def _keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model at ``loc`` accepts (empty if ``loc`` does not lead to a model)."""
    current: list[Any] = [root]
    for part in loc:
        if part in UPSTREAM_TAGS:
            # The tag says which member of the upstream union the loc continues into.
            wanted = HttpUpstream if part == HTTP_TAG else DatabaseUpstream
            current = [tp for a in current for tp in _expand(a) if tp is wanted]
            continue
        following: list[Any] = []
        for annotation in current:
            for tp in _expand(annotation):
                origin = get_origin(tp)
                if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
                    for name, field in tp.model_fields.items():
                        if part in (name, field.alias):
                            following.append(field.annotation)
                elif origin is tuple and isinstance(part, int):
                    following.append(get_args(tp)[0])
                elif origin is dict and isinstance(part, str):
                    following.append(get_args(tp)[1])
        current = following
    keys: list[str] = []
    for annotation in current:
        for tp in _expand(annotation):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                keys.extend(field.alias or name for name, field in tp.model_fields.items())
    return keys


def _message(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    given = error.get("input")
    if kind in (MESSAGE_ERROR, PATH_ERROR):
        return str(ctx["message"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        allowed = _keys_at(root, error["loc"][:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        if allowed:
            return f"unknown key {key!r}; expected one of {', '.join(allowed)}"
        return f"unknown key {key!r}"
    if kind == "literal_error":
        shown = repr(given) if isinstance(given, str | int | float) else describe_type(given)
        return f"expected {ctx.get('expected', 'one of the listed values')}, got {shown}"
    if kind in ("string_type", "string_unicode"):
        return f"expected a string, got {describe_type(given)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {describe_type(given)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {describe_type(given)}"
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return f"expected a list, got {describe_type(given)}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length', 1)} entry"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} entries"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _pick(errors: list[ErrorDetails]) -> ErrorDetails:
    """The first error, except that an unknown key explains a missing one beside it (a typo)."""
    first = errors[0]
    if first["type"] == "missing":
        parent = first["loc"][:-1]
        for error in errors:
            if error["type"] == "extra_forbidden" and error["loc"][:-1] == parent:
                return error
    return first


def to_config_error(exc: ValidationError, data: object, root: type[BaseModel]) -> ConfigError:
    """The ConfigError for the first problem in ``exc`` (``data`` is what was validated)."""
    errors = exc.errors(include_url=False)
    if not errors:
        return ConfigError("", "invalid configuration")
    error = _pick(errors)
    path = format_path(_user_loc(error["loc"], data))
    if error["type"] == PATH_ERROR:
        path = _join(path, str((error.get("ctx") or {})["path"]))
    return ConfigError(path, _message(error, root))
