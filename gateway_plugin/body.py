"""Reading request bodies from the WSGI environ, chunked or not, with a size limit.

The OpenFaaS gateway forwards bodies with ``Transfer-Encoding: chunked`` and no Content-Length.
Werkzeug hands such a body to the app only when the server sets ``wsgi.input_terminated``
(gunicorn and Werkzeug's own server do); servers that de-chunk without setting it (and
Werkzeug's test client) would otherwise yield an empty body. So we read ``wsgi.input`` ourselves:
exactly Content-Length bytes when it is given, else to end of stream when the request is chunked
or the server says the stream is terminated, else nothing (HTTP/1.1: no length, no chunking
means no body).

Malformed framing is the client's error: whatever the server's de-chunking raises while we read
(gunicorn's ``InvalidChunkSize``, ``ChunkMissingTerminator``, ...) becomes ``BadFraming`` (400),
and a client that hangs up in the middle of its body becomes ``ClientGone``; neither is a 500.
"""

from __future__ import annotations

from typing import IO, Any

from gateway_plugin.errors import BadFraming, ClientGone, Invalid, PayloadTooLarge, RequestTimeout

READ_CHUNK_BYTES = 64 * 1024


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the {max_bytes} bytes allowed here")


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The whole request body; PayloadTooLarge past ``max_bytes``, Invalid on a bad length,
    RequestTimeout when the client stops sending (the server's read timeout)."""
    try:
        return _read_body(environ, max_bytes)
    except TimeoutError as e:
        raise RequestTimeout("the request body stopped arriving (read timeout)") from e
    except (Invalid, PayloadTooLarge):
        raise
    except (ConnectionError, EOFError) as e:
        raise ClientGone(f"the client closed the connection in the middle of the body ({e})") from e
    except OSError as e:  # gunicorn's NoMoreData is an IOError: the stream ended mid-chunk
        raise ClientGone(f"the request body ended before its framing did ({e})") from e
    except Exception as e:  # the server's de-chunking refused what the client sent
        framing = "chunked framing" if _chunked(environ) else "framing"
        raise BadFraming(f"Transfer-Encoding: malformed {framing} of the request body: {e}") from e


def _chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    stream: IO[bytes] = environ["wsgi.input"]
    chunked = _chunked(environ)
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if raw_length and not chunked:
        try:
            length = int(raw_length)
        except ValueError as e:
            raise Invalid(f"Content-Length: ({raw_length!r}) is not an integer") from e
        if length < 0:
            raise Invalid("Content-Length: must not be negative")
        if length > max_bytes:
            raise _too_large(max_bytes)
        return _read_exact(stream, length)
    if not (chunked or environ.get("wsgi.input_terminated")):
        return b""
    parts: list[bytes] = []
    total = 0
    while True:
        part = stream.read(READ_CHUNK_BYTES)
        if not part:
            return b"".join(parts)
        total += len(part)
        if total > max_bytes:
            raise _too_large(max_bytes)
        parts.append(part)


def _read_exact(stream: IO[bytes], length: int) -> bytes:
    parts: list[bytes] = []
    left = length
    while left > 0:
        part = stream.read(min(left, READ_CHUNK_BYTES))
        if not part:
            raise Invalid(f"request body ended after {length - left} of {length} bytes")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
