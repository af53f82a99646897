"""A minimal HTTP/1.1 client for the sidecar -> worker hop, over one kept-alive connection.

The worker is serial and local, so one connection carries every request, one at a time. A
general client (aiohttp's) spent about 0.4 ms per request on this hop on a 2-core machine; this
one writes the request in one piece and reads the answer with two awaits. It speaks only what the
worker runtime sends (``fastgshare.http1`` reads it).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastgshare import http1

_HEAD_LIMIT_BYTES = 256 * 1024
"""Largest status line + headers accepted from the worker."""


class WorkerHttpError(ConnectionError):
    """The worker closed the connection or answered something that is not HTTP/1.1."""


class WorkerClient:
    """Requests to ``127.0.0.1:<port>``; reconnects when the port changes or the link breaks."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is not None and (self._port != port or self._writer.is_closing()):
            self.close()
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, port, limit=_HEAD_LIMIT_BYTES)
            self._port = port
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None

    async def request(self, port: int, method: str, target: str,
                      headers: list[tuple[str, str]], body: bytes,
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One exchange: (status, headers, body). Any failure closes the connection and raises."""
        try:
            reader, writer = await self._connect(port)
            head = [f"{method} {target} HTTP/1.1", f"Host: {self._host}:{port}"]
            head.extend(f"{k}: {v}" for k, v in headers)
            head.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            if len(body) > 65536:
                await writer.drain()
            answer = await http1.read_head(reader)
            out_body = await http1.read_body(reader, answer, method)
            if answer.ends_connection(method):
                self.close()
            return answer.status, answer.headers, out_body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            raise WorkerHttpError(str(e) or type(e).__name__) from e
        except BaseException:  # cancelled or timed out mid-exchange: the link is out of step
            self.close()
            raise


async def probe_ready(port: int, timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Whether the worker answers ``GET /_/ready`` with 200 (on a connection of its own)."""
    client = WorkerClient(host)
    try:
        async with asyncio.timeout(timeout_s):
            status, _, _ = await client.request(port, "GET", "/_/ready", [], b"")
        return status == 200
    except (WorkerHttpError, TimeoutError):
        return False
    finally:
        client.close()
