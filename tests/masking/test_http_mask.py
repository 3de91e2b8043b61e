"""HTTP response masking (callgate.masking.http): bodies, headers, what gets inspected."""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
import zlib
from collections.abc import Mapping
from typing import Any

import pytest

from callgate.config import PolicyConfig
from callgate.masking.errors import MaskingFailed
from callgate.masking.http import UNMASKABLE_SAMPLE, HttpMaskPlan, ResponseMaskingFailed
from callgate.masking.media import looks_like_json, looks_like_jsonp, looks_like_text, media_kind
from callgate.masking.styles import REDACTED, Style
from callgate.model import Principal

SECRET = b"test-secret"
ALICE = Principal(subject="alice", groups=frozenset({"fn"}), method="api_key")
HASH = Style("hash", secret=SECRET)


def policy(*mask: Mapping[str, Any], name: str = "pay", **extra: Any) -> PolicyConfig:
    return PolicyConfig.model_validate(
        {
            "name": name,
            "subjects": {"groups": ["fn"]},
            "connections": ["payments"],
            "mask": list(mask),
            **extra,
        }
    )


def plan(*mask: Mapping[str, Any], principal: Principal = ALICE, **extra: Any) -> HttpMaskPlan:
    return HttpMaskPlan.for_principal(
        [policy(*mask, **extra)], principal, "payments", secret=SECRET
    )


def masked(p: HttpMaskPlan, doc: Any, content_type: str = "application/json") -> Any:
    return json.loads(p.mask_body(json.dumps(doc).encode(), content_type))


CARD = {"json": ["$.data[*].card.number"], "style": "partial"}
DETECT = {"detect": ["email", "credit_card"], "style": "redact"}


# --- building the plan -------------------------------------------------------------------------


def test_plan_follows_subjects_exemptions_and_grants() -> None:
    assert not plan(CARD).is_empty
    assert plan({"columns": ["t.c"]}).is_empty  # column rules are for SQL
    exempt = plan(CARD, mask_exempt={"users": ["alice"]})
    assert exempt.is_empty
    bob = Principal("bob", frozenset({"other"}), "api_key")
    assert plan(CARD, principal=bob).is_empty
    granted = HttpMaskPlan.for_principal(
        [policy(CARD)], bob, "payments", secret=SECRET, granted=["pay"]
    )
    assert not granted.is_empty
    other_connection = HttpMaskPlan.for_principal([policy(CARD)], ALICE, "orders", secret=SECRET)
    assert other_connection.is_empty


# --- JSON paths --------------------------------------------------------------------------------


def test_paths_mask_nested_arrays() -> None:
    doc = {
        "data": [
            {"card": {"number": "4111111111111111", "exp": "12/30"}},
            {"card": {"number": 4242424242424242}},
            {"card": None},
            {"card": {"number": None}},
        ],
        "card": {"number": "top level stays"},
    }
    out = masked(plan(CARD), doc)
    assert out["data"][0]["card"] == {"number": "************1111", "exp": "12/30"}
    assert out["data"][1]["card"] == {"number": "************4242"}  # a number → a string
    assert out["data"][2:] == doc["data"][2:]
    assert out["card"] == doc["card"]


def test_selected_containers_mask_every_scalar_and_strictest_wins() -> None:
    p = plan(
        {"json": ["$..profile"], "style": "partial", "keep": 2},
        {"json": ["$.users[-1].profile.ssn"], "style": "null"},
        {"json": ["$.users[0].profile.*"], "style": "hash"},
    )
    doc = {
        "users": [
            {"profile": {"name": "Alice Smith", "tags": ["vip", 7], "ok": True, "none": None}},
            {"profile": {"name": "Bob Jones", "ssn": "123-45-6789", "ok": False, "n": 12.5}},
        ]
    }
    out = masked(p, doc)
    first = out["users"][0]["profile"]
    assert first["name"] == HASH.token(b"Alice Smith")
    assert first["tags"] == [HASH.token(b"vip"), HASH.token(b"7")]
    assert first["ok"] == HASH.token(b"true")
    assert first["none"] is None
    second = out["users"][1]["profile"]
    assert second == {"name": "*******es", "ssn": None, "ok": REDACTED, "n": "**.5"}


def test_root_and_top_level_arrays() -> None:
    assert masked(plan({"json": ["$"]}), ["a", 1, {"b": True}]) == [REDACTED] * 2 + [
        {"b": REDACTED}
    ]
    assert masked(plan({"json": ["$[1]"], "style": "null"}), [1, 2, 3]) == [1, None, 3]
    assert masked(plan({"json": ["$"], "style": "hash"}), "x") == HASH.token(b"x")


