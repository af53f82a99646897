"""Errors crossing the provider boundary. ``http_status`` is the one place they become codes.

Pure (the request parsers import it): a Redis client's connection errors are translated into
``StateStoreUnavailable`` by ``gateway_plugin.readiness.as_provider_error``, at the app's edge.
"""

from fastgshare.errors import FastGShareError, ValidationError

STATE_STORE_RETRY_AFTER_S = 5
"""``Retry-After`` on a 503 while the state store (Redis) is unreachable: the platform restarts
an embedded Redis within a few seconds (``fastgshare.redis_server.RedisSupervisor``)."""


class ProviderError(FastGShareError):
    """Base of the provider's errors."""


class NotFound(ProviderError):
    """The named function, secret or namespace does not exist (404)."""


class Conflict(ProviderError):
    """The object already exists (409)."""


class Invalid(ProviderError):
    """The request is well formed but not acceptable (400)."""


class NoReplicaReady(ProviderError):
    """The function exists but no replica can serve now (503)."""


class StateStoreUnavailable(ProviderError):
    """The state store (Redis) cannot be reached or is still loading its data (503)."""

    retry_after_s = STATE_STORE_RETRY_AFTER_S


class FunctionCannotStart(ProviderError):
    """The function's last starts all failed: answered at once with the reason (503), not after
    the scale-from-zero wait. Not a ``NoReplicaReady``: a caller that waits on that must not wait
    on this."""

    retry_after_s = 10


class BadFraming(ProviderError):
    """The request body's framing is malformed (a bad chunk size, a missing terminator) (400);
    the connection is closed after the answer, as where the next request starts is unknown."""


class ClientGone(ProviderError):
    """The client closed the connection in the middle of its request body (400, rarely seen)."""


class BackendFailure(ProviderError):
    """The backend could not carry out a valid request (500); the cause is chained."""


class PayloadTooLarge(ProviderError):
    """The request body is larger than the provider accepts (413)."""


class RequestTimeout(ProviderError):
    """The client stopped sending its request body (408)."""


class UpstreamUnreachable(ProviderError):
    """A replica could not be connected to, or broke the connection (502)."""


class UpstreamTimeout(ProviderError):
    """A replica did not answer within the invocation timeout (504)."""


def http_status(err: Exception) -> int:
    """Map any error to the HTTP status the provider answers with."""
    if isinstance(err, (StateStoreUnavailable, NoReplicaReady, FunctionCannotStart)):
        return 503
    if isinstance(err, (BadFraming, ClientGone)):
        return 400
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, Conflict):
        return 409
    if isinstance(err, (Invalid, ValidationError)):
        return 400
    if isinstance(err, NoReplicaReady):
        return 503
    if isinstance(err, PayloadTooLarge):
        return 413
    if isinstance(err, RequestTimeout):
        return 408
    if isinstance(err, UpstreamUnreachable):
        return 502
    if isinstance(err, UpstreamTimeout):
        return 504
    return 500

