"""Errors crossing the provider boundary. ``http_status`` is the one place they become codes."""

from fastgshare.errors import FastGShareError, ValidationError


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