def test_unchanged_bodies_are_returned_as_they_are() -> None:
    p = plan(CARD)
    body = b'{ "data" : [ {"card": {"other": 1}} ] }'
    assert p.mask_body(body, "application/json") is body
    assert p.mask_body(b"", "application/json") == b""
    assert p.mask_body(b"  \n", "application/json") == b"  \n"
    assert plan().mask_body(b"not json", "application/json") == b"not json"  # nothing to mask


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [',
        b"{'data': 1}",
        b'{"data": 1} trailing',
        b'{"data": 1e400}',
        b"\xff\xfe\x00{",
        b")]}'\n",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_declared_json_that_is_not_json_fails(body: bytes) -> None:
    with pytest.raises(ResponseMaskingFailed) as caught:
        plan(CARD).mask_body(body, "application/json")
    assert caught.value.http_status == 502
    assert isinstance(caught.value, MaskingFailed)
    assert "rows" not in caught.value.message


def test_non_standard_constants_are_kept() -> None:
    out = plan(CARD).mask_body(b'{"x": NaN, "data": [{"card": {"number": "1234"}}]}', "text/json")
    assert out == b'{"x":NaN,"data":[{"card":{"number":"**34"}}]}'


def test_bom_xssi_guard_and_charsets() -> None:
    p = plan({"json": ["$.a"]})
    assert p.mask_body(b'\xef\xbb\xbf{"a": "x"}', "application/json") == (
        '\ufeff{"a":"[REDACTED]"}'.encode()
    )
    assert p.mask_body(b')]}\'\n{"a": "x"}', "application/json") == b')]}\'\n{"a":"[REDACTED]"}'
    utf16 = '{"a": "x", "b": "é"}'.encode("utf-16")
    out = p.mask_body(utf16, "application/json; charset=utf-16")
    assert json.loads(out.decode("utf-16")) == {"a": REDACTED, "b": "é"}
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(b'{"a": "x"}', "application/json; charset=klingon")


def test_json_lines() -> None:
    p = plan({"json": ["$.a"]})
    body = b'{"a": 1}\n\n{"a": 2, "b": 3}\r\n{"b": 4}\n'
    assert p.mask_body(body, "application/x-ndjson") == (
        b'{"a":"[REDACTED]"}\n\n{"a":"[REDACTED]","b":3}\r\n{"b": 4}\n'
    )
    # JSON lines sent as application/json
    assert p.mask_body(b'{"a": 1}\n{"a": 2}', "application/json") == (
        b'{"a":"[REDACTED]"}\n{"a":"[REDACTED]"}'
    )
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(b'{"a": 1}\n{"a": \n', "application/x-ndjson")
    seq = b'\x1e{"a": 1}\n\x1e{"a": 2}\n'
    assert p.mask_body(seq, "application/json-seq").count(b"REDACTED") == 2


def test_event_streams() -> None:
    p = plan({"json": ["$.choices[*].text"]}, DETECT)
    body = (
        b"event: delta\n"
        b'data: {"choices": [{"text": "secret"}]}\n\n'
        b"data: {\n"
        b'data: "choices": [{"text": "split"}]}\n\n'
        b"data: mail bob@example.com\n\n"
        b": a comment with carol@example.com\n\n"
        b"data: [DONE]\n\n"
    )
    out = p.mask_body(body, "text/event-stream").decode()
    assert "secret" not in out and "split" not in out
    assert "@example.com" not in out
    assert 'data: {"choices":[{"text":"[REDACTED]"}]}' in out
    assert out.endswith("data: [DONE]\n\n")
    assert p.mask_body(b"data: [DONE]\n\n", "text/event-stream") == b"data: [DONE]\n\n"


# --- content codings ---------------------------------------------------------------------------


def test_gzip_and_deflate_are_undone_and_redone() -> None:
    p = plan({"json": ["$.a"]})
    out = p.mask_body(gzip.compress(b'{"a": "x"}'), "application/json", "gzip")
    assert gzip.decompress(out) == b'{"a":"[REDACTED]"}'
    out = p.mask_body(zlib.compress(b'{"a": "x"}'), "application/json", "deflate")
    assert zlib.decompress(out) == b'{"a":"[REDACTED]"}'
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw_deflate = raw.compress(b'{"a": "x"}') + raw.flush()
    assert b"REDACTED" in zlib.decompress(p.mask_body(raw_deflate, "application/json", "deflate"))
    untouched = gzip.compress(b'{"b": "x"}')
    assert p.mask_body(untouched, "application/json", "gzip") is untouched


@pytest.mark.parametrize(
    ("body", "coding", "message"),
    [
        (b"....", "br", "br-encoded"),
        (b"not gzip", "gzip", "corrupt"),
        (gzip.compress(b'{"a": "x"}')[:-8], "gzip", "truncated"),
        (gzip.compress(b" " * 100_000), "gzip", "larger than"),
    ],
)
def test_unreadable_codings_fail(body: bytes, coding: str, message: str) -> None:
    small = HttpMaskPlan.for_principal(
        [policy({"json": ["$.a"]})], ALICE, "payments", secret=SECRET, limit=50_000
    )
    with pytest.raises(ResponseMaskingFailed) as caught:
        small.mask_body(body, "application/json", coding)
    assert message in caught.value.reason


def test_request_headers_ask_for_whole_uncompressed_bodies() -> None:
    headers = [("Range", "bytes=0-10"), ("Accept-Encoding", "br"), ("X-A", "1")]
    assert plan(CARD).request_headers(headers) == [("X-A", "1"), ("accept-encoding", "identity")]
    header_only = plan({"headers": ["x-secret"]})
    assert header_only.request_headers(headers) == headers


# --- detectors -----------------------------------------------------------------------------------


def test_detectors_in_strings_numbers_and_names() -> None:
    p = plan(DETECT)
    doc = {
        "note": "write to bob@example.com please",
        "card": 4111111111111111,
        "cards": ["4111 1111 1111 1111", 12],
        "bob@example.com": {"alice@example.com": 1, "[REDACTED]": 2},
        "ok": True,
        "n": None,
    }
    out = masked(p, doc)
    assert out["note"] == "write to [REDACTED] please"
    assert out["card"] == REDACTED
    assert out["cards"] == [REDACTED, 12]
    assert out[REDACTED] == {"[REDACTED]~2": 1, REDACTED: 2} or out[REDACTED] == {
        REDACTED: 1,
        "[REDACTED]~2": 2,
    }
    assert out["ok"] is True and out["n"] is None


def test_escaped_characters_do_not_hide_hits() -> None:
    p = plan(DETECT)
    body = b'{"note": "bob\\u0040example.com"}'
    assert json.loads(p.mask_body(body, "application/json")) == {"note": REDACTED}


def test_null_style_detector_hits() -> None:
    p = plan({"detect": ["email"], "style": "null"})
    out = masked(p, {"a": "x bob@example.com", "bob@example.com": 1})
    assert out == {"a": None, REDACTED: 1}
    assert p.mask_body(b"mail bob@example.com", "text/plain") == b"mail [REDACTED]"


def test_text_bodies() -> None:
    p = plan(DETECT)
    body = "Grüße bob@example.com\n4111-1111-1111-1111".encode("latin-1")
    out = p.mask_body(body, "text/plain; charset=iso-8859-1")
    assert out == "Grüße [REDACTED]\n[REDACTED]".encode("latin-1")
    # undecodable bytes go back out as they came
    out = p.mask_body(b"\x81\xfe bob@example.com \x80", "text/html")
    assert out == b"\x81\xfe [REDACTED] \x80"
    # a byte-order mark decides, as it does for browsers
    out = p.mask_body("\ufeffmail bob@example.com".encode("utf-16-le"), "text/html")
    assert out.decode("utf-16") == "mail [REDACTED]"
    # JSON labelled text is masked as JSON (a card number written as a number stays JSON)
    out = p.mask_body(b'{"card": 4111111111111111}', "text/plain")
    assert json.loads(out) == {"card": REDACTED}


def test_mislabelled_and_unlabelled_bodies() -> None:
    p = plan({"json": ["$.secret"]}, DETECT)
    for content_type in ("application/octet-stream", None, "image/png", "text/html"):
        out = p.mask_body(b' {"secret": "s", "x": 1}', content_type)
        assert json.loads(out) == {"secret": REDACTED, "x": 1}, content_type
    assert p.mask_body(b"plain bob@example.com", None) == b"plain [REDACTED]"
    binary = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR bob@example.com"
    assert p.mask_body(binary, "image/png") is binary  # binary formats are not read
    almost = b'{"secret": "s", "x": '  # looks like JSON, is not: not JSON to a client either
    assert p.mask_body(almost, "application/octet-stream") == almost


JSONP_TYPES = ("application/javascript", "text/javascript", "application/json", None, "text/plain")


@pytest.mark.parametrize("content_type", JSONP_TYPES)
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'cb({"secret": "s", "x": 1})', b'cb({"secret":"[REDACTED]","x":1})'),
        (
            b' jQuery3_1.cb ( [{"secret": 1}] ) ;\n',
            b' jQuery3_1.cb ([{"secret":"[REDACTED]"}]) ;\n',
        ),
        # what Express's res.jsonp() writes
        (
            b'/**/ typeof cb === \'function\' && cb({"secret":"s"});',
            b'/**/ typeof cb === \'function\' && cb({"secret":"[REDACTED]"});',
        ),
    ],
)
def test_jsonp_arguments_are_masked(body: bytes, expected: bytes, content_type: str | None) -> None:
    p = plan({"json": ["$..secret"]})
    assert p.needs_body(content_type, body)
    assert p.mask_body(body, content_type) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'cb({secret: "s"})',  # a JavaScript object, not JSON: a browser reads it all the same
        b'cb({"a": 1}); steal({"secret": "s"})',  # more than one call
        b'cb({"secret": "s"}',  # no end
        b'define(["dep"], function (dep) { return dep.secret; })',  # a module, not data
    ],
)
def test_jsonp_whose_argument_is_not_json_fails_with_path_rules(body: bytes) -> None:
    assert looks_like_jsonp(body)
    for content_type in ("application/javascript", "application/json", None, "x/y"):
        with pytest.raises(ResponseMaskingFailed) as caught:
            plan({"json": ["$.secret"]}).mask_body(body, content_type)
        assert caught.value.http_status == 502
    # under a text type it is text (``Note (see [1])`` is not a script)
    assert plan({"json": ["$.secret"]}).mask_body(body, "text/plain") is body
    # detectors alone read it as text
    p = plan(DETECT)
    assert p.mask_body(b'cb({mail: "bob@example.com"})', "text/javascript") == (
        b'cb({mail: "[REDACTED]"})'
    )


