"""Decisions: who may connect where, and (per statement) what they may do. No I/O here."""
