"""Engines: sockets, TLS and relaying, one per protocol. They hold no policy logic."""
