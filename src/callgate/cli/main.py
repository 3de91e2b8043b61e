"""Entry point: ``callgate <command>``. Each command group lives in its own module."""

from __future__ import annotations

import typer

from callgate.cli import (
    access,
    audit,
    certs,
    check,
    demo,
    keys,
    policy,
    reviews,
    serve,
    sessions,
    token,
)

app = typer.Typer(
    name="callgate",
    help="callgate: a privileged-access gateway for function calls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("serve")(serve.serve)
app.command("check")(check.check)
app.command("demo")(demo.demo)
app.add_typer(certs.app, name="certs")
app.add_typer(keys.app, name="keys")
app.add_typer(sessions.app, name="sessions")
app.add_typer(policy.app, name="policy")
app.add_typer(token.app, name="token")
app.add_typer(reviews.app, name="reviews")
app.add_typer(access.app, name="access")
app.add_typer(audit.app, name="audit")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
