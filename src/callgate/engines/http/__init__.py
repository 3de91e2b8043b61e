"""The HTTP engine: listener, sessions, upstream relay and credential injection (SPEC §1 HTTP)."""
