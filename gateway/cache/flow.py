"""The cache on the request path: one request through a caching route.

The front end holds a :class:`CacheExchange` where it would hold an
:class:`~gateway.exchange.Exchange`; it answers from the store, or forwards
through an inner Exchange it watches as that Exchange's
:class:`~gateway.exchange.Observer` (and owner, so the front end's identity
checks see the CacheExchange). In order (RFC 9111 §4):

1. Not GET or HEAD: forwarded; a 2xx/3xx to an unsafe method invalidates the
   target URI and same-origin Location/Content-Location (§4.4).
   A request with a body or with If-Match/If-Unmodified-Since (§4.3.2) is
   forwarded without lookup.
2. Lookup by primary key and Vary (:meth:`DiskStore.lookup`); a corrupt
   entry is dropped on open and counts as a miss.
3. :func:`~gateway.cache.policy.decide`: fresh (or stale allowed by the
   request) is served; stale within stale-while-revalidate is served while
   one background revalidation runs (:mod:`gateway.cache.background`);
   otherwise a conditional request revalidates it; ``only-if-cached`` with
   nothing usable gets 504 (§5.2.1.7).
4. A miss or revalidation while another request for the key is at the origin
   waits for that one (:mod:`gateway.cache.collapse`), then looks again.
5. A miss is forwarded without the client's conditionals, so the answer is
   storable; it streams to the client and, if storable, to the store
   (:mod:`gateway.cache.intake`). HEAD and Range misses are forwarded as they
   are and not stored.
6. stale-if-error: when forwarding fails (connect, timeout, no server, or a
   5xx to a revalidation) a stored response within its window stands in.

Every response through a caching route carries ``Cache-Status`` (RFC 9211)
unless the route turns it off.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

from twisted.logger import Logger

from gateway.cache.answer import EntryFeed, Framing, plan_answer
from gateway.cache.background import Refresh
from gateway.cache.collapse import Outcome
from gateway.cache.fields import has_field
from gateway.cache.intake import Intake, Stored, Took, rebuilt_request
from gateway.cache.keys import SAFE_METHODS, invalidation_targets
from gateway.cache.policy import Use, decide, freshness, request_control, stale_if_error
from gateway.cache.ranges import RangeNotSatisfiable
from gateway.cache.status import Forward, with_cache_status
from gateway.cache.validation import origin_preconditions, revalidation_headers
from gateway.errors import BadGateway, GatewayError, GatewayTimeout
from gateway.exchange import Exchange
from gateway.httpdate import http_date

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from gateway.cache.collapse import Waiter
    from gateway.cache.entry import Entry, EntryInfo
    from gateway.cache.policy import Freshness
    from gateway.cache.route import RoutePolicy
    from gateway.cache.shared import SharedCache
    from gateway.config import RouteConfig
    from gateway.frontend import ClientConnection
    from gateway.parser import Headers, Request, Response
    from gateway.runtime import BackendRuntime, Runtime

__all__ = ["CacheExchange", "Mode", "Step"]

log = Logger()


class Step(enum.Enum):
    """States of :class:`CacheExchange`.

    - NEW: built; :meth:`CacheExchange.start` not called yet.
    - WAITING: collapsed onto another request for the same key; a timer
      (``cache_collapse_timeout``) runs. Nothing is open.
    - FORWARDING: an inner Exchange runs (see :class:`Mode`); its response
      goes to the client, or is taken over and answered from the store.
    - SERVING: answering from the store; an :class:`EntryFeed` streams the body.
    - DONE: answered, failed or abandoned; every file, waiter and upstream
      resource has been released.
    """

    NEW = "new"
    WAITING = "waiting"
    FORWARDING = "forwarding"
    SERVING = "serving"
    DONE = "done"


class Mode(enum.Enum):
    """What a forwarded request is for.

    - PASS: forwarded as it is, nothing stored (HEAD or Range miss, request
      with a body or origin-only preconditions, safe methods other than GET
      and HEAD, cache unavailable).
    - UNSAFE: an unsafe method; a 2xx/3xx answer invalidates (RFC 9111 §4.4).
    - FILL: a miss; the response is stored if it may be.
    - REVALIDATE: a conditional request for a stored entry.
    """

    PASS = "pass"
    UNSAFE = "unsafe"
    FILL = "fill"
    REVALIDATE = "revalidate"


class CacheExchange:
    """One request through a caching route; to the front end, an exchange like any other."""

    def __init__(
        self,
        client: ClientConnection,
        request: Request,
        path: bytes,
        host: bytes,
        route: RouteConfig,
        backend: BackendRuntime,
        runtime: Runtime,
    ) -> None:
        self.client = client
        self.request = request
        self.path = path
        self.host = host
        self.route = route
        self.backend = backend
        self.runtime = runtime
        self.cache: SharedCache | None = runtime.cache
        self.policy: RoutePolicy = runtime.cache_policies[route.name]
        self.key = self.policy.keys.key(client.proto, host, path)
        self.step = Step.NEW
        self._mode = Mode.PASS
        self._inner: Exchange | None = None
        self._intake: Intake | None = None
        self._stored: Stored | None = None
        self._entry: Entry | None = None
        self._waiter: Waiter | None = None
        self._waited = False
        self._feed: EntryFeed | None = None
        self._fwd: Forward | None = None
        self._detail: bytes | None = None
        #: What to do once a taken-over inner response has ended.
        self._then: Callable[[], None] | None = None
        self._later: IDelayedCall | None = None
        self._own = False
        self._status = 0
        self._keep_alive = False
        self._refetched = False
        self._request_time = 0.0

    # -- what the front end reads ------------------------------------------------

    @property
    def responding(self) -> bool:
        """True once any byte of the answer has gone to the client."""
        if self._own:
            feed = self._feed
            return feed is not None and feed.started
        inner = self._inner
        return inner is not None and inner.responding

    @property
    def status(self) -> int:
        inner = self._inner
        return self._status if self._own or inner is None else inner.status

    @property
    def body_bytes(self) -> int:
        if self._own:
            feed = self._feed
            return feed.sent if feed is not None else 0
        inner = self._inner
        return inner.body_bytes if inner is not None else 0

    @property
    def upstream_address(self) -> str:
        inner = self._inner
        return inner.upstream_address if inner is not None else "-"

    @property
    def upstream_time(self) -> float:
        inner = self._inner
        return inner.upstream_time if inner is not None else -1.0

    # -- the front end's calls ---------------------------------------------------

    def start(self) -> None:
        """Look the request up, or forward it."""
        self._request_time = self.client.reactor.seconds()
        request = self.request
        cache = self.cache
        method = request.method
        if cache is None or not cache.ready:
            self._forward(Mode.PASS, Forward.BYPASS, detail=b"cache-unavailable")
        elif method != b"GET" and method != b"HEAD":
            self._forward(Mode.PASS if method in SAFE_METHODS else Mode.UNSAFE, Forward.METHOD)
        elif request.chunked or request.content_length > 0 or origin_preconditions(request.headers):
            self._forward(Mode.PASS, Forward.BYPASS)
        else:
            self._lookup()

    def request_body(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.request_body(data)

    def request_body_end(self) -> None:
        inner = self._inner
        if inner is not None:
            inner.request_body_end()

    def abandon(self) -> None:
        """The client went away or timed out: release everything now."""
        self.step = Step.DONE
        self._then = None
        later, self._later = self._later, None
        if later is not None and later.active():
            later.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.abort(Outcome.UNSTORED)
        inner = self._inner
        if inner is not None:
            inner.abandon()
        feed = self._feed
        if feed is not None:
            feed.stop()
        self._close_entry()

    # -- lookup -----------------------------------------------------------------

    def _lookup(self, *, again: bool = False, failed: bool = False) -> None:
        """Decide from what is stored; ``again`` after waiting (never wait twice),
        ``failed`` when the request waited on was answered by an origin failure."""
        cache = self.cache
        assert cache is not None
        store = cache.store
        request = self.request
        now = self.client.reactor.seconds()
        control = request_control(request.headers)
        info = store.lookup(self.key, request.headers)
        entry = store.open(info) if info is not None else None
        if entry is None:
            fwd = Forward.VARY_MISS if store.variants(self.key) else Forward.URI_MISS
            if control.only_if_cached:
                self._unavailable(fwd)
            else:
                self._miss(fwd, again)
            return
        meta = entry.meta
        rules = self.policy.rules
        fresh = self._freshness(entry)
        verdict = decide(fresh, control, now)
        use = verdict.use
        if use is Use.FRESH or use is Use.STALE:
            self._serve(entry, fresh, hit=True)
        elif use is Use.STALE_WHILE_REVALIDATE:
            self._refresh(Stored(entry.info, meta, fresh))
            self._serve(entry, fresh, hit=True, detail=b"stale-while-revalidate")
        elif use is Use.UNAVAILABLE:
            entry.close()
            self._unavailable(Forward.STALE)
        elif failed and stale_if_error(fresh, now, rules):
            self._serve(entry, fresh, fwd=Forward.STALE, detail=b"stale-if-error")
        else:
            fwd = Forward.STALE if verdict.ttl <= 0 or fresh.no_cache else Forward.REQUEST
            self._revalidate(entry, fresh, fwd, again)

    def _miss(self, fwd: Forward, again: bool) -> None:
        request = self.request
        if request.method == b"HEAD" or has_field(request.headers, b"range"):
            self._forward(Mode.PASS, fwd)
            return
        if self._wait(fwd, again):
            return
        cache = self.cache
        assert cache is not None
        forward = rebuilt_request(request, revalidation_headers(request.headers, []))
        fill = cache.fills.lead(self.key)
        self._intake = Intake(cache, self.policy, self.key, forward, self._request_time, fill=fill)
        self._forward(Mode.FILL, fwd, forward)

    def _revalidate(self, entry: Entry, fresh: Freshness, fwd: Forward, again: bool) -> None:
        if self._wait(fwd, again):
            entry.close()
            return
        cache = self.cache
        assert cache is not None
        request = self.request
        stored = self._stored = Stored(entry.info, entry.meta, fresh)
        self._entry = entry
        forward = rebuilt_request(request, revalidation_headers(request.headers, entry.meta.headers))
        fill = cache.fills.lead(self.key)
        self._intake = Intake(
            cache, self.policy, self.key, forward, self._request_time, stored=stored, fill=fill
        )
        self._forward(Mode.REVALIDATE, fwd, forward)

    def _wait(self, fwd: Forward, again: bool) -> bool:
        """Wait on another request's fill for this key, if there is one; whether we do."""
        cache = self.cache
        assert cache is not None
        timeout = self.policy.collapse_timeout
        fill = cache.fills.get(self.key)
        if again or fill is None or timeout <= 0:
            return False
        self._fwd = fwd
        self._waited = True
        self.step = Step.WAITING
        self._waiter = fill.wait(self._woken, self.request.headers, timeout)
        return True

    def _woken(self, outcome: Outcome) -> None:
        self._waiter = None
        if self.step is not Step.WAITING:
            return
        try:
            self._lookup(again=True, failed=outcome is Outcome.FAILED)
        except Exception:
            log.failure("cache: error answering a collapsed request for {key}", key=self.key)
            self._give_up(GatewayError("cache error", 500))

    def _refresh(self, stored: Stored) -> None:
        """Start the one background revalidation of this key (RFC 5861 §3), unless one runs."""
        cache = self.cache
        assert cache is not None
        if cache.fills.get(self.key) is not None or not cache.claim_refresh(self.key):
            return
        Refresh(self.client, self.request, self.path, self.host, self.route, self.backend,
                self.runtime, cache, self.policy, self.key, stored).start()  # fmt: skip

    # -- forwarding ---------------------------------------------------------------

    def _forward(
        self, mode: Mode, fwd: Forward, request: Request | None = None, detail: bytes | None = None
    ) -> None:
        self._mode = mode
        self._fwd = fwd
        self._detail = detail
        self.step = Step.FORWARDING
        inner = self._inner = Exchange(
            self.client, request or self.request, self.path, self.host, self.route, self.backend,
            self.runtime, observer=self, owner=self,
        )  # fmt: skip
        inner.start()

    def _refetch(self) -> None:
        """Ask again without conditions (an unusable 304, or an unreadable stored body)."""
        self._close_entry()
        self._stored = None
        self._own = False
        self._feed = None
        request = self.request
        if request.method == b"HEAD" or has_field(request.headers, b"range"):
            self._forward(Mode.PASS, self._fwd or Forward.MISS)
            return
        cache = self.cache
        assert cache is not None
        forward = rebuilt_request(request, revalidation_headers(request.headers, []))
        self._intake = Intake(cache, self.policy, self.key, forward, self._request_time)
        self._forward(Mode.FILL, self._fwd or Forward.MISS, forward)

    # -- Observer: the inner exchange's response -------------------------------------

    def response_head(self, response: Response, headers: Headers) -> Headers | None:
        """Decide what the store makes of the response; None takes it over.

        A bug here must not cost the client its response: it is logged, and
        the response goes through unstored.
        """
        try:
            return self._response_head(response, headers)
        except Exception:
            log.failure("cache: error handling the response for {key}", key=self.key)
            self._drop_intake()
            self._then = None
            return headers

    def _response_head(self, response: Response, headers: Headers) -> Headers | None:
        status = response.status
        mode = self._mode
        if mode is Mode.UNSAFE:
            self._invalidate(response)
            return self._with_status(headers, fwd_status=status)
        intake = self._intake
        if intake is None:
            return self._with_status(headers, fwd_status=status, detail=self._detail)
        now = self.client.reactor.seconds()
        took = intake.head(response, now)
        if took is Took.STORING:
            assert intake.fresh is not None
            return self._with_status(headers, fwd_status=status, stored=True, ttl=intake.fresh.ttl(now))
        if took is Took.FRESHENED:
            freshened = intake.info
            self._then = lambda: self._serve_freshened(freshened)
            return None
        if took is Took.LOST:
            self._then = self._refetch
            return None
        stored = self._stored
        if took is Took.ERROR and stored is not None and stale_if_error(stored.fresh, now, self.policy.rules):
            self._then = lambda: self._serve_stale(status)
            return None
        reason = intake.reason
        detail = reason.encode("ascii") if reason else None
        return self._with_status(headers, fwd_status=status, detail=detail)

    def response_data(self, data: bytes) -> None:
        intake = self._intake
        if intake is not None:
            try:
                intake.data(data)
            except Exception:
                log.failure("cache: error storing the response for {key}", key=self.key)
                self._drop_intake()

    def response_end(self) -> None:
        """The inner response is complete: commit; answer now if it was taken over."""
        intake, self._intake = self._intake, None
        if intake is not None:
            try:
                intake.end()
            except Exception:
                log.failure("cache: error committing the response for {key}", key=self.key)
                intake.abort(Outcome.UNSTORED)
        if self._then is not None:
            # On the next turn: the upstream connection goes back to its pool
            # first, so a refetch can reuse it.
            self._later = self.client.reactor.callLater(0, self._run_then)
        elif not self._own:
            # The inner exchange finishes the answer (exchange_done) itself.
            self._close_entry()

    def _run_then(self) -> None:
        self._later = None
        then, self._then = self._then, None
        if then is None or self.step is not Step.FORWARDING:
            return
        try:
            then()
        except Exception:
            log.failure("cache: error answering {key} from the store", key=self.key)
            self._give_up(GatewayError("cache error", 500))

    def failed(self, error: GatewayError) -> bool:
        """The inner exchange failed: serve stale if allowed, else answer the error with Cache-Status."""
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.abort(Outcome.FAILED)
        if self.step is Step.DONE:
            return True
        then, self._then = self._then, None
        if then is not None:
            then()
            return True
        inner = self._inner
        if inner is not None and inner.responding:
            self._close_entry()
            return False
        stored = self._stored
        now = self.client.reactor.seconds()
        if stored is not None and stale_if_error(stored.fresh, now, self.policy.rules):
            self._serve_stale(None)
            return True
        self._close_entry()
        self._give_up(error)
        return True

    # -- answering from the store ------------------------------------------------------

    def _serve(
        self,
        entry: Entry,
        fresh: Freshness,
        *,
        hit: bool = False,
        fwd: Forward | None = None,
        fwd_status: int | None = None,
        detail: bytes | None = None,
    ) -> None:
        if entry is self._entry:
            self._entry = None
        client = self.client
        runtime = self.runtime
        policy = self.policy
        now = client.reactor.seconds()
        age = fresh.age(now)
        keep_alive = self._keep_alive = self.request.keep_alive and client.accepting
        if hit and self._waited:
            # RFC 9211 §2.6: collapsed onto another request that went forward;
            # its response was reused. The reason it had to go forward stays.
            hit, fwd = False, self._fwd
        value = policy.status(
            hit=hit, fwd=None if hit else fwd, fwd_status=fwd_status, ttl=fresh.lifetime - age,
            collapsed=True if self._waited else None, detail=detail,
        )  # fmt: skip
        framing = Framing(
            via=runtime.via, server=runtime.server_header, date=http_date(now),
            hsts=runtime.hsts[client.factory.listener_name], keep_alive=keep_alive, status=value,
            extra_304=(policy.own_field,) if policy.own_field else (),
        )  # fmt: skip
        meta = entry.meta
        try:
            answer = plan_answer(
                self.request, meta.status, meta.reason, meta.headers, entry.body_length,
                meta.response_time, age, framing,
            )  # fmt: skip
        except RangeNotSatisfiable as exc:
            entry.close()
            self._give_up(exc, status_value=value)
            return
        self._own = True
        self._status = answer.status
        self.step = Step.SERVING
        info = entry.info
        feed = self._feed = EntryFeed(
            client.reactor, entry, answer, client.transport,
            write=client.write, write_sequence=client.write_sequence, send_file=client.send_file,
            blocked=client.client_write_blocked, unblocked=client.client_write_unblocked,
            done=self._served, failed=lambda started: self._unreadable(info, started), gone=self._gone,
        )  # fmt: skip
        feed.start()

    def _serve_freshened(self, info: EntryInfo | None) -> None:
        """After a 304 freshened the entry: serve it (RFC 9111 §4.3.3, §4.3.4)."""
        cache = self.cache
        assert cache is not None
        entry = cache.store.open(info) if info is not None else None
        if entry is None:
            self._refetch()
            return
        self._close_entry()
        self._serve(entry, self._freshness(entry), fwd=self._fwd, fwd_status=304)

    def _serve_stale(self, fwd_status: int | None) -> None:
        """The origin failed and the stored response may stand in (RFC 5861 §4)."""
        stored = self._stored
        assert stored is not None
        entry, self._entry = self._entry, None
        if entry is None:
            cache = self.cache
            assert cache is not None
            entry = cache.store.open(stored.info)
        if entry is None:
            self._give_up(BadGateway("stored response vanished"))
            return
        self._serve(entry, stored.fresh, fwd=self._fwd, fwd_status=fwd_status, detail=b"stale-if-error")

    def _served(self) -> None:
        if self.step is not Step.SERVING:
            return
        self.step = Step.DONE
        self.client.exchange_done(self, keep_alive=self._keep_alive)  # type: ignore[arg-type]

    def _unreadable(self, info: EntryInfo, started: bool) -> None:
        """The stored body failed its checksum or a read: drop it; refetch if nothing was sent."""
        if self.step is not Step.SERVING:
            return
        cache = self.cache
        assert cache is not None
        cache.store.remove(info)
        log.warn("cache: dropped the entry for {key}: its body can't be read back", key=self.key)
        if not started and not self._refetched:
            self._refetched = True
            self._refetch()
            return
        self.step = Step.DONE
        error = BadGateway("stored body unreadable")
        self.client.exchange_failed(self, error, response_started=started)  # type: ignore[arg-type]

    def _gone(self) -> None:
        self.step = Step.DONE

    # -- helpers -------------------------------------------------------------------

    def _freshness(self, entry: Entry) -> Freshness:
        """The entry's :class:`Freshness` under this route's rules, computed once per decoded head.

        It depends only on the stored head and the rules, so it is kept on
        the entry's :class:`~gateway.cache.entry.Decoded` (which the store
        keeps for its hot entries) rather than parsed again on every hit.
        """
        rules = self.policy.rules
        decoded = entry.decoded
        memo = decoded.fresh
        if memo is not None and memo[0] is rules:
            return memo[1]
        meta = decoded.meta
        fresh = freshness(meta.status, meta.headers, meta.request_time, meta.response_time, rules)
        decoded.fresh = (rules, fresh)
        return fresh

    def _with_status(self, headers: Headers, **params: object) -> Headers:
        value = self.policy.status(
            fwd=self._fwd, collapsed=False if self._waited else None, **params  # type: ignore[arg-type]
        )
        return headers if value is None else with_cache_status(headers, value)

    def _invalidate(self, response: Response) -> None:
        """RFC 9111 §4.4: a 2xx/3xx to an unsafe method removes what it may have changed."""
        cache = self.cache
        if cache is None or not cache.ready:
            return
        targets = invalidation_targets(
            self.request.method, response.status, self.client.proto, self.host, self.path, response.headers
        )
        keys = self.policy.keys
        for scheme, host, target in targets:
            cache.store.purge(keys.key(scheme, host, target))

    def _unavailable(self, fwd: Forward | None) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached and nothing usable is stored: 504."""
        value = self.policy.status(detail=b"only-if-cached")
        self._give_up(GatewayTimeout("only-if-cached: nothing usable stored"), status_value=value)

    def _give_up(self, error: GatewayError, *, status_value: bytes | None = None) -> None:
        """Answer ``error`` with the gateway's page, carrying Cache-Status."""
        self.step = Step.DONE
        self._own = True
        self._status = error.status
        value = status_value
        if value is None:
            value = self.policy.status(fwd=self._fwd, collapsed=False if self._waited else None)
        answered = GatewayError(error.reason, error.status)
        answered.headers = error.headers
        if value is not None:
            answered.headers = (*error.headers, (b"Cache-Status", value))
        self.client.exchange_failed(self, answered, response_started=False)  # type: ignore[arg-type]

    def _drop_intake(self) -> None:
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.abort(Outcome.UNSTORED)

    def _close_entry(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            entry.close()