def test_jsonp_sniffing() -> None:
    assert looks_like_jsonp(b'cb({"a"')
    assert looks_like_jsonp(b"\xef\xbb\xbf /**/a.b.c\n([1")
    assert looks_like_jsonp(b'/* c */\n// x\n/**/\ncb({"a"')
    assert looks_like_jsonp('cb({"a": 1})'.encode("utf-16"))
    assert not looks_like_jsonp(b"cb(1)")  # a number or string carries no fields
    assert not looks_like_jsonp(b"note (see above): {x}")
    assert not looks_like_jsonp(b"function cb() {}")
    assert not looks_like_jsonp(b'{"a": 1}')
    assert not looks_like_jsonp(b"/* never closed cb({")


J = b'{"data": [{"card": {"number": "4111111111111111"}}]}'


@pytest.mark.parametrize(
    "body",
    [
        b'"use strict";cb(' + J + b");",
        b"[0];cb(" + J + b")",
        b"(cb)(" + J + b")",
        b"cb['x'](" + J + b")",
        b"cb.call(null, " + J + b")",
        b"\\u0063b(" + J + b")",
        b"cb(" + J + b", 1)",
        b"cb(" + J + b"); // done",
        b'cb({"__proto__": ' + J + b"});",  # the page reads data through the prototype
        b"function f() { return 1; }",
    ],
)
def test_scripts_that_are_not_plain_jsonp_fail_with_path_rules(body: bytes) -> None:
    p = plan(CARD)
    for content_type in ("application/javascript", "text/javascript; charset=utf-8"):
        assert p.needs_body(content_type, body[:1024])
        with pytest.raises(ResponseMaskingFailed):
            p.mask_body(body, content_type)


