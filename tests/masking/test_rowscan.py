"""The DataRow loop in C (``callgate/masking/_rowscan.c``) against the Python loop it stands in
for: the same bytes out, the same counts, the same failures, on random rows and plans; and the
run really went through C wherever the plan is one it covers."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.masking import detectors as detectors_module
from callgate.masking import rows as rows_module
from callgate.masking.errors import MaskingFailed
from callgate.masking.rows import RowRewriter
from callgate.masking.styles import REDACTED
from tests.masking.helpers import data_row, parse_row
from tests.masking.test_rows_batch import (
    INT4,
    INT8,
    JSON,
    NUMERIC,
    TEXT,
    VARCHAR,
    message,
    rewriter,
    rows_for,
)

C_LOOP = rows_module.REWRITE_RUN_C


def test_the_c_loop_is_built() -> None:
    """``make setup`` compiles it (gcc and the Python headers are part of the set-up); without it
    callgate still masks, in Python, several times slower."""
    assert C_LOOP is not None


class Counting:
    """Wraps the C loop: how many runs it took, how many it gave back."""

    def __init__(self, fn: Callable[..., bytes | None]) -> None:
        self.fn = fn
        self.done = 0
        self.given_back = 0

    def __call__(self, *args: Any) -> bytes | None:
        out = self.fn(*args)
        if out is None:
            self.given_back += 1
        else:
            self.done += 1
        return out


def both(
    make: Callable[[], RowRewriter], buf: bytes, pos: int
) -> tuple[tuple[object, list[int]], tuple[object, list[int]], Counting]:
    """(result, counts) of the C loop and of the Python loop, each on a fresh rewriter;
    a result is the bytes out and the stop, or the MaskingFailed message."""
    assert C_LOOP is not None
    counting = Counting(C_LOOP)
    results = []
    for loop in (counting, None):
        rw = make()
        rows_module.REWRITE_RUN_C = loop
        try:
            parts, stop = rw.rewrite_rows(buf, pos, len(buf))
            out: object = (b"".join(parts) if parts is not None else None, stop)
        except MaskingFailed as exc:
            out = f"MaskingFailed: {exc}"
        finally:
            rows_module.REWRITE_RUN_C = C_LOOP
        results.append((out, list(rw.counts)))
    return results[0], results[1], counting


# --- random plans the C loop covers --------------------------------------------------------------

c_column = st.tuples(
    # int8, numeric and json in text form are searched by the email detector but not as text
    st.sampled_from([TEXT, TEXT, VARCHAR, INT4, INT8, NUMERIC, JSON]),
    st.sampled_from([0, 1]),
    st.sampled_from([None, None, "redact", "null", "partial", "hash", "email"]),
)


@st.composite
def c_batches(draw: st.DrawFn) -> tuple[Callable[[], RowRewriter], list[list[bytes | None]]]:
    columns = draw(st.lists(c_column, min_size=1, max_size=7))
    detectors = draw(st.sampled_from([(), ("email",), ("email",)]))
    keep = draw(st.integers(0, 6))

    def make() -> RowRewriter:
        return rewriter(columns, detectors, "redact", keep)

    return make, draw(rows_for(columns, max_rows=8))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=c_batches(), data=st.data())
def test_property_the_c_loop_gives_what_the_python_loop_gives(
    batch: tuple[Callable[[], RowRewriter], list[list[bytes | None]]], data: st.DataObject
) -> None:
    make, rows = batch
    before = data.draw(st.sampled_from([b"", message(b"C", b"SELECT 1\0")]))
    after = data.draw(
        st.sampled_from([b"", message(b"C", b"SELECT 1\0"), message(b"D", data_row(rows[0]))[:-1]])
    )
    buf = before + b"".join(message(b"D", data_row(values)) for values in rows) + after
    c, python, counting = both(make, buf, len(before))
    assert c == python
    assert make()._c_plan  # every plan drawn here is one the C loop covers
    # one call at most (none when nothing in the run can need masking)
    assert counting.done + counting.given_back <= 1


def test_the_c_loop_runs_for_the_plan_of_the_benchmark() -> None:
    """Column rule in style partial, the email detector redacting: the issue's benchmark plan."""
    make = lambda: rewriter([(INT4, 1, None), (TEXT, 1, "partial"), (TEXT, 1, None)], ("email",))  # noqa: E731
    rows = [
        [
            struct.pack("!i", i),
            f"user{i}@example.com".encode(),
            f"to p{i}@mail.example.org".encode(),
        ]
        for i in range(50)
    ]
    buf = b"".join(message(b"D", data_row(values)) for values in rows)
    c, python, counting = both(make, buf, 0)
    assert c == python and counting.done == 1 and counting.given_back == 0
    (out, _), counts = c
    assert isinstance(out, bytes)
    assert b"@example.com" not in out.replace(b"*.com", b"")
    assert b"mail.example.org" not in out
    first = parse_row(out[5 : 1 + struct.unpack_from("!I", out, 1)[0]])
    assert first == [struct.pack("!i", 0), b"*************.com", f"to {REDACTED}".encode()]
    assert counts == [0, 50, 50]


