"""Secret references: parsing, resolving, and never showing a value."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from callgate.errors import ConfigError, SecretError
from callgate.secrets import SecretRef, render_template

SENTINEL = "s3ntinel-VALUE-9f8e7d"


def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CG_TEST_SECRET", SENTINEL)
    ref = SecretRef.parse("env:CG_TEST_SECRET", tmp_path)
    assert ref.kind == "env"
    assert ref.resolve() == SENTINEL
    assert str(ref) == "env:CG_TEST_SECRET"
    assert repr(ref) == "SecretRef('env:CG_TEST_SECRET')"
    assert SENTINEL not in repr(ref) + str(ref)


def test_unset_env_names_the_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CG_TEST_UNSET", raising=False)
    with pytest.raises(SecretError) as caught:
        SecretRef.parse("env:CG_TEST_UNSET", tmp_path).resolve()
    assert "env:CG_TEST_UNSET" in str(caught.value)
    assert "not set" in str(caught.value)
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize("bad", ["env:", "env:1ABC", "env:A-B", "env:A B"])
def test_malformed_env_reference(bad: str, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="env:NAME"):
        SecretRef.parse(bad, tmp_path)


def test_file_reference_is_relative_to_base_dir_and_strips_one_newline(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(SENTINEL + "\n\n")
    ref = SecretRef.parse("file:secret.txt", tmp_path)
    assert str(ref) == f"file:{tmp_path / 'secret.txt'}"
    assert ref.resolve() == SENTINEL + "\n"  # exactly one trailing newline removed


def test_file_reference_strips_crlf(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(SENTINEL.encode() + b"\r\n")
    assert SecretRef.parse(f"file:{tmp_path / 's'}", Path("/elsewhere")).resolve() == SENTINEL


def test_file_reference_without_newline_is_unchanged(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SENTINEL)
    assert SecretRef.parse("file:s", tmp_path).resolve() == SENTINEL


def test_missing_file_names_the_reference(tmp_path: Path) -> None:
    ref = SecretRef.parse("file:nope.txt", tmp_path)
    with pytest.raises(SecretError, match=r"file:.*nope\.txt: file does not exist"):
        ref.resolve()


def test_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="is a directory"):
        SecretRef.parse(f"file:{tmp_path}", tmp_path).resolve()


@pytest.mark.parametrize(
    ("text", "backend"), [("vault:secret/db#password", "vault"), ("aws-sm:prod/db#pw", "aws-sm")]
)
def test_unavailable_backends_are_recognised(text: str, backend: str, tmp_path: Path) -> None:
    ref = SecretRef.parse(text, tmp_path)
    assert ref.kind == backend
    assert str(ref) == text
    with pytest.raises(SecretError, match=f"{backend} secret backend is not available yet"):
        ref.resolve()


def test_literal_is_returned_as_is_and_hidden(tmp_path: Path) -> None:
    ref = SecretRef.parse(SENTINEL, tmp_path)
    assert ref.kind == "literal"
    assert ref.resolve() == SENTINEL
    assert str(ref) == "<literal secret>"
    assert repr(ref) == "SecretRef('<literal secret>')"
    assert SENTINEL not in f"{ref} {ref!r} {[ref]} { ({'k': ref}) }"


def test_unknown_scheme_is_a_literal(tmp_path: Path) -> None:
    ref = SecretRef.parse("https://user:pw@host", tmp_path)
    assert ref.kind == "literal"
    assert ref.resolve() == "https://user:pw@host"


def test_template_resolves_each_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CG_TOKEN", SENTINEL)
    (tmp_path / "tenant").write_text("acme\n")
    ref = SecretRef.parse("Bearer ${env:CG_TOKEN}; tenant=${file:tenant}", tmp_path)
    assert ref.kind == "template"
    assert ref.resolve() == f"Bearer {SENTINEL}; tenant=acme"
    shown = f"{ref} {ref!r}"
    assert "env:CG_TOKEN" in shown
    assert SENTINEL not in shown
    assert "Bearer" not in shown  # literal parts of a template are not shown either


def test_render_template_escape_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_X", "x")
    assert render_template("a$${b}${env:CG_X}") == "a${b}x"
    assert render_template("no references") == "no references"
    with pytest.raises(SecretError, match="not closed"):
        render_template("${env:CG_X")
    with pytest.raises(SecretError, match="is not one of"):
        render_template("${CG_X}")
    monkeypatch.delenv("CG_X")
    with pytest.raises(SecretError, match="env:CG_X"):
        render_template("${env:CG_X}")


def test_malformed_template_is_rejected_at_parse(tmp_path: Path) -> None:
    with pytest.raises(SecretError):
        SecretRef.parse("Bearer ${nope:X}", tmp_path)


def test_error_text_never_contains_the_value(tmp_path: Path) -> None:
    # A template whose literal part is secret and whose reference fails.
    ref = SecretRef.parse(SENTINEL + "${env:CG_SURELY_UNSET_VAR}", tmp_path)
    with pytest.raises(SecretError) as caught:
        ref.resolve()
    assert SENTINEL not in str(caught.value)
    assert "env:CG_SURELY_UNSET_VAR" in str(caught.value)


def test_equality_hash_copy_and_no_pickle(tmp_path: Path) -> None:
    a = SecretRef.parse("env:A", tmp_path)
    assert a == SecretRef.parse("env:A", tmp_path)
    assert a != SecretRef.parse("env:B", tmp_path)
    assert len({a, SecretRef.parse("env:A", tmp_path)}) == 1
    assert copy.deepcopy(a) is a
    with pytest.raises(TypeError):
        pickle.dumps(SecretRef.parse(SENTINEL, tmp_path))


def test_resolve_secrets_gives_a_templates_secrets_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CG_TEST_TOKEN", "tok")
    (tmp_path / "key").write_text("k3y\n")
    template = SecretRef.parse("Bearer ${env:CG_TEST_TOKEN} key=${file:key} $${x}", tmp_path)
    assert template.resolve() == "Bearer tok key=k3y ${x}"
    assert template.resolve_secrets() == ("tok", "k3y")
    assert SecretRef.parse("env:CG_TEST_TOKEN", tmp_path).resolve_secrets() == ("tok",)
    assert SecretRef.parse("plain", tmp_path).resolve_secrets() == ("plain",)
    monkeypatch.delenv("CG_TEST_TOKEN")
    with pytest.raises(SecretError, match="env:CG_TEST_TOKEN"):
        template.resolve_secrets()
