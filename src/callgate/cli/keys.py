"""`callgate keys` (being written)."""

import typer

app = typer.Typer(help="keys", no_args_is_help=True)
