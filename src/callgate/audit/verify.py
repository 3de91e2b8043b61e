"""Check recorded hash chains and signed checkpoints (see docs/audit.md, "Verifying").

:func:`verify_session_chain` checks the links of one chain. :func:`verify_store` checks every
chain and every checkpoint:

1. the checkpoints form an unbroken chain (ids 1, 2, ...; each ``prev`` the digest of the one
   before) and each is signed by the given Ed25519 public key;
2. each event chain links correctly (a changed, removed, inserted or reordered event breaks a
   link or a hash), and nothing follows a ``session.end``;
3. each chain still reaches every head a checkpoint signed for it: a tail cut off, or a chain
   rewritten consistently from some point on, no longer matches;
4. every chain a checkpoint names still exists, unless a later ``purge`` checkpoint says that
   retention removed it.

Events after a chain's last signed head (a live session, or the last seconds before a crash)
are reported as unanchored: their links are checked, but a cut there cannot be detected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.store.base import Store
from callgate.store.chain import ZERO_HASH, canonical_event, chain_hash, first_broken_link
from callgate.store.checkpoints import ZERO_DIGEST, digest_of, public_key_b64, signature_ok
from callgate.store.records import EventRecord

SESSION_END = "session.end"


async def verify_session_chain(store: Store, session_id: str | None) -> tuple[bool, int | None]:
    """``(True, None)`` if every link of the session's chain checks out, else ``(False, seq)``
    naming the first event that does not. ``session_id=None`` checks the non-session chain."""
    bad = first_broken_link(await store.session_events(session_id))
    return bad is None, bad


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that does not verify. ``seq``/``event_id`` name the first bad event of the chain
    (``None`` when a whole chain or a checkpoint is at fault)."""

    reason: str
    session_id: str | None = None
    seq: int | None = None
    event_id: int | None = None
    checkpoint_id: int | None = None

    def describe(self) -> str:
        where: list[str] = []
        if self.checkpoint_id is not None and self.seq is None:
            where.append(f"checkpoint {self.checkpoint_id}")
        if self.session_id is not None:
            where.append(f"session {self.session_id}")
        elif self.seq is not None:
            where.append("events outside sessions")
        if self.seq is not None:
            ident = f" (id {self.event_id})" if self.event_id is not None else ""
            where.append(f"event {self.seq}{ident}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


@dataclass
class VerifyReport:
    chains: int = 0
    events: int = 0
    checkpoints: int = 0
    signatures_checked: bool = False
    public_key: str | None = None
    problems: list[Problem] = field(default_factory=list)
    #: chains with events no checkpoint covers yet: ``{chain: first unanchored seq}``
    unanchored: dict[str | None, int] = field(default_factory=dict)
    purged: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True, slots=True)
class _Signed:
    seq: int
    hash: str
    checkpoint_id: int


def _link_problem(chain: str | None, events: list[EventRecord]) -> Problem | None:
    """The first event whose link or hash fails, with the reason."""
    prev = ZERO_HASH
    last_seq: int | None = None
    ended_at: int | None = None
    for event in events:
        if ended_at is not None:
            return Problem(
                f"event after the session ended (at event {ended_at}): inserted",
                chain,
                event.seq,
                event.id,
            )
        if last_seq is not None and event.seq <= last_seq:
            return Problem("sequence number out of order", chain, event.seq, event.id)
        if event.prev_hash != prev:
            reason = (
                "the first event links to an earlier one: the chain's start was removed"
                if last_seq is None
                else "does not link to the event before it: an event was removed, inserted"
                " or reordered here"
            )
            return Problem(reason, chain, event.seq, event.id)
        canonical = canonical_event(
            event.session_id, event.seq, event.ts, event.type, event.payload
        )
        if chain_hash(prev, canonical) != event.hash:
            return Problem(
                "hash does not match its contents: the event was edited", chain, event.seq, event.id
            )
        prev = event.hash
        last_seq = event.seq
        if event.type == SESSION_END and chain is not None:
            ended_at = event.seq
    return None