def test_jsonp_in_other_forms() -> None:
    p = plan(CARD)
    masked_card = p.mask_body(J, "application/json")
    assert b"4111111111111111" not in masked_card
    # comments before the call; UTF-16 with a byte-order mark; gzip
    assert p.mask_body(b"// x\n/* y */cb(" + J + b");", "application/javascript") == (
        b"// x\n/* y */cb(" + masked_card + b");"
    )
    long_start = b" " * 1100 + b"cb(" + J + b")"  # past the sniffed bytes: labelled, masked
    assert p.mask_body(long_start, "application/javascript") == (
        b" " * 1100 + b"cb(" + masked_card + b")"
    )
    utf16 = ("cb(" + J.decode() + ")").encode("utf-16")
    assert p.needs_body(None, utf16[:1024])
    out = p.mask_body(utf16, "application/javascript; charset=utf-16")
    assert out.decode("utf-16") == "cb(" + masked_card.decode() + ")"
    gz = gzip.compress(b"cb(" + J + b");")
    assert p.needs_body("application/octet-stream", gz[:1024], "gzip")
    assert b"4111" not in gzip.decompress(p.mask_body(gz, None, "gzip"))
    # a JSON-looking body that is not JSON, but JSONP after a JSON-looking statement: refused
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(b'{}\ncb({"data": 1} junk)', "application/javascript")
    # long white space after a ")" inside the argument does not make the end search slow
    slow = b'cb({"data":[],"note":")' + b" " * 200_000 + b'end"});'
    started = time.monotonic()
    assert p.mask_body(slow, "application/javascript") is slow
    assert time.monotonic() - started < 2.0
    # detectors alone scan any script as text
    js = b'var mail = "bob@example.com";'
    assert plan(DETECT).mask_body(js, "application/javascript") == b'var mail = "[REDACTED]";'


@pytest.mark.parametrize(
    "charset",
    # not text encodings; unknown; or ones where ASCII bytes do not mean ASCII, so a client
    # decoding as UTF-8 sees fields callgate would not
    ["base64", "rot13", "zlib", "undefined", "punycode", "idna", "klingon", "utf-7",
     "unicode_escape", "shift_jis", "cp037", "hz"],
)  # fmt: skip
def test_charsets_callgate_does_not_read_fail(charset: str) -> None:
    for content_type in ("application/json", "application/javascript", "text/plain"):
        with pytest.raises(ResponseMaskingFailed):
            plan(CARD, DETECT).mask_body(J, f"{content_type}; charset={charset}")


def test_utf7_json_that_hides_a_field_from_a_utf7_reader_fails() -> None:
    body = (
        b'{"+ACIAOgB7ACI-k":1,"data":[{"card":{"number":"4111111111111111"}}],'
        b'"e":"+ACIAfQAsACIAZgAiADoAIg-g"}'
    )
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, "application/json; charset=utf-7")


def test_wide_json_is_read_as_json_clients_read_it() -> None:
    p = plan(CARD)
    masked = p.mask_body(J, "application/json")
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-16", "utf-32"):
        wide = J.decode().encode(codec)
        for content_type in (None, "application/octet-stream", "application/json"):
            assert p.needs_body(content_type, wide[:1024]), (codec, content_type)
            out = p.mask_body(wide, content_type)
            assert json.loads(out.decode(codec)) == json.loads(masked), (codec, content_type)
    # labelled UTF-16, but UTF-8 bytes: clients disagree on what it says, so it fails
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(J, "application/json; charset=utf-16")
    with pytest.raises(ResponseMaskingFailed):  # and sniffed
        p.mask_body(J, "text/plain; charset=utf-16")
    # text in UTF-16 cut mid-character cannot be read: it fails instead of raising anything else
    with pytest.raises(ResponseMaskingFailed):
        plan(DETECT).mask_body("\ufeffbob@example.com".encode("utf-16-le") + b"A", "text/plain")


