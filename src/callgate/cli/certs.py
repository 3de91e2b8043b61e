"""`callgate certs` (being written)."""

import typer

app = typer.Typer(help="certs", no_args_is_help=True)
