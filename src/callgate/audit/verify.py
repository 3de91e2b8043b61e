"""Check a recorded hash chain (the chain is defined in :mod:`callgate.store.chain`)."""

from __future__ import annotations

from callgate.store.base import Store
from callgate.store.chain import first_broken_link


async def verify_session_chain(store: Store, session_id: str | None) -> tuple[bool, int | None]:
    """``(True, None)`` if every link of the session's chain checks out, else ``(False, seq)``
    naming the first event that does not. ``session_id=None`` checks the non-session chain."""
    bad = first_broken_link(await store.session_events(session_id))
    return bad is None, bad