def test_json_in_a_script_type_is_masked_as_json() -> None:
    p = plan(CARD)
    masked = p.mask_body(J, "application/json")
    for guard in (b"", b"for (;;);", b")]}'\n"):
        out = p.mask_body(guard + J, "application/javascript")
        assert out == guard + masked
    # detectors only: a number stays a JSON value
    out = plan(DETECT).mask_body(b'{"number": 4111111111111111}', "text/javascript")
    assert json.loads(out) == {"number": REDACTED}


def test_sniffing_looks_inside_compressed_bodies() -> None:
    p = plan(CARD)
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 20
    assert not p.needs_body("image/png", gzip.compress(png)[:1024], "gzip")
    assert not p.needs_body("image/png", zlib.compress(png)[:1024], "deflate")
    assert p.needs_body(None, gzip.compress(J)[:1024], "gzip")
    assert p.needs_body(None, gzip.compress(b"cb(" + J + b")")[:1024], "gzip")
    assert p.needs_body("image/png", b"\x1b\x00\x00", "br")  # cannot look: mask_body decides
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(b"\x1b\x00\x00", "image/png", "br")


def test_no_backtracking_in_script_sniffing() -> None:
    p = plan(CARD, DETECT)
    started = time.monotonic()
    # blank lines before an HTML page: text, buffered for the detectors, not a script
    page = b"\n" * 5000 + b"<html>bob@example.com</html>"
    assert p.needs_body("text/html", page[:1024])
    assert p.mask_body(page, "text/html") == b"\n" * 5000 + b"<html>[REDACTED]</html>"
    assert not looks_like_jsonp(b" " * 5000 + b"!")
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(b" " * 100_000 + b"!", "application/javascript")
    unclosed = b"/*" + b"x" * 1_000_000
    assert plan(CARD).mask_body(unclosed, "application/octet-stream") is unclosed
    assert time.monotonic() - started < 2.0


def test_a_line_comment_ends_at_any_line_terminator() -> None:
    body = b"// x\rcb(" + J + b');\ncb2({"ok":1})'
    assert looks_like_jsonp(body)
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, "application/javascript")


def test_text_that_starts_like_a_call_is_text() -> None:
    p = plan(CARD)
    for body, content_type in (
        (b"See ([docs](http://x))", "text/markdown"),
        (b"Note ({x}) and more", "text/plain"),
    ):
        assert p.mask_body(body, content_type) is body


def test_event_streams_are_read_as_utf8_whatever_the_label() -> None:
    body = b'data: {"data": [{"card": {"number": "4111111111111111"}}]}\n\n'
    out = plan(CARD).mask_body(body, "text/event-stream; charset=utf-16")
    assert b"4111111111111111" not in out


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        ("application/problem+json", "json"),
        ("application/vnd.api+json", "json"),
        ("text/json", "json"),
        ("application/x-ndjson", "ndjson"),
        ("text/event-stream", "event-stream"),
        ("text/plain", "text"),
        ("application/javascript", "script"),
        ("text/javascript; charset=utf-8", "script"),
        ("application/xml", "text"),
        ("image/svg+xml", "text"),
        ("application/x-www-form-urlencoded", "form"),
        ("multipart/form-data; boundary=x", "multipart"),
        ("image/png", "other"),
        ("application/octet-stream", "other"),
        (None, "other"),
        ("", "other"),
    ],
)
def test_media_kinds(content_type: str | None, kind: str) -> None:
    assert media_kind(content_type) == kind


def test_which_bodies_are_inspected() -> None:
    paths_only = plan(CARD)
    with_detectors = plan(CARD, DETECT)
    headers_only = plan({"headers": ["x-a"]})
    assert headers_only.inspection("application/json") == "none"
    assert not headers_only.needs_body("application/json")
    assert paths_only.inspection("application/json") == "buffer"
    assert paths_only.inspection("text/plain") == "sniff"
    assert with_detectors.inspection("text/plain") == "buffer"
    assert with_detectors.inspection("image/png") == "sniff"
    assert paths_only.needs_body("image/png")  # without the first bytes: fail closed
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"
    assert not with_detectors.needs_body("image/png", png)
    assert paths_only.needs_body("image/png", b'\n  {"data": []}')
    assert paths_only.needs_body(None, b'\xef\xbb\xbf["x"]')
    assert paths_only.needs_body(None, b"for(;;);{}")
    assert not paths_only.needs_body("text/plain", b"hello")
    assert with_detectors.needs_body("application/octet-stream", b"id,email\n1,a@b.co\n")
    assert not with_detectors.needs_body("application/octet-stream", b"")


