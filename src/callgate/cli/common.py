"""Options and helpers shared by every CLI command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from callgate.errors import CallgateError

ConfigOption = Annotated[
    Path,
    typer.Option(
        "-c",
        "--config",
        envvar="CALLGATE_CONFIG",
        help="Path to callgate.yaml.",
        show_default=True,
    ),
]
DEFAULT_CONFIG = Path("callgate.yaml")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit non-zero with a one-line reason on stderr (SPEC §3)."""
    typer.echo(f"callgate: {message}", err=True)
    raise typer.Exit(code)


def fail_from(exc: CallgateError) -> NoReturn:
    fail(exc.message)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
