"""Fixture implementations for tests that talk to real servers.

Kept free of pytest so that ``bench/`` can drive the same helpers (a private PostgreSQL cluster, a
``callgate serve`` subprocess). ``tests/conftest.py`` wraps them as fixtures; see docs/testing.md.
"""
