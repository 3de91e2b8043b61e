"""PostgreSQL frontend/backend protocol 3.0, sans-IO.

Reference: PostgreSQL documentation, chapter 55 "Frontend/Backend Protocol" (55.2 message flow,
55.7 message formats). Every function here works on bytes only; engines own the sockets.
"""
