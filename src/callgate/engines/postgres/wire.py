"""Reading whole messages from an asyncio stream (startup phase only; the relay reads chunks)."""

from __future__ import annotations

import asyncio
import struct

from callgate.errors import CallgateError, ProtocolViolation, UpstreamProtocolViolation
from callgate.protocols.postgres.framing import Frame

_HDR = struct.Struct("!cI")


async def read_message(reader: asyncio.StreamReader, *, max_size: int, upstream: bool) -> Frame:
    """Read one typed message. EOF or a bad length is the peer's protocol error."""
    err: type[CallgateError] = UpstreamProtocolViolation if upstream else ProtocolViolation
    who = "upstream" if upstream else "client"
    try:
        header = await reader.readexactly(5)
        t, length = _HDR.unpack(header)
        if length < 4 or length - 4 > max_size:
            raise err(f"{who} sent a message with invalid length {length}")
        body = await reader.readexactly(length - 4)
    except asyncio.IncompleteReadError as exc:
        raise err(f"{who} closed the connection") from exc
    return Frame(t[0], body)


def buffered(reader: asyncio.StreamReader) -> int:
    """Bytes already read from the socket but not consumed.

    Used to refuse data sent ahead of a TLS handshake (the CVE-2021-23214 class of injection):
    anything buffered before ``start_tls`` would be processed as if it came over TLS.
    """
    buf = getattr(reader, "_buffer", b"")
    return len(buf)
