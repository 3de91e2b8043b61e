"""Generates docs/cli.md from the command tree itself, so the reference cannot drift.

``python -m callgate.cli.reference > docs/cli.md``; ``tests/test_docs.py`` checks the file is
current.
"""

from __future__ import annotations

from typing import Any

import typer.main

from callgate.cli.main import app

HEADER = """# CLI reference

`callgate` is one console script. Every command that reads the config takes `-c/--config`
(default `./callgate.yaml`, or `CALLGATE_CONFIG`), exits non-zero with a one-line reason on
error, and takes `--json` where it prints data. This page is generated from the commands
themselves (`python -m callgate.cli.reference`).
"""


# typer ships its own copy of click, so commands and parameters are read by their attributes.


def _param_row(p: Any) -> str:
    if getattr(p, "param_type_name", "") == "argument":
        name = f"`{(p.metavar or p.name or '').upper()}`"
        kind = "argument" + ("" if p.required else " (optional)")
        return f"| {name} | {kind} | |"
    name = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    help_text = (p.help or "").replace("|", "\\|").replace("\n", " ")
    extra = []
    if p.envvar:
        extra.append(f"env `{p.envvar}`")
    if p.default not in (None, False, (), "") and not p.is_flag:
        extra.append(f"default `{p.default}`")
    if p.required:
        extra.append("required")
    return f"| {name} | {help_text} | {'; '.join(extra)} |"


def _walk(cmd: Any, path: list[str], out: list[str]) -> None:
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            _walk(cmd.commands[name], [*path, name], out)
        return
    out.append(f"## `callgate {' '.join(path)}`\n")
    text = (cmd.help or "").strip()
    if text:
        out.append(text.split("\n\n")[0].replace("\n", " ") + "\n")
    params = [p for p in cmd.params if p.name != "help"]
    if params:
        out.append("| parameter | meaning | notes |\n|---|---|---|")
        out.extend(_param_row(p) for p in params)
        out.append("")


def render() -> str:
    root = typer.main.get_command(app)
    out = [HEADER]
    _walk(root, [], out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
