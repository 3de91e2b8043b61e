"""Find every secret reference in a config, with its key path (for ``callgate check``)."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from callgate.config.translate import format_path
from callgate.secrets import SecretRef


def iter_secret_refs(model: BaseModel) -> Iterator[tuple[str, SecretRef]]:
    """Yield ``(key path, reference)`` for each secret reference, in file order."""
    yield from _walk(model, ())


def _walk(value: object, loc: tuple[str | int, ...]) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(value, SecretRef):
        yield format_path(loc), value
    elif isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            yield from _walk(getattr(value, name), (*loc, field.alias or name))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            yield from _walk(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*loc, str(key)))
