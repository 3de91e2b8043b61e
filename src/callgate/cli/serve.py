"""`callgate serve` (being written)."""


def serve() -> None:
    raise NotImplementedError
