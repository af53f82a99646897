"""Reading HTTP/1.1 answers from an ``asyncio.StreamReader``: the head, and the body's framing.

Shared by the two lean hops of the invoke path, the provider's (``gateway_plugin.invoke_async``)
and the sidecar's (``fast_manager.sidecar_http``): each keeps its connections alive and reads
only what a local HTTP/1.1 server sends, a status line, headers, and a body framed by
Content-Length, by chunks, or by the connection's end. Malformed framing raises ``ValueError``
(or asyncio's ``IncompleteReadError`` / ``LimitOverrunError``); a caller closes the connection on
any of them, since it is out of step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status line and headers, with what its framing needs."""

    status: int
    headers: list[tuple[str, str]]
    """As sent, in order, names as spelled."""
    length: int | None
    """Content-Length, when given (and not chunked)."""
    chunked: bool
    close: bool
    """``Connection: close``: the connection ends after this answer."""

    def has_body(self, method: str) -> bool:
        return not (method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200)

    def ends_connection(self, method: str) -> bool:
        """Whether the connection cannot carry another exchange after this answer's body."""
        return self.close or (self.has_body(method) and not self.chunked and self.length is None)


async def read_head(reader: asyncio.StreamReader) -> Head:
    """The next response's head. ``asyncio.IncompleteReadError`` with no partial bytes means the
    other side closed the connection before answering."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        lk = k.lower()
        if lk == "content-length":
            if not v.isdigit():
                raise ValueError(f"Content-Length: {v[:40]!r} is not a length")
            length = int(v)
        elif lk == "transfer-encoding":
            chunked = "chunked" in v.lower()
        elif lk == "connection":
            close = "close" in v.lower()
        headers.append((k, v))
    if parts[0] == "HTTP/1.0" and not any(k.lower() == "connection" and "keep-alive" in v.lower()
                                          for k, v in headers):
        close = True
    return Head(int(parts[1]), headers, None if chunked else length, chunked, close)


async def iter_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The chunks of a chunked body, as they arrive (trailers read and dropped)."""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        yield await reader.readexactly(size)
        if await reader.readline() not in (b"\r\n", b"\n"):
            raise ValueError("chunk not followed by CRLF")


async def read_body(reader: asyncio.StreamReader, head: Head, method: str) -> bytes:
    """The whole body of the answer ``head`` began."""
    if not head.has_body(method):
        return b""
    if head.chunked:
        return b"".join([chunk async for chunk in iter_chunks(reader)])
    if head.length is not None:
        return await reader.readexactly(head.length)
    return await reader.read()  # framed by the connection's end