def test_sniffing() -> None:
    assert looks_like_json(b'{"a"')
    assert looks_like_json('{"a": 1}'.encode("utf-16-le"))
    assert looks_like_json('{"a": 1}'.encode("utf-16"))  # with a byte-order mark
    assert looks_like_json('["a"]'.encode("utf-32"))
    assert looks_like_json(b")]}',\n[1]")
    assert not looks_like_json(b"<html>")
    assert looks_like_text(b"name,email\n")
    assert looks_like_text("text".encode("utf-16"))
    assert not looks_like_text(gzip.compress(b"x" * 100))
    assert not looks_like_text(b"\x00\x01\x02text")
    assert not looks_like_text(bytes(range(1, 40)) * 3)


# --- headers -----------------------------------------------------------------------------------


def test_headers() -> None:
    p = plan(
        {"headers": ["set-cookie"], "style": "hash"},
        {"headers": ["x-api-*"], "style": "partial", "keep": 2},
        {"headers": ["x-drop"], "style": "null"},
    )
    out = p.mask_headers(
        [
            ("Set-Cookie", "sid=abc123; Path=/; HttpOnly"),
            ("set-cookie", 'pref="dark"'),
            ("Set-Cookie", "flag"),
            ("X-API-Key", "abcdef"),
            ("X-Drop", "gone"),
            ("Content-Type", "application/json"),
            ("Content-Length", "12"),
            ("X-Other", "bob@example.com"),
        ]
    )
    assert out == [
        ("Set-Cookie", f"sid={HASH.token(b'abc123')}; Path=/; HttpOnly"),
        ("set-cookie", f'pref="{HASH.token(b"dark")}"'),
        ("Set-Cookie", HASH.token(b"flag")),
        ("X-API-Key", "****ef"),
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("X-Other", "bob@example.com"),  # no detectors in this plan
    ]


