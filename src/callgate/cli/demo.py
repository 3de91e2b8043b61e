"""`callgate demo` (being written)."""


def demo() -> None:
    raise NotImplementedError
