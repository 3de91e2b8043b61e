"""A tiny raw PostgreSQL protocol client for tests: returns the server's messages as bytes.

Trust authentication only (the ``pg_local`` fixture). Just enough to see exactly what a real
server sends — RowDescription, DataRow, CopyData, ErrorResponse — and feed it to the masking
code, byte for byte.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from callgate.protocols.postgres import messages as m


@dataclass(frozen=True)
class Msg:
    type: str
    body: bytes


class RawClient:
    def __init__(self, host: str, port: int, user: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.sock.sendall(m.encode_startup((("user", user), ("database", database))))
        for msg in self._until_ready():
            if msg.type == "R" and struct.unpack("!i", msg.body[:4])[0] != 0:
                raise RuntimeError("the test server must trust this user")
            if msg.type == "E":
                raise RuntimeError(f"startup failed: {msg.body!r}")

    def close(self) -> None:
        self.sock.sendall(m.TERMINATE)
        self.sock.close()

    def query(self, sql: str) -> list[Msg]:
        """A simple Query: every message up to ReadyForQuery."""
        self.sock.sendall(m.encode_query(sql))
        return self._until_ready()

    def extended(self, sql: str, result_formats: Sequence[int] = (1,)) -> list[Msg]:
        """Parse/Bind (with ``result_formats``)/Describe portal/Execute/Sync."""
        parse = m.frame(m.FrontendType.PARSE, b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))
        bind = m.frame(
            m.FrontendType.BIND,
            b"\0\0"
            + struct.pack("!hh", 0, 0)
            + struct.pack(f"!h{len(result_formats)}h", len(result_formats), *result_formats),
        )
        describe = m.frame(m.FrontendType.DESCRIBE, b"P\0")
        execute = m.frame(m.FrontendType.EXECUTE, b"\0" + struct.pack("!i", 0))
        self.sock.sendall(parse + bind + describe + execute + m.SYNC)
        return self._until_ready()

    def _until_ready(self) -> list[Msg]:
        out: list[Msg] = []
        while True:
            msg = self._read()
            out.append(msg)
            if msg.type == "Z":
                return out

    def _read(self) -> Msg:
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack_from("!I", self.buf, 1)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        length = struct.unpack_from("!I", self.buf, 1)[0]
        msg = Msg(chr(self.buf[0]), self.buf[5 : 1 + length])
        self.buf = self.buf[1 + length :]
        return msg