@pytest.mark.parametrize(
    ("values", "gives_back"),
    [
        ([b"x", "é to b@mail.example.org".encode()], False),  # flagged, UTF-8
        ([b"x", b"\xe9 to b@mail.example.org"], True),  # flagged, not UTF-8: Python raises
        ([b"x", b"a@ex.org b@ex.org"], True),  # two addresses in one value
        (["ünï".encode(), b"plain"], False),  # partial by characters, in Python, from C
        ([b"\xff\xfe", b"plain"], True),  # partial of a value that is not UTF-8: Python raises
        ([b"k" * 300, b"far@example.org " + b"z" * 400], False),  # stars past one block
        ([b"", b"@@ .@x. a..b@ex.org"], True),  # several flags in one value
        ([b"", b"a..b@ex.org"], False),  # dot-atom: what follows the last ".."
        ([b"", b"x ..lead@ex.org."], False),  # no leading dot
    ],
)
def test_what_the_c_loop_gives_back_and_what_it_keeps(
    values: list[bytes], gives_back: bool
) -> None:
    make = lambda: rewriter([(TEXT, 0, "partial"), (TEXT, 0, None)], ("email",), keep=3)  # noqa: E731
    buf = message(b"D", data_row(values)) * 3
    c, python, counting = both(make, buf, 0)
    assert c == python
    assert counting.given_back == (1 if gives_back else 0)


def test_a_domain_shape_not_yet_seen_is_asked_of_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C loop reads domain lengths from the cache of detectors.email_at; on a miss it asks
    email_at itself, which fills the cache."""
    monkeypatch.setattr(detectors_module, "_DOMAIN_SHAPES", {})
    monkeypatch.setattr(rows_module, "_DOMAIN_SHAPES", detectors_module._DOMAIN_SHAPES)
    make = lambda: rewriter([(TEXT, 0, None)], ("email",))  # noqa: E731
    buf = message(b"D", data_row([b"mail bob@sub.example.co.uk today"]))
    c, python, counting = both(make, buf, 0)
    assert c == python and counting.done == 1
    assert detectors_module._DOMAIN_SHAPES  # the miss filled it
    c, python, counting = both(make, buf, 0)
    assert c == python and counting.done == 1


@pytest.mark.parametrize(
    "bad",
    [
        message(b"D", data_row([b"a"])),  # too few columns
        message(b"D", b"\x00\x02\x00\x00\x00\x05abc"),  # a value runs past its row
        message(b"D", b"\x00\x02\xff\xff\xff\xfe"),  # a negative length other than -1
        message(b"D", b"\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x09b@ex.com"),
        message(b"D", b"\x00\x03\x00\x00\x00\x01a\x00\x00\x00\x01b\x00\x00\x00\x01c"),
        b"D\x00\x00\x00\x02",  # a message length shorter than its length field
    ],
)
def test_a_malformed_row_fails_the_same_way_with_the_c_loop(bad: bytes) -> None:
    make = lambda: rewriter([(TEXT, 0, "redact"), (TEXT, 0, None)], ("email",))  # noqa: E731
    good = message(b"D", data_row([b"a", b"to bob@example.com"]))
    c, python, _ = both(make, good + bad + good, 0)
    assert c == python
    failure, _ = c
    assert isinstance(failure, str) and failure.startswith("MaskingFailed")


def test_a_flagged_value_of_another_type_goes_back_to_python() -> None:
    """JSON text under the email detector alone: passed in C unless the trigger flags it."""
    make = lambda: rewriter([(JSON, 0, None), (TEXT, 0, None), (INT8, 0, None)], ("email",))  # noqa: E731
    quiet = message(b"D", data_row([b'{"a": 1}', b"to bob@example.com", b"42"]))
    c, python, counting = both(make, quiet * 3, 0)
    assert c == python and counting.done == 1
    loud = message(b"D", data_row([b'{"a": "bob@example.com"}', b"x", b"42"]))
    c, python, counting = both(make, quiet + loud, 0)
    assert c == python and counting.given_back == 1


@pytest.mark.parametrize("keep", [0, 3, 2**40, 2**63, 2**80])
def test_any_keep_the_config_allows_is_taken_as_python_takes_it(keep: int) -> None:
    """``keep`` has no upper bound in the config; past 64 bits it is still only "more than half
    the value" (it went into C as an OverflowError before)."""
    make = lambda: rewriter([(TEXT, 0, "partial")], (), "redact", keep)  # noqa: E731
    buf = message(b"D", data_row([b"abcdef"]))
    c, python, counting = both(make, buf, 0)
    assert c == python and counting.done == 1


def test_styles_that_are_functions_of_the_value_run_in_c() -> None:
    make = lambda: rewriter(  # noqa: E731
        [(TEXT, 0, "hash"), (TEXT, 1, "email"), (TEXT, 0, "partial")], ("email",), keep=2
    )
    rows = [[f"v{i}".encode(), f"u{i}@example.com".encode(), f"ü{i}ñ".encode()] for i in range(20)]
    buf = b"".join(message(b"D", data_row(values)) for values in rows)
    c, python, counting = both(make, buf, 0)
    assert c == python and counting.done == 1 and counting.given_back == 0
    (out, _), counts = c
    assert isinstance(out, bytes) and b"tok_" in out and b"example.com" in out
    assert counts == [20, 20, 20]
