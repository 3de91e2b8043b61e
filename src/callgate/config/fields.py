"""The base model and the field types every config section uses.

Validators read the config file's directory from the validation context (``base_dir``) so that
relative paths and ``file:`` references are taken from there; without a context the current
directory is used.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from callgate.config.durations import DurationError, format_duration, parse_duration
from callgate.config.sizes import SizeError, parse_size
from callgate.errors import SecretError
from callgate.secrets import SecretRef

#: error type for a problem found by a model-level check; ``ctx["path"]`` is the key path
#: relative to the model that raised it (see :func:`path_error`)
PATH_ERROR: Final = "callgate_path"
#: error type for a message written for the user; used as is
MESSAGE_ERROR: Final = "callgate_message"


class ConfigModel(BaseModel):
    """Frozen, and every key must be known: a typo is an error, never silently ignored."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        # A literal secret in the wrong place must not end up in an exception's text.
        hide_input_in_errors=True,
    )


def message_error(message: str) -> PydanticCustomError:
    return PydanticCustomError(MESSAGE_ERROR, "{message}", {"message": message})


def path_error(path: str, message: str) -> PydanticCustomError:
    """An error about ``path`` (e.g. ``listeners[1].bind``) below the model that raises it."""
    return PydanticCustomError(PATH_ERROR, "{message}", {"path": path, "message": message})


def base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, dict):
        found = context.get("base_dir")
        if isinstance(found, Path):
            return found
    return Path.cwd()


def describe_type(value: object) -> str:
    """Name a value's YAML type without showing the value (it may be a secret)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# --- paths ----------------------------------------------------------------------------------


def _to_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
    else:
        raise message_error(f"expected a file path, got {describe_type(value)}")
    if not path.is_absolute():
        path = base_dir(info) / path
    return path


def _to_existing_file(value: object, info: ValidationInfo) -> Path:
    path = _to_path(value, info)
    if not path.exists():
        raise message_error(f"file {path} does not exist")
    if not path.is_file():
        raise message_error(f"{path} is not a file")
    return path


_PATH_JSON = PlainSerializer(str, return_type=str, when_used="json")

#: a path; relative paths are taken from the config file's directory
ConfigPath = Annotated[Path, PlainValidator(_to_path), _PATH_JSON]
#: a path to a file that must exist when the config is loaded
ExistingFile = Annotated[Path, PlainValidator(_to_existing_file), _PATH_JSON]


# --- secrets --------------------------------------------------------------------------------


def _to_secret(value: object, info: ValidationInfo) -> SecretRef:
    if isinstance(value, SecretRef):
        return value
    if not isinstance(value, str):
        raise message_error(
            f"expected a string (a secret reference such as env:NAME or file:PATH), "
            f"got {describe_type(value)}"
        )
    if not value:
        raise message_error("expected a secret or a secret reference, got an empty string")
    try:
        return SecretRef.parse(value, base_dir(info))
    except SecretError as exc:
        raise message_error(exc.message) from None


#: a secret reference; ``model_dump`` gives the reference (``env:NAME``), never the secret
Secret = Annotated[SecretRef, PlainValidator(_to_secret), PlainSerializer(str, return_type=str)]


# --- durations and sizes --------------------------------------------------------------------


def _to_duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise message_error(str(exc)) from None


def _to_positive_duration(value: object) -> timedelta:
    duration = _to_duration(value)
    if duration <= timedelta(0):
        raise message_error("expected a duration greater than zero")
    return duration


# JSON dumps spell durations as the config does (``90d``), so they read back in.
_DURATION_JSON = PlainSerializer(format_duration, return_type=str, when_used="json")

#: a duration (``30s``, ``5m``, ``1h30m``, ``90d``, ``500ms`` or seconds), zero allowed
Duration = Annotated[timedelta, PlainValidator(_to_duration), _DURATION_JSON]
#: a duration greater than zero
PositiveDuration = Annotated[timedelta, PlainValidator(_to_positive_duration), _DURATION_JSON]


def _to_size(value: object) -> int:
    try:
        return parse_size(value)
    except SizeError as exc:
        raise message_error(str(exc)) from None


#: a number of bytes: an integer or ``64MiB``-style text
ByteSize = Annotated[int, PlainValidator(_to_size)]


# --- numbers --------------------------------------------------------------------------------


def _int_check(low: int, high: int | None) -> Any:
    expected = (
        f"expected an integer from {low} to {high}"
        if high is not None
        else f"expected an integer of at least {low}"
    )

    def check(value: object) -> int:
        # bool is an int in Python; `true` is never meant as a number.
        if isinstance(value, bool) or not isinstance(value, int):
            raise message_error(f"{expected}, got {describe_type(value)}")
        if value < low or (high is not None and value > high):
            raise message_error(f"{expected}, got {value}")
        return value

    return check


Port = Annotated[int, PlainValidator(_int_check(1, 65535))]
NonNegativeInt = Annotated[int, PlainValidator(_int_check(0, None))]
PositiveInt = Annotated[int, PlainValidator(_int_check(1, None))]


# --- names, URLs, globs ---------------------------------------------------------------------

CONNECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _to_connection_name(value: object) -> str:
    if not isinstance(value, str):
        raise message_error(f"expected a connection name (a string), got {describe_type(value)}")
    if not CONNECTION_NAME.fullmatch(value):
        raise message_error(
            f"expected a connection name of 1 to 63 letters, digits, '_', '.' or '-' "
            f"starting with a letter or digit, got {value!r}"
        )
    return value


ConnectionName = Annotated[str, PlainValidator(_to_connection_name)]


def _to_nonempty_str(value: object) -> str:
    if not isinstance(value, str):
        raise message_error(f"expected a string, got {describe_type(value)}")
    if not value.strip():
        raise message_error("expected a non-empty string")
    return value


NonEmptyStr = Annotated[str, PlainValidator(_to_nonempty_str)]


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_check(*, https_only_off_loopback: bool) -> Any:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise message_error(f"expected a URL, got {describe_type(value)}")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise message_error(f"expected an http:// or https:// URL, got {value!r}")
        insecure = parts.scheme == "http" and not is_loopback_host(parts.hostname)
        if https_only_off_loopback and insecure:
            raise message_error(
                f"expected an https:// URL (http:// only on a loopback host), got {value!r}"
            )
        return value

    return check


#: an http:// or https:// URL
HttpUrl = Annotated[str, PlainValidator(_url_check(https_only_off_loopback=False))]
#: an https:// URL, or http:// on a loopback host (development identity providers)
SecureUrl = Annotated[str, PlainValidator(_url_check(https_only_off_loopback=True))]