def test_detectors_on_headers() -> None:
    p = plan(DETECT, {"detect": ["ipv4"], "style": "null"})
    out = p.mask_headers(
        [
            ("Location", "/users?email=bob@example.com"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Content-Length", "4111111111111111"),
            ("X-Plain", "nothing"),
        ]
    )
    assert ("X-Plain", "nothing") in out
    assert ("Content-Length", "4111111111111111") in out  # framing is never touched
    assert all(name != "X-Forwarded-For" for name, _ in out)  # null: the header goes
    assert all("bob@" not in value for _, value in out)
    assert plan().mask_headers([("Set-Cookie", "a=b")]) == [("Set-Cookie", "a=b")]


# --- audit samples -----------------------------------------------------------------------------


def test_request_samples_and_query_strings() -> None:
    p = plan({"json": ["$.card"]}, DETECT)
    sample = p.mask_request_sample(
        b'{"card": "4111111111111111", "note": "bob@example.com"}', "application/json", 22
    )
    assert sample == b'{"card":"[REDACTED]","'
    assert p.mask_request_sample(b'{"card": ', "application/json") == UNMASKABLE_SAMPLE
    assert p.mask_request_sample(None, None) is None
    query = p.mask_query("api_key=abc&Token=x&email=bob%40example.com&q=hello+world&flag")
    assert query == "api_key=[REDACTED]&Token=[REDACTED]&email=[REDACTED]&q=hello+world&flag"
    assert plan().mask_query("access_token=abc&q=1") == "access_token=[REDACTED]&q=1"


def test_multipart_parts_are_masked_by_their_own_type() -> None:
    p = plan({"json": ["$.secret"]}, DETECT)
    body = (
        b"preamble\r\n"
        b"--XYZ\r\n"
        b"Content-Type: application/json\r\n\r\n"
        b'{"secret": "s", "a": 1}\r\n'
        b"--XYZ\r\n"
        b"Content-Type: text/plain\r\n\r\n"
        b"mail bob@example.com\r\n"
        b"--XYZ\r\n"
        b"Content-Type: image/png\r\n\r\n"
        b"\x89PNG\x00\x00bob@example.com\r\n"
        b"--XYZ--\r\n"
    )
    out = p.mask_body(body, 'multipart/mixed; boundary="XYZ"')
    assert b'{"secret":"[REDACTED]","a":1}\r\n--XYZ' in out
    assert b"mail [REDACTED]\r\n--XYZ" in out
    assert b"\x89PNG\x00\x00bob@example.com" in out  # binary parts are not read
    assert out.endswith(b"--XYZ--\r\n")
    assert plan({"json": ["$.secret"]}).inspection("multipart/mixed; boundary=a") == "buffer"
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(body, "multipart/mixed")  # no boundary
    encoded = b"--XYZ\r\nContent-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--XYZ--\r\n"
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(encoded, "multipart/mixed; boundary=XYZ")


def test_form_bodies_are_decoded_for_detectors() -> None:
    p = plan(DETECT)
    out = p.mask_body(
        b"name=Bob&email=bob%40example.com&x=%FF", "application/x-www-form-urlencoded"
    )
    assert out == b"name=Bob&email=[REDACTED]&x=%FF"
    same = b"a=1&b=2"
    assert p.mask_body(same, "application/x-www-form-urlencoded") is same


# --- a third review's cases: each was a body a client reads with the card in it ----------------

RAW = b'{"data":[{"card":{"number":"4111111111111111"}}]}'


@pytest.mark.parametrize(
    "body",
    [
        RAW[:-1] + b',"n":1e400}',  # JavaScript reads Infinity
        RAW[:-1] + b',"n":' + b"9" * 5000 + b"}",  # past Python's integer digit limit
        RAW[:-1] + b',"n":' + b"[" * 5000 + b"]" * 5000 + b"}",  # deeper than Python recurses
    ],
)
def test_json_that_python_cannot_read_but_javascript_can_fails(body: bytes) -> None:
    for content_type in ("application/json", "text/plain", "application/octet-stream", None):
        with pytest.raises(ResponseMaskingFailed):
            plan(CARD).mask_body(body, content_type)
    sse = b"data: " + body + b"\n\n"
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(sse, "text/event-stream")


def test_long_leading_white_space_does_not_hide_json() -> None:
    p = plan(CARD)
    for pad in (b" " * 1100, b"\r\n" * 3000):
        body = pad + RAW
        assert p.needs_body("text/plain", body[:1024])
        assert b"4111111111111111" not in p.mask_body(body, "text/plain")
    wide = (" " * 600 + RAW.decode()).encode("utf-16-le")
    assert p.needs_body(None, wide[:1024])
    assert "4111111111111111" not in p.mask_body(wide, None).decode("utf-16-le")
    commented = b"/*" + b"x" * 1100 + b"*/cb(" + RAW + b")"
    assert p.needs_body("application/octet-stream", commented[:1024])
    assert b"4111111111111111" not in p.mask_body(commented, "application/octet-stream")


def test_gzip_bodies_clients_read_differently_fail() -> None:
    p = plan(CARD)
    # browsers read the first gzip member only, Python's and Node's readers all of them
    for body in (
        gzip.compress(b'{"a":1}\n') + gzip.compress(RAW + b"\n"),
        gzip.compress(RAW) + gzip.compress(b"x"),
        gzip.compress(RAW) + b"junk",
        gzip.compress(b"") + gzip.compress(RAW),
    ):
        assert p.needs_body("text/plain", body[:1024], "gzip")
        with pytest.raises(ResponseMaskingFailed):
            p.mask_body(body, "application/x-ndjson", "gzip")
        with pytest.raises(ResponseMaskingFailed):
            p.mask_body(body, None, "gzip")
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(zlib.compress(RAW) + b"junk", "application/json", "deflate")
    # zero padding after the end is read by every client, and so here
    padded = gzip.compress(RAW) + b"\x00" * 8
    assert b"4111" not in gzip.decompress(p.mask_body(padded, "application/json", "gzip"))
    # a member count that would take long to read is refused at once
    many = gzip.compress(b"[") + gzip.compress(b" " * 4000) * 8000 + gzip.compress(b"]")
    started = time.monotonic()
    with pytest.raises(ResponseMaskingFailed):
        p.mask_body(many, "application/json", "gzip")
    assert time.monotonic() - started < 2.0


def test_four_reviews_worth_of_prefixes() -> None:
    p = plan(CARD)
    for body in (
        b"\xef\xbb\xbf" + b" " * 2000 + RAW,
        b")]}'\n" + b" " * 2000 + RAW,
    ):
        assert p.needs_body("text/plain", body[:1024])
        assert b"4111111111111111" not in p.mask_body(body, "text/plain")
    for body in (
        b"// " + b"x" * 1100 + b"\ncb(" + RAW + b")",
        b"<!--" + b"x" * 1100 + b"\ncb(" + RAW + b")",
        b"/**/" * 400 + b"cb(" + RAW + b")",
        b"\xef\xbb\xbf" + b" " * 2000 + b"cb(" + RAW + b")",
    ):
        assert p.needs_body("application/octet-stream", body[:1024])
        assert b"4111111111111111" not in p.mask_body(body, "application/octet-stream")


def test_jsonp_argument_python_cannot_read_fails() -> None:
    for content_type in ("text/plain", None, "application/javascript"):
        with pytest.raises(ResponseMaskingFailed):
            plan(CARD).mask_body(b"cb(" + RAW[:-1] + b',"n":1e400})', content_type)


def test_text_with_numbers_python_cannot_read_is_still_text() -> None:
    body = b"[1e400] is infinity"
    assert plan(CARD).mask_body(body, "text/plain") is body


def test_multipart_close_delimiter_is_a_whole_line() -> None:
    body = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nline\r\n--b--x\r\n--bb\r\n"
        b"--b\r\nContent-Type: application/json\r\n\r\n" + RAW + b"\r\n--b--\r\n"
    )
    # lines that only start like a delimiter are one to some parsers and not to others
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, "multipart/mixed; boundary=b")
    toolbelt = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--bX\r\nContent-Type: application/json"
        b"\r\n\r\n" + RAW + b"\r\n--b--\r\n"
    )
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(toolbelt, "multipart/mixed; boundary=b")
    # other repeated part fields are not about reading the part
    ok = b"--b\r\nX-A: 1\r\nX-A: 2\r\nContent-Type: application/json\r\n\r\n" + RAW + b"\r\n--b--"
    assert b"4111111111111111" not in plan(CARD).mask_body(ok, "multipart/mixed; boundary=b")


