"""Framing: any split of a stream decodes the same; garbage raises only ProtocolViolation."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.errors import ProtocolViolation
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.framing import BackendObserver, Frame, FrontendReader, Passthrough

INSPECT = frozenset({m.BackendType.READY_FOR_QUERY, m.BackendType.COMMAND_COMPLETE})
STREAMED = frozenset({m.FrontendType.COPY_DATA})


def observer(max_frame: int = 1 << 20, max_decoded: int = 1 << 16) -> BackendObserver:
    return BackendObserver(
        INSPECT, known=m.BACKEND_TYPES, max_frame=max_frame, max_decoded=max_decoded
    )


def reader(max_frame: int = 1 << 20, max_decoded: int = 1 << 16) -> FrontendReader:
    return FrontendReader(
        streamed=STREAMED, known=m.FRONTEND_TYPES, max_frame=max_frame, max_decoded=max_decoded
    )


backend_msgs = st.one_of(
    st.binary(max_size=300).map(lambda b: m.frame(m.BackendType.DATA_ROW, b)),
    st.binary(max_size=50).map(lambda b: m.frame(m.BackendType.ROW_DESCRIPTION, b)),
    st.text(max_size=20).map(lambda s: m.encode_command_complete(s.replace("\0", ""))),
    st.sampled_from("ITE").map(m.encode_ready_for_query),
)

frontend_msgs = st.one_of(
    st.text(max_size=200).map(lambda s: m.encode_query(s.replace("\0", ""))),
    st.binary(max_size=2000).map(lambda b: m.frame(m.FrontendType.COPY_DATA, b)),
    st.just(m.SYNC),
    st.binary(max_size=40).map(lambda b: m.frame(m.FrontendType.BIND, b)),
)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@settings(max_examples=300)
@given(st.lists(backend_msgs, max_size=12), st.lists(st.integers(min_value=0), max_size=8))
def test_backend_any_split_same_frames(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    whole = observer().feed(stream)
    o = observer()
    pieces: list[Frame] = []
    for chunk in splits(stream, cuts):
        pieces += o.feed(chunk)
    assert pieces == whole
    assert o.at_boundary
    expected = [msg[0] for msg in msgs if msg[0] in INSPECT]
    assert [f.type for f in whole] == expected


@settings(max_examples=300)
@given(st.lists(frontend_msgs, max_size=12), st.lists(st.integers(min_value=0), max_size=8))
def test_frontend_any_split_same_bytes(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    r = reader()
    rebuilt = bytearray()
    frames: list[int] = []
    for chunk in splits(stream, cuts):
        for item in r.feed(chunk):
            if isinstance(item, Passthrough):
                rebuilt += item.data
            else:
                rebuilt += m.frame(item.type, item.body)
                frames.append(item.type)
    assert bytes(rebuilt) == stream
    assert r.at_boundary
    assert frames == [msg[0] for msg in msgs if msg[0] not in STREAMED]


@settings(max_examples=500)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=5))
def test_random_bytes_raise_only_protocol_violation(data: bytes, cuts: list[int]) -> None:
    for make in (observer, reader):
        decoder = make()
        with contextlib.suppress(ProtocolViolation):
            for chunk in splits(data, cuts):
                decoder.feed(chunk)


@given(st.binary(max_size=200))
def test_random_startup_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        m.read_startup_packet(data)


def test_oversized_frame_refused() -> None:
    big = b"D" + struct.pack("!I", 2000 + 4)
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        observer(max_frame=1000).feed(big)
    with pytest.raises(ProtocolViolation, match="exceeds the limit"):
        reader(max_decoded=100).feed(b"Q" + struct.pack("!I", 500))


def test_inspected_frame_limited_by_decode_limit() -> None:
    # A CommandComplete larger than max_decoded is refused even though max_frame allows it.
    msg = b"C" + struct.pack("!I", 300 + 4)
    with pytest.raises(ProtocolViolation):
        observer(max_frame=1 << 20, max_decoded=100).feed(msg)


def test_unknown_type_and_bad_length() -> None:
    with pytest.raises(ProtocolViolation, match="unknown message type"):
        observer().feed(b"\x01\x00\x00\x00\x04")
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        reader().feed(b"Q\x00\x00\x00\x02")


def test_large_streamed_copy_passes_in_pieces() -> None:
    payload = b"x" * 100_000
    msg = m.frame(m.FrontendType.COPY_DATA, payload)
    r = reader(max_decoded=1000)
    out = bytearray()
    for i in range(0, len(msg), 4096):
        for item in r.feed(msg[i : i + 4096]):
            assert isinstance(item, Passthrough)
            out += item.data
    assert bytes(out) == msg


def test_large_inspected_message_accumulates() -> None:
    tag = "x" * 50_000
    msg = m.encode_command_complete(tag)
    o = observer(max_decoded=1 << 20)
    got: list[Frame] = []
    for i in range(0, len(msg), 1000):
        got += o.feed(msg[i : i + 1000])
    assert len(got) == 1 and m.decode_command_complete(got[0].body) == tag


@settings(max_examples=200)
@given(st.lists(backend_msgs, max_size=10), st.lists(st.integers(min_value=0), max_size=6))
def test_positions_point_at_the_frames(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    o = observer()
    seen: list[tuple[Frame, int, int]] = []
    for chunk in splits(stream, cuts):
        seen += o.feed_positions(chunk)
        assert o.consumed - o.pending_bytes >= (seen[-1][2] if seen else 0)
    for f, start, end in seen:
        assert stream[start:end] == m.frame(f.type, f.body)
