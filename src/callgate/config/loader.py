"""Read ``callgate.yaml``: YAML in, a validated :class:`Config` out, or one clear ConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from callgate.config.models import Config
from callgate.config.translate import to_config_error
from callgate.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and non-string keys instead of guessing."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys first
    mapping: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key_node.value!r} is read as {type(key).__name__}, not text; "
                "put it in quotes",
                key_node.start_mark,
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in this mapping", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError("", f"config file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else f"{path}"
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError("", f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path}: YAML syntax error: {exc}") from None


def parse_config(data: Mapping[str, Any], base_dir: Path) -> Config:
    """Validate ``data`` (the parsed YAML); relative paths are taken from ``base_dir``."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            "", "expected a mapping of sections (gateway, listeners, identity, ...) at the top"
        )
    # A section left empty (`identity:` with everything below commented out) reads as null;
    # treat it as absent rather than as a type error.
    cleaned = {key: value for key, value in data.items() if value is not None}
    try:
        return Config.model_validate(cleaned, context={"base_dir": base_dir.resolve()})
    except ValidationError as exc:
        raise to_config_error(exc, cleaned, Config) from None


def load_config(path: Path) -> Config:
    """Read, parse and validate the config file at ``path``. Raises :class:`ConfigError`."""
    data = _read_yaml(path)
    if data is None:
        raise ConfigError("", f"config file {path} is empty")
    if not isinstance(data, Mapping):
        raise ConfigError(
            "", f"{path}: expected a mapping of sections (gateway, listeners, ...) at the top"
        )
    config = parse_config(data, path.resolve().parent)
    return config.with_source_path(path.resolve())