def test_detectors_on_wide_text_that_cannot_be_written_back_fail() -> None:
    body = b"\xff\xfe" + "bob@example.com ".encode("utf-16-le") + b"\xbf\xdc"
    with pytest.raises(ResponseMaskingFailed):
        plan(DETECT).mask_body(body, "text/plain")


@pytest.mark.parametrize(
    "stream",
    [
        b"\xef\xbb\xbfdata: " + RAW + b"\n\n",  # a byte-order mark, ignored by EventSource
        b"data: {}\n\r\ndata: " + RAW + b"\n\n",  # mixed line endings around an empty line
        b"data: {}\n\rdata: " + RAW + b"\n\n",
        b"data: {}\r\n\rdata: " + RAW + b"\r\r",
    ],
)
def test_event_stream_lines_end_as_the_spec_says(stream: bytes) -> None:
    out = plan(CARD).mask_body(stream, "text/event-stream")
    assert b"4111111111111111" not in out


def test_multipart_delimiters_count_only_at_line_start() -> None:
    body = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee x--b--y\r\n"
        b"--b\r\nContent-Type: application/json\r\n\r\n" + RAW + b"\r\n--b--\r\n"
    )
    out = plan(CARD).mask_body(body, "multipart/mixed; boundary=b")
    assert b"4111111111111111" not in out and b"see x--b--y" in out


def test_multipart_part_with_two_transfer_encodings_fails() -> None:
    body = (
        b"--b\r\nContent-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"Content-Type: application/json\r\n\r\n" + base64.b64encode(RAW) + b"\r\n--b--\r\n"
    )
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, "multipart/mixed; boundary=b")


def test_deeply_nested_multipart_fails() -> None:
    body = RAW
    content_type = "application/json"
    for n in range(400):
        boundary = f"b{n}".encode()
        body = (
            b"--"
            + boundary
            + b"\r\nContent-Type: "
            + content_type.encode()
            + b"\r\n\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
        content_type = f"multipart/mixed; boundary=b{n}"
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, content_type)


def test_jsonp_with_a_string_argument_fails_under_a_script_type() -> None:
    body = b"cb(\"cb({card:{number:'4111111111111111'}})\")"
    with pytest.raises(ResponseMaskingFailed):
        plan(CARD).mask_body(body, "application/javascript")


def test_unreadable_forms_fail_cleanly() -> None:
    with pytest.raises(ResponseMaskingFailed):
        plan(DETECT).mask_body(b"\xff\xfea", "application/x-www-form-urlencoded")


def test_a_fifth_reviews_cases() -> None:
    p = plan(CARD)
    # detectors in UTF-16/32 JSON, JSONP and JSON lines
    d = plan(DETECT)
    for codec in ("utf-16", "utf-16-le", "utf-32"):
        body = '{"mail":"bob@example.com"}'.encode(codec)
        assert "bob@example.com" not in d.mask_body(body, "application/json").decode(codec)
    # a head that ends inside the start of a JSONP call, or in the middle of a character
    for body in (
        b" " * 1021 + b"cb(" + RAW + b")",
        b"/**/" * 255 + b" cb(" + RAW + b")",
        b" " * 1000 + b"typeof cb === 'function' && cb(" + RAW + b")",
        "\u3000".encode() * 400 + b"cb(" + RAW + b")",
    ):
        assert p.needs_body("application/octet-stream", body[:1024]), body[:40]
        assert p.needs_body(None, gzip.compress(body)[:1024], "gzip")
        assert b"4111111111111111" not in p.mask_body(body, "application/octet-stream")
    # text and binary heads are still decided from their first bytes
    assert not p.needs_body("text/plain", b"Hello world, " * 100)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    assert not p.needs_body("image/png", png[:1024])
    # gzip: a member that ends inside or with the head may have more after it
    for body in (
        gzip.compress(b"") + b"\x00" * 1100 + gzip.compress(RAW),
        gzip.compress(png[:1001], 0, mtime=0) + gzip.compress(RAW),  # ends with the head
    ):
        assert p.needs_body("image/png", body[:1024], "gzip")
        with pytest.raises(ResponseMaskingFailed):
            p.mask_body(body, "image/png", "gzip")
    # lone surrogates from \\ud800 escapes are written back escaped
    lone = b'{"x":"\\ud800","data":[{"card":{"number":"4111111111111111"}}]}'
    out = p.mask_body(lone, "application/json")
    assert b"4111111111111111" not in out and json.loads(out)["x"] == "\ud800"
    sse = b"data: " + lone + b"\n\n"
    assert b"4111111111111111" not in p.mask_body(sse, "text/event-stream")


def test_ordinary_heads_are_still_decided_by_their_first_bytes() -> None:
    p = plan(CARD)
    for head in (
        b"\xff" * 1024,  # padding of a firmware image: bytes that are not UTF-8, not a cut one
        b"typeof values are: " + b"x " * 600,  # text that starts with the word
        b"\x89PNG\r\n\x1a\n" + os.urandom(1100),
        b"PK\x03\x04" + os.urandom(1100),
        b"%PDF-1.7\n" + os.urandom(1100),
    ):
        assert not p.needs_body("application/octet-stream", head[:1024]), head[:20]
