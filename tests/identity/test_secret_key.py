"""The gateway secret key: configured, or generated once into a private file beside the store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from callgate.errors import ConfigError
from callgate.identity import KEY_FILE_NAME, load_or_create_secret_key, secret_key_from_config


def test_a_key_is_generated_once_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    first = load_or_create_secret_key(secret=None, key_file=key_file)
    assert len(first) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_secret_key(secret=None, key_file=key_file) == first
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]  # no temporary left behind


def test_a_configured_secret_wins(tmp_path: Path) -> None:
    key = load_or_create_secret_key(secret="x" * 40, key_file=tmp_path / KEY_FILE_NAME)
    assert key == b"x" * 40
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_bad_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_or_create_secret_key(secret="short", key_file=None)
    with pytest.raises(ConfigError, match="required when the store is not SQLite"):
        load_or_create_secret_key(secret=None, key_file=None)
    bad = tmp_path / KEY_FILE_NAME
    bad.write_text("not hex")
    with pytest.raises(ConfigError, match="does not hold a hex key"):
        load_or_create_secret_key(secret=None, key_file=bad)


def test_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callgate.config import parse_config

    generated = parse_config({"gateway": {"store": "sqlite:///data.db"}}, tmp_path)
    key = secret_key_from_config(generated)
    assert (tmp_path / KEY_FILE_NAME).exists() and len(key) == 32

    monkeypatch.setenv("CG_TEST_SECRET", "s" * 32)
    configured = parse_config(
        {"gateway": {"store": "sqlite:///data.db", "secret_key": "env:CG_TEST_SECRET"}}, tmp_path
    )
    assert secret_key_from_config(configured) == b"s" * 32
