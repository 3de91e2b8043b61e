"""Types of the C extension built from ``_rowscan.c`` (see that file and ``rows.py``)."""

from collections.abc import Callable

def rewrite_run(
    run: bytes,
    ends: list[int],
    at: list[int],
    walk_flagged: tuple[tuple[int, int], ...],
    walk_static: tuple[tuple[int, int], ...],
    count: bytes,
    constant: tuple[bytes, ...],
    keep: tuple[int, ...],
    email_hit: bytes | None,
    classes: bytes,
    email_at: Callable[[bytes, int, int, int], tuple[int, int] | None],
    domain_shapes: dict[bytes, int],
    counts: list[int],
    large: int,
    function: tuple[Callable[[bytes], bytes], ...],
    /,
) -> bytes | None: ...
