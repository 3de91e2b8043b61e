"""The stand-in error is swapped for callgate's own, however the upstream's bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.engines.postgres.refusal import ResponseRewriter, stand_in_sql
from callgate.engines.postgres.session import _OBSERVED
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import BackendObserver

OURS = m.encode_error("42501", "denied by policy 'p' rule 0")


def rewriter() -> ResponseRewriter:
    obs = BackendObserver(_OBSERVED, known=m.BACKEND_TYPES, max_frame=1 << 20, max_decoded=1 << 16)
    return ResponseRewriter(obs)


def server_answer(nonce: str) -> tuple[bytes, bytes]:
    """Rows of an earlier query, then the stand-in's syntax error; and what the caller must see."""
    before = (
        m.frame(m.BackendType.ROW_DESCRIPTION, b"\x00\x00")
        + m.frame(m.BackendType.DATA_ROW, b"\x00\x01\x00\x00\x00\x03abc")
        + m.encode_command_complete("SELECT 1")
        + m.encode_ready_for_query("T")
    )
    stand_in = m.encode_error("42601", f'syntax error at or near "{stand_in_sql(nonce)}"')
    after = m.encode_ready_for_query("E") + m.encode_command_complete("ROLLBACK")
    after += m.encode_ready_for_query("I")
    return before + stand_in + after, before + OURS + after


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_replaced_at_any_split(cuts: list[int]) -> None:
    nonce = "00112233aabbccdd"
    stream, expected = server_answer(nonce)
    rw = rewriter()
    rw.arm(nonce, OURS, ready_expected=2)
    out = bytearray()
    points = sorted({c % (len(stream) + 1) for c in cuts})
    last = 0
    for p in [*points, len(stream)]:
        if rw.active:
            data, _ = rw.process(stream[last:p])
        else:
            data = stream[last:p]
        out += data
        last = p
    assert bytes(out) == expected
    assert not rw.active


def test_other_errors_pass_untouched() -> None:
    rw = rewriter()
    rw.arm("feedfacefeedface", OURS, ready_expected=1)
    other = m.encode_error("23505", "duplicate key") + m.encode_ready_for_query("I")
    data, frames = rw.process(other)
    assert data == other
    assert [f.type for f in frames] == [ord("E"), ord("Z")]
    assert not rw.active
