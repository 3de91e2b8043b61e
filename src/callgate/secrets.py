"""Secret references: where a secret lives, resolved only when it is needed (SPEC §2).

A config value meant to be secret is written as one of

* ``env:NAME``: the environment variable ``NAME`` (an error if it is unset);
* ``file:/path``: the file's contents, one trailing newline removed (a relative path is taken
  from the config file's directory);
* ``vault:mount/path#key`` and ``aws-sm:secret-id#key``: recognised, but these backends are
  not available yet, so resolving one is an error;
* a template such as ``Bearer ${env:TOKEN}``: any text with ``${env:NAME}`` or ``${file:PATH}``
  inside, each replaced by what it names (write ``$${`` for a literal ``${``);
* anything else: a literal secret, used as written.

A :class:`SecretRef` never shows a secret: ``str()`` and ``repr()`` give the reference
(``env:NAME``) or ``<literal secret>``, and every error names the reference, never the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final, Literal

from callgate.errors import SecretError

SecretKind = Literal["env", "file", "vault", "aws-sm", "template", "literal"]

#: scheme prefixes that make a string a reference rather than a literal secret
SCHEMES: Final[tuple[str, ...]] = ("env", "file", "vault", "aws-sm")
#: backends recognised in references but not implemented; resolving one is a clear error
UNAVAILABLE_SCHEMES: Final[frozenset[str]] = frozenset({"vault", "aws-sm"})

LITERAL_DISPLAY: Final = "<literal secret>"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ``$${`` is an escaped literal ``${``; ``${...}`` is a reference; an unclosed ``${`` is an error.
_TEMPLATE_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


class SecretRef:
    """A reference to a secret, or a literal secret, that hides its value.

    Build one with :meth:`parse`; read the secret with :meth:`resolve` at the moment it is used.
    """

    __slots__ = ("_base_dir", "_kind", "_target")

    def __init__(self, kind: SecretKind, target: str, base_dir: Path | None = None) -> None:
        self._kind: SecretKind = kind
        # env: the variable name; file: an absolute path; vault/aws-sm: the location;
        # template: the template text; literal: the secret itself (never shown).
        self._target = target
        self._base_dir = base_dir

    # --- building --------------------------------------------------------------------------

    @classmethod
    def parse(cls, value: str, base_dir: Path) -> SecretRef:
        """Read a config string. Raises :class:`SecretError` for a malformed reference."""
        scheme, sep, rest = value.partition(":")
        if sep and scheme in SCHEMES:
            if scheme == "env":
                if not _ENV_NAME.fullmatch(rest):
                    raise SecretError(
                        "", f"env:{rest}: expected env:NAME with NAME an environment variable name"
                    )
                return cls("env", rest)
            if scheme == "file":
                if not rest:
                    raise SecretError("", "file: expected file:PATH")
                path = Path(rest).expanduser()
                if not path.is_absolute():
                    path = base_dir / path
                return cls("file", str(path))
            if not rest:
                raise SecretError("", f"{scheme}: expected {scheme}:LOCATION#KEY")
            return cls("vault" if scheme == "vault" else "aws-sm", rest)
        if "${" in value:
            _template_parts(value, base_dir)  # reject a malformed template now, not at use
            return cls("template", value, base_dir)
        return cls("literal", value)

    # --- reading ---------------------------------------------------------------------------

    @property
    def kind(self) -> SecretKind:
        return self._kind

    @property
    def reference(self) -> str:
        """What can be shown: ``env:NAME``, ``file:/path``, ``<literal secret>``..."""
        if self._kind == "literal":
            return LITERAL_DISPLAY
        if self._kind == "template":
            parts = _template_parts(self._target, self._base_dir)
            refs = [part.reference for part in parts if part.reference is not None]
            return f"<template using {', '.join(refs)}>" if refs else "<template>"
        return f"{self._kind}:{self._target}"

    def resolve(self) -> str:
        """Return the secret. Raises :class:`SecretError` naming the reference on failure."""
        if self._kind == "literal":
            return self._target
        if self._kind == "env":
            found = os.environ.get(self._target)
            if found is None:
                raise SecretError("", f"{self.reference}: environment variable is not set")
            return found
        if self._kind == "file":
            return _read_secret_file(Path(self._target), self.reference)
        if self._kind == "template":
            return render_template(self._target, self._base_dir)
        raise SecretError(
            "", f"{self.reference}: the {self._kind} secret backend is not available yet"
        )

    def resolve_secrets(self) -> tuple[str, ...]:
        """The secret values behind this reference, without any surrounding template text.

        For ``Bearer ${env:TOKEN}`` this is the token alone, which is what a leak check must
        look for (the rendered value would miss a leak of the token in another framing); for
        any other kind it is the one resolved value. Raises :class:`SecretError` like
        :meth:`resolve`.
        """
        if self._kind == "template":
            parts = _template_parts(self._target, self._base_dir)
            return tuple(part.render() for part in parts if part.reference is not None)
        return (self.resolve(),)

    # --- hiding ----------------------------------------------------------------------------

    def __str__(self) -> str:
        return self.reference

    def __repr__(self) -> str:
        return f"SecretRef({self.reference!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretRef):
            return NotImplemented
        return (self._kind, self._target, self._base_dir) == (
            other._kind,
            other._target,
            other._base_dir,
        )

    def __hash__(self) -> int:
        return hash((self._kind, self._target, self._base_dir))

    def __copy__(self) -> SecretRef:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, object]) -> SecretRef:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would carry a literal secret out of the process; nothing needs it.
        raise TypeError("SecretRef cannot be pickled")


class _TemplatePart:
    __slots__ = ("_ref", "reference", "text")

    def __init__(self, text: str | None = None, reference: SecretRef | None = None) -> None:
        self.text = text
        self.reference = reference.reference if reference is not None else None
        self._ref = reference

    def render(self) -> str:
        if self._ref is not None:
            return self._ref.resolve()
        return self.text or ""


def _template_parts(template: str, base_dir: Path | None) -> list[_TemplatePart]:
    parts: list[_TemplatePart] = []
    pos = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        if match.start() > pos:
            parts.append(_TemplatePart(text=template[pos : match.start()]))
        found = match.group(0)
        if found == "$${":
            parts.append(_TemplatePart(text="${"))
        elif found == "${":
            raise SecretError(
                "", f"template: '${{' at position {match.start()} is not closed with '}}'"
            )
        else:
            inner = match.group(1)
            scheme, sep, _ = inner.partition(":")
            if not sep or scheme not in SCHEMES:
                raise SecretError(
                    "",
                    f"template: the reference at position {match.start()} is not one of "
                    "${env:NAME}, ${file:PATH}, ${vault:...}, ${aws-sm:...} "
                    "(write $${ for a literal '${')",
                )
            parts.append(_TemplatePart(reference=SecretRef.parse(inner, base_dir or Path.cwd())))
        pos = match.end()
    if pos < len(template):
        parts.append(_TemplatePart(text=template[pos:]))
    return parts


def render_template(template: str, base_dir: Path | None = None) -> str:
    """Replace each ``${env:NAME}`` / ``${file:PATH}`` in ``template`` with the secret it names.

    ``$${`` stands for a literal ``${``. Relative ``file:`` paths are taken from ``base_dir``
    (default: the current directory). Raises :class:`SecretError` naming the reference.
    """
    return "".join(part.render() for part in _template_parts(template, base_dir))


def _read_secret_file(path: Path, reference: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError("", f"{reference}: file does not exist") from None
    except IsADirectoryError:
        raise SecretError("", f"{reference}: is a directory, expected a file") from None
    except PermissionError:
        raise SecretError("", f"{reference}: permission denied") from None
    except UnicodeDecodeError:
        raise SecretError("", f"{reference}: is not UTF-8 text") from None
    except OSError as exc:
        raise SecretError("", f"{reference}: cannot be read ({exc.strerror})") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text