def _anchor_problem(
    chain: str | None, events: list[EventRecord], signed: list[_Signed]
) -> Problem | None:
    """The chain (whose links verify) against the heads checkpoints signed for it, in order."""
    by_seq = {e.seq: e for e in events}
    last_good = 0
    for head in signed:
        event = by_seq.get(head.seq)
        if event is not None and event.hash == head.hash:
            last_good = head.seq
            continue
        later = [e for e in events if e.seq > last_good]
        first_bad = later[0] if later else None
        if event is None and (not events or events[-1].seq < head.seq):
            # the tail was cut off: the first missing event is the bad one
            missing = (events[-1].seq + 1) if events else 1
            return Problem(
                f"missing: the chain ends at event {missing - 1} but checkpoint"
                f" {head.checkpoint_id} signed event {head.seq} (the tail was truncated)",
                chain,
                missing,
                None,
                head.checkpoint_id,
            )
        return Problem(
            f"the chain from here on does not match checkpoint {head.checkpoint_id}"
            f" (which signed event {head.seq}): it was rewritten",
            chain,
            first_bad.seq if first_bad is not None else head.seq,
            first_bad.id if first_bad is not None else None,
            head.checkpoint_id,
        )
    return None


async def verify_store(
    store: Store,
    public_key: ed25519.Ed25519PublicKey | None,
    *,
    session_id: str | None = None,
    only_session: bool = False,
) -> VerifyReport:
    """Verify every chain and checkpoint (or, with ``only_session``, the chain of ``session_id``
    against the checkpoints). Without ``public_key`` signatures are not checked
    (``report.signatures_checked`` is ``False``)."""
    report = VerifyReport(signatures_checked=public_key is not None)
    if public_key is not None:
        report.public_key = public_key_b64(public_key)
    checkpoints = await store.checkpoints()
    report.checkpoints = len(checkpoints)
    signed: dict[str | None, list[_Signed]] = {}
    purged: set[str] = set()
    prev_digest, expected_id = ZERO_DIGEST, 1
    for cp in checkpoints:
        trusted = True
        if cp.id != expected_id or cp.prev != prev_digest:
            what = "missing before it" if cp.id > expected_id else "out of order"
            report.problems.append(
                Problem(
                    f"the checkpoint chain is broken: a checkpoint is {what} or was altered",
                    checkpoint_id=cp.id,
                )
            )
        if public_key is not None and not signature_ok(cp, public_key):
            trusted = False
            reason = (
                "signed by another key" if cp.public_key != report.public_key else "bad signature"
            )
            report.problems.append(
                Problem(f"{reason}: its heads are not trusted", None, checkpoint_id=cp.id)
            )
        prev_digest, expected_id = digest_of(cp), cp.id + 1
        if not trusted:
            continue
        for chain, seq, digest in cp.heads:
            signed.setdefault(chain, []).append(_Signed(seq, digest, cp.id))
        purged.update(cp.purged)
    report.purged = len(purged)

    if only_session:
        chains: Iterable[str | None] = [session_id]
    else:
        present = await store.chain_ids()
        expected = [c for c in signed if c not in purged and c not in present]
        chains = sorted({*present, *expected}, key=lambda c: (c is None, c or ""))
    for chain in chains:
        events = await store.session_events(chain)
        report.chains += 1
        report.events += len(events)
        heads = sorted(signed.get(chain, []), key=lambda h: h.seq)
        if not events:
            if heads and chain not in purged:
                report.problems.append(
                    Problem(
                        f"every event is missing but checkpoint {heads[-1].checkpoint_id} signed"
                        f" its event {heads[-1].seq} (the session was deleted)",
                        chain,
                        1,
                        None,
                        heads[-1].checkpoint_id,
                    )
                )
            elif chain is not None and not heads:
                report.problems.append(Problem("a session without any event", chain))
            continue
        problem = _link_problem(chain, events) or _anchor_problem(chain, events, heads)
        if problem is not None:
            report.problems.append(problem)
            continue
        anchored = heads[-1].seq if heads else 0
        tail = [e.seq for e in events if e.seq > anchored]
        if tail:
            report.unanchored[chain] = tail[0]
    return report
