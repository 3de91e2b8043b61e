"""Errors the store raises. Messages name what failed, never a value that was being written."""

from __future__ import annotations

from callgate.errors import CallgateError


class StoreError(CallgateError):
    """Root of store errors."""


class StoreUnavailable(StoreError):
    """The store cannot take writes right now (disk full, locked past the timeout, file removed).

    Every write in the failed transaction gets this error; the writer keeps serving later ones.
    """


class StoreBusy(StoreUnavailable):
    """Another process holds the database's write lock; trying again later may succeed."""


class StoreConflict(StoreError):
    """One write broke a constraint (e.g. a duplicate API key name). Only that write fails."""


class StoreClosed(StoreError):
    """The store was closed; nothing more can be written."""

    def __init__(self) -> None:
        super().__init__("the store is closed")
