"""`callgate check` (being written)."""


def check() -> None:
    raise NotImplementedError
