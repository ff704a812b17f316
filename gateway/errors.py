"""Errors that carry the HTTP status the front end answers with.

Only the front end (``gateway.frontend``) turns these into responses; every other
module raises them with a cause (``raise UpstreamTimeout(...) from exc``).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error that maps to an HTTP status.

    ``status`` is the status the client is answered with; ``reason`` is a short
    text for the log line (never shown to the client: the error page is ours).
    """

    status: int = 500
    #: Extra header fields for the error page (``Retry-After`` on a 503).
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class ParseError(GatewayError):
    """A message did not parse; ``status`` is the hint (400, 413, 414, 431, 505).

    Like h11's ``error_status_hint``, the parser says which status fits and the
    caller decides whether to answer with it (client side) or map it to 502
    (upstream side).
    """

    status = 400


class RequestTimeout(GatewayError):
    """The client was too slow to send its request head (RFC 9110 §15.5.9)."""

    status = 408


class NotFound(GatewayError):
    """No route matches the request."""

    status = 404


class MethodNotAllowed(GatewayError):
    """The method is not accepted here (RFC 9110 §15.5.6)."""

    status = 405


class BadGateway(GatewayError):
    """The upstream failed: refused, reset, or sent a malformed response."""

    status = 502


class ConnectFailed(BadGateway):
    """The TCP connect to a server was refused or timed out: nothing was sent."""


class UpstreamProtocolError(BadGateway):
    """The upstream's response did not parse as HTTP/1.1."""


class ServiceUnavailable(GatewayError):
    """No server can take the request now (queue full, queue timeout, all down).

    ``retry_after`` (seconds) becomes a ``Retry-After`` field (RFC 9110 §10.2.3)
    so well-behaved clients back off instead of hammering.
    """

    status = 503

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        if retry_after > 0:
            self.headers = ((b"Retry-After", b"%d" % max(1, round(retry_after))),)


class GatewayTimeout(GatewayError):
    """The upstream did not answer (connect, response head or read) in time."""

    status = 504
