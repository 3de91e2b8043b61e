"""`callgate sessions` (being written)."""

import typer

app = typer.Typer(help="sessions", no_args_is_help=True)
