"""Background revalidation for stale-while-revalidate (RFC 5861 §3): a conditional GET nobody waits for.

A :class:`Refresh` is started by the request that found an entry within its
stale-while-revalidate window (that request is answered from the store at
once). It forwards a conditional GET built from that request's fields (so the
stored Vary still selects the entry) through an inner
:class:`~gateway.exchange.Exchange` whose response it always takes over:
nothing of it ever reaches a client. A 304 freshens the entry, a storable 200
replaces it, anything else leaves it as it was (or drops it when the origin
no longer lets it be stored).

Invariants:

- One Refresh per key at a time (:meth:`SharedCache.claim_refresh`); it
  releases its claim when it ends, however it ends.
- It leads the key's :class:`~gateway.cache.collapse.Fill` while it runs, so
  requests that must revalidate meanwhile wait for it instead of asking too.
- Its inner exchange's owner is the Refresh, never the client's current
  exchange: a stray call from it to the front end is ignored there.
- Its failures are logged, never answered: there is nobody to answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from gateway.cache.collapse import Outcome
from gateway.cache.intake import Intake, rebuilt_request
from gateway.cache.validation import revalidation_headers
from gateway.exchange import Exchange

if TYPE_CHECKING:
    from gateway.cache.intake import Stored
    from gateway.cache.route import RoutePolicy
    from gateway.cache.shared import SharedCache
    from gateway.config import RouteConfig
    from gateway.errors import GatewayError
    from gateway.frontend import ClientConnection
    from gateway.parser import Headers, Request, Response
    from gateway.runtime import BackendRuntime, Runtime

__all__ = ["Refresh"]

log = Logger()


class Refresh:
    """Revalidates one stored entry in the background; an Exchange's Observer and owner."""

    def __init__(
        self,
        client: ClientConnection,
        request: Request,
        path: bytes,
        host: bytes,
        route: RouteConfig,
        backend: BackendRuntime,
        runtime: Runtime,
        cache: SharedCache,
        policy: RoutePolicy,
        key: bytes,
        stored: Stored,
    ) -> None:
        self._cache = cache
        self.key = key
        # A GET even for a HEAD request, so that a 200 can replace the body.
        forward = rebuilt_request(request, revalidation_headers(request.headers, stored.meta.headers), b"GET")
        now = client.reactor.seconds()
        self._intake: Intake | None = Intake(
            cache, policy, key, forward, now, stored=stored, fill=cache.fills.lead(key)
        )
        self._exchange = Exchange(
            client, forward, path, host, route, backend, runtime, observer=self, owner=self
        )
        self._ended = False

    def start(self) -> None:
        """Send the conditional request."""
        self._exchange.start()

    # -- Observer ------------------------------------------------------------------

    def response_head(self, response: Response, headers: Headers) -> Headers | None:
        intake = self._intake
        if intake is not None:
            took = intake.head(response, self._exchange.client.reactor.seconds())
            log.debug(
                "cache: background revalidation of {key}: {status}, {took}",
                key=self.key, status=response.status, took=took.value,
            )  # fmt: skip
        return None

    def response_data(self, data: bytes) -> None:
        intake = self._intake
        if intake is not None:
            intake.data(data)

    def response_end(self) -> None:
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.end()
        self._end()

    def failed(self, error: GatewayError) -> bool:
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.abort(Outcome.FAILED)
        log.info(
            "cache: background revalidation of {key} failed: {reason}", key=self.key, reason=error.reason
        )
        self._end()
        return True

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._cache.release_refresh(self.key)
