"""The reference docs describe what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import callgate.errors as errors

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_error_table_matches_error_classes() -> None:
    text = (DOCS / "errors.md").read_text()
    rows = {
        m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, flags=re.MULTILINE)
    }
    caller_visible = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.CallgateError)
        and cls
        not in (
            errors.CallgateError,
            errors.CallerError,
            errors.UpstreamError,
            errors.ConfigError,
            errors.SecretError,
        )
    ]
    assert caller_visible
    for cls in caller_visible:
        assert cls.__name__ in rows, f"{cls.__name__} missing from docs/errors.md"
        cells = [c.strip() for c in rows[cls.__name__].strip("|").split("|")]
        assert cells[2] == cls.sqlstate, cls.__name__
        assert cells[3] == str(cls.mysql_code), cls.__name__
        assert cells[4] == str(cls.http_status), cls.__name__
        assert cells[5] == ("yes" if cls.fatal else "no"), cls.__name__


def test_cli_reference_is_current() -> None:
    from callgate.cli.reference import render

    current = (DOCS / "cli.md").read_text()
    assert current == render(), (
        "docs/cli.md is stale: python -m callgate.cli.reference > docs/cli.md"
    )
