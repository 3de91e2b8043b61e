"""The hash chain construction: canonical JSON, links, verification."""

from __future__ import annotations

import hashlib
import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from callgate.store import (
    ZERO_HASH,
    AppendEvent,
    EventRecord,
    canonical_event,
    canonical_json,
    chain_hash,
    first_broken_link,
)
from callgate.store.chain import ChainHeads

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    session_id=st.none() | st.text(),
    seq=st.integers(min_value=0, max_value=2**62),
    ts=st.floats(allow_nan=False, allow_infinity=False),
    type_=st.text(),
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
)
def test_canonical_event_is_canonical_json_of_the_event(
    session_id: str | None, seq: int, ts: float, type_: str, payload: dict[str, object]
) -> None:
    payload_json = canonical_json(payload)
    expected = json.dumps(
        {"payload": payload, "seq": seq, "session_id": session_id, "ts": ts, "type": type_},
        separators=(",", ":"),
        sort_keys=True,
    )
    assert canonical_event(session_id, seq, ts, type_, payload_json) == expected


def test_canonical_event_renders_an_integer_time_as_the_float_it_is_stored_as() -> None:
    assert canonical_event("s", 1, 5, "t", "{}") == canonical_event("s", 1, 5.0, "t", "{}")
    assert '"ts":5.0' in canonical_event("s", 1, 5, "t", "{}")


def test_chain_hash_is_sha256_of_previous_hash_bytes_and_canonical_text() -> None:
    canonical = canonical_event("s", 1, 1.5, "query", '{"a":1}')
    expected = hashlib.sha256(bytes(32) + canonical.encode()).hexdigest()
    assert chain_hash(ZERO_HASH, canonical) == expected
    assert ZERO_HASH == "0" * 64


def _chain(n: int, session_id: str | None = "s1") -> list[EventRecord]:
    batch = ChainHeads().batch()
    rows = batch.rows(
        [AppendEvent(session_id, i + 1, 1000.0 + i, "query", f'{{"n":{i}}}') for i in range(n)]
    )
    return [EventRecord(i + 1, *row) for i, row in enumerate(rows)]


def test_a_linked_chain_verifies() -> None:
    events = _chain(5)
    assert events[0].prev_hash == ZERO_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert first_broken_link(events) is None


def test_verification_names_the_first_edited_event() -> None:
    events = _chain(5)
    edited = events[2]
    events[2] = EventRecord(
        edited.id, edited.session_id, edited.seq, edited.ts, edited.type, '{"n":99}',
        edited.prev_hash, edited.hash,
    )  # fmt: skip
    assert first_broken_link(events) == 3


def test_verification_detects_a_removed_event_and_a_reordering() -> None:
    events = _chain(5)
    assert first_broken_link(events[:2] + events[3:]) == 4
    assert first_broken_link([events[0], events[2], events[1]]) == 3


def test_verification_detects_a_changed_timestamp() -> None:
    events = _chain(3)
    e = events[1]
    events[1] = EventRecord(
        e.id, e.session_id, e.seq, e.ts + 1, e.type, e.payload, e.prev_hash, e.hash
    )
    assert first_broken_link(events) == 2


def test_writer_numbers_events_without_a_session() -> None:
    batch = ChainHeads([(None, 7, "ab" * 32)]).batch()
    (row,) = batch.rows([AppendEvent(None, None, 1.0, "auth.failure", "{}")])
    assert row[1] == 8
    assert row[5] == "ab" * 32


def test_heads_move_only_on_commit_and_closed_chains_are_forgotten() -> None:
    heads = ChainHeads()
    batch = heads.batch()
    batch.rows([AppendEvent("s", 1, 1.0, "session.start", "{}")])
    assert heads.get("s") is None  # not committed: the next batch starts the chain afresh
    batch.commit()
    head = heads.get("s")
    assert head is not None and head[0] == 1
    batch = heads.batch()
    batch.rows([AppendEvent("s", 2, 2.0, "session.end", "{}")])
    batch.close("s")
    batch.commit()
    assert heads.get("s") is None
