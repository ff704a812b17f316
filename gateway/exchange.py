"""One request's trip through the gateway: pick -> forward -> stream back.

The front end parses and routes a request, then hands it to an :class:`Exchange`,
which leases a server from the backend's selector, takes a pooled upstream
connection, streams the request body up and the response body down with
backpressure both ways, and reports completion back to the front end.

Retry rule (RFC 9110 §9.2.2): a failure before any response byte is retried on
another server when nothing can be lost: a connect failure (nothing was sent)
for any method; after the head went out, only an idempotent method, and only
while no request body byte has been sent (the body is streamed, not kept, so
once a byte is sent it cannot be replayed). Retries are
bounded per request (``retries``) and per backend (``gateway.budget``), so an
outage can't turn into a retry storm.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol as TypingProtocol

from twisted.logger import Logger

from gateway.chunked import LAST_CHUNK, encode_chunk
from gateway.hashing import hash_key_of
from gateway.errors import (
    BadGateway,
    ConnectFailed,
    GatewayError,
    GatewayTimeout,
    ServiceUnavailable,
)
from gateway.headers import response_headers, serialize_head
from gateway.httpdate import http_date
from gateway.outbound import request_head
from gateway.pauses import ReasonProducer
from gateway.bodystore import BodyProducer
from gateway.spool import Room, Spool, SpoolError
from gateway.spooling import ResponseSpool, spoolable

if TYPE_CHECKING:
    from gateway.balancer import Lease
    from gateway.config import RouteConfig
    from gateway.frontend import ClientConnection
    from gateway.parser import Headers, Request, Response
    from gateway.runtime import BackendRuntime, Runtime
    from gateway.upstream import UpstreamConnection

log = Logger()

_NO_BODY_STATUS = frozenset({204, 304})
_NOTHING_TRIED: frozenset[str] = frozenset()
#: RFC 9110 §9.2.2 idempotent methods: the only ones retried once sent.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def _ignore(*_args: object) -> None:
    """A callback with nothing to do: the exchange learns of the failure elsewhere."""


def _outcome(error: GatewayError) -> str:
    """The passive health-check outcome an upstream error stands for."""
    if isinstance(error, ConnectFailed):
        return "connect_failure"
    if isinstance(error, GatewayTimeout):
        return "timeout"
    return "reset"


class Observer(TypingProtocol):
    """Watches one exchange's response: the cache's hook into the request path.

    ``response_head`` sees the upstream response and the headers about to go to
    the client; it returns the headers to send (it may add some), or None to
    take the response over: the exchange then sends nothing to the client,
    passes the body to ``response_data`` and, at ``response_end``, leaves the
    client side to the observer. ``failed`` hears of every failure, also one
    that cuts a response already under way (so the observer can drop what it
    kept of it); while nothing went to the client it may answer the failure
    itself (stale-if-error) by returning True.
    """

    def response_head(self, response: Response, headers: Headers) -> Headers | None: ...
    def response_data(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def failed(self, error: GatewayError) -> bool: ...


class Phase(enum.Enum):
    """States of :class:`Exchange`.

    - PICKING: choosing a server and waiting for a pooled or new connection.
    - SENDING: the request head went upstream; no response head yet.
    - STREAMING: the response head went to the client; body flowing.
    - DONE: finished, failed or abandoned; every resource has been released.
    """

    PICKING = "picking"
    SENDING = "sending"
    STREAMING = "streaming"
    DONE = "done"


class _Framing(enum.Enum):
    """How the response body is framed toward the client."""

    NONE = "none"  # HEAD, 204, 304: no body whatever the headers say
    RAW = "raw"  # pass bytes as they are (Content-Length, or close-delimited)
    CHUNKED = "chunked"  # re-chunk a chunked or close-delimited body for a 1.1 client


class Exchange:
    """Forwards one request to one backend and streams the answer back."""

    def __init__(
        self,
        client: ClientConnection,
        request: Request,
        path: bytes,
        host: bytes,
        route: RouteConfig,
        backend: BackendRuntime,
        runtime: Runtime,
        *,
        observer: Observer | None = None,
        owner: object | None = None,
    ) -> None:
        self.client = client
        #: What the front end knows this exchange as (a cache wrapper, or itself).
        self.owner = self if owner is None else owner
        self.observer = observer
        self._taken = False
        self.request = request
        self.path = path
        self.host = host
        self.route = route
        self.backend = backend
        self.runtime = runtime
        self.phase = Phase.PICKING
        #: True once the response head has gone to the client (stays True after).
        self.responding = False
        self.status = 0
        self.body_bytes = 0
        self.upstream_address = "-"
        self.upstream_time = -1.0
        self._lease: Lease | None = None
        self._upstream: UpstreamConnection | None = None
        self._tried: frozenset[str] = _NOTHING_TRIED
        self._attempts = 0
        self._stale_retried = False
        self._head_sent = False
        self._last_error: GatewayError | None = None
        self._body_sent = False
        self._body_done = not (request.chunked or request.content_length > 0)
        self._sent_at = 0.0
        self._framing = _Framing.RAW
        self._producer_due = False
        #: Whether our producer is registered on the client transport.
        self._client_producer = False
        self._keep_alive = False
        self._pending_head: bytes | None = None
        self._spoolable = False
        self._spooled: ResponseSpool | None = None
        self._request_spool: Spool | None = None
        self._buffering = False
        self._replayable = True

    # -- start and server choice ---------------------------------------------

    def start(self) -> None:
        """Pick a server and ask its pool for a connection.

        With ``request_buffering``, the body is read into a spool first and
        this runs again once it is complete (or the spool is full).
        """
        backend = self.backend
        config = backend.config
        if self._attempts == 0:
            if self._buffer_request():
                return
            backend.budget.record_request(self.client.reactor.seconds())
        self._attempts += 1
        key = None
        if config.balance == "hash":
            request = self.request
            key = hash_key_of(config.hash_key, self.client.peer_ip, self.path, request.headers)
        lease = backend.selector.pick(self._tried, key)
        if lease is None:
            # After failed tries, the last upstream error explains it best (502);
            # with nothing tried, no server is available at all: 503 with
            # Retry-After, rather than hammering servers known to be down.
            self._fail(
                self._last_error
                or ServiceUnavailable("no server available", config.retry_after)
            )
            return
        self._lease = lease
        server = lease.server.config
        self.upstream_address = f"{server.host}:{server.port}"
        backend.pools[server.name].acquire(self)

    # -- upstream events (gateway.upstream.Sink) --------------------------------

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """A connection is ours: send the head, then let the client body flow."""
        if self.phase is not Phase.PICKING:
            # Abandoned while waiting: give the connection straight back.
            conn.pool.release(conn)
            return
        self._upstream = conn
        self.phase = Phase.SENDING
        request = self.request
        conn.start(self, request.method)
        spool = self._request_spool
        if spool is not None:
            self._send_spooled_body(conn, spool)
            return
        conn.write(self._request_head())
        self._head_sent = True
        self._sent_at = self.client.reactor.seconds()
        if self._body_done:
            conn.request_end()
            return
        producer = ReasonProducer(self.client.pauses, "upstream-full", self._upstream_stopped)
        conn.transport.registerProducer(producer, True)
        self.client.body_wanted(self.owner)

    def upstream_failed(self, error: GatewayError, *, before_response: bool) -> None:
        """The upstream failed: report it, retry when safe, else answer with the error."""
        if self.phase is Phase.DONE:
            return
        conn, self._upstream = self._upstream, None
        if conn is not None and not self._body_done:
            conn.transport.unregisterProducer()
        lease, self._lease = self._lease, None
        if lease is None:
            self._fail(error)
            return
        lease.release()
        server = lease.server
        # A reused keep-alive connection that dies before answering was most
        # likely closed by the server while idle (RFC 9112 §9.3.1): that says
        # nothing about the server, and one fresh try is always allowed.
        stale = before_response and conn is not None and conn.reused and not self._stale_retried
        if not stale and not isinstance(error, ServiceUnavailable):
            self.backend.health.report(server, _outcome(error))
        # RFC 9110 §9.2.2 / RFC 9112 §9.3.1.1: a proxy MUST NOT automatically
        # retry a non-idempotent request once it may have reached the server;
        # before the head went out (connect failure) any request is safe.
        safe = not self._head_sent or self.request.method in IDEMPOTENT
        if before_response and safe and not self._body_sent and not self.responding:
            if stale:
                self._stale_retried = True
                self._retry(server.name, error, exclude=False)
                return
            if self._may_retry():
                self._retry(server.name, error, exclude=True)
                return
        self._fail(error)

    def _may_retry(self) -> bool:
        """Within ``retries`` for this request and the backend's retry budget."""
        backend = self.backend
        if self._attempts > backend.config.retries:
            return False
        now = self.client.reactor.seconds()
        if not backend.budget.can_retry(now):
            log.warn(
                "backend {backend}: retry budget exhausted; not retrying",
                backend=backend.config.name,
            )
            return False
        backend.budget.record_retry(now)
        return True

    def _retry(self, server: str, error: GatewayError, *, exclude: bool) -> None:
        log.info(
            "retrying {method} {path} after {server}: {reason}",
            method=self.request.method.decode("latin-1"),
            path=self.path.decode("latin-1"),
            server=server,
            reason=error.reason,
        )
        if exclude:
            self._tried = self._tried | {server}
        self.phase = Phase.PICKING
        self._last_error = error
        self._head_sent = False
        self.start()

    def response_head(self, response: Response) -> None:
        """Forward the response head with the gateway's header rules applied."""
        now = self.client.reactor.seconds()
        self.upstream_time = now - self._sent_at
        self.phase = Phase.STREAMING
        status = self.status = response.status
        lease = self._lease
        if lease is not None:
            self.backend.health.report(lease.server, "ok" if status < 500 else f"status:{status}")
        # Held until the first body bytes or the end of this read, so that head
        # and body leave in one vectored send (see response_flush).
        self._pending_head = self._response_head(response)
        if self._taken:
            self._pending_head = None
            return
        # Backpressure from the client is wired only if the response outlasts
        # the read that carried its head (response_flush): most small ones
        # end within it, and one read's worth is all that can queue before.
        self._producer_due = self._framing is not _Framing.NONE

    def response_data(self, data: bytes) -> None:
        """Pass a piece of the response body on, framed for the client."""
        observer = self.observer
        if observer is not None:
            observer.response_data(data)
            if self._taken:
                return
        self.body_bytes += len(data)
        spooled = self._spooled
        if spooled is not None:
            if not spooled.write(data):
                self._fail(BadGateway("spool failed"))
            return
        framing = self._framing
        head = self._pending_head
        if framing is _Framing.CHUNKED:
            pieces = encode_chunk(data)
        elif framing is _Framing.RAW:
            if head is None:
                self.client.write(data)
                return
            pieces = [data]
        else:
            return
        if head is not None:
            self._pending_head = None
            self.responding = True
            pieces.insert(0, head)
        self.client.write_sequence(pieces)

    def response_flush(self) -> None:
        """The read that carried the head is done and the response goes on.

        Sends a head still held, and from now on lets a full client socket
        pause the upstream (or start the spool).
        """
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            self.responding = True
            self.client.write(head)
        conn = self._upstream
        if self._producer_due and conn is not None and self._spooled is None:
            self._producer_due = False
            self._client_producer = True
            assert conn.pauses is not None
            producer = ReasonProducer(conn.pauses, "client-full", self._client_stopped)
            producer.on_pause = self._client_blocked
            producer.on_resume = self._client_unblocked
            self.client.transport.registerProducer(producer, True)

    def response_end(self) -> None:
        """The response is complete: release everything and tell the front end."""
        if self.phase is Phase.DONE:
            return
        observer = self.observer
        if observer is not None:
            if self._taken:
                self._upstream = None
                self._release()
                observer.response_end()
                return
            observer.response_end()
        if self._spooled is not None:
            # The upstream is done and goes back to its pool now; the client
            # is still being fed from the spool (see _spool_done).
            self._spooled.finish()
            self._upstream = None
            self._release_lease()
            return
        client = self.client
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            self.responding = True
            tail = [head, LAST_CHUNK] if self._framing is _Framing.CHUNKED else [head]
            client.write_sequence(tail)
        elif self._framing is _Framing.CHUNKED:
            client.write(LAST_CHUNK)
        if self._client_producer:
            self._client_producer = False
            client.transport.unregisterProducer()
        self._upstream = None
        self._release()
        client.exchange_done(self.owner, keep_alive=self._keep_alive and self._body_done)

    # -- client events ---------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        """A piece of the client's request body (already de-chunked)."""
        if self._request_spool is not None:
            self._spool_request_body(data)
            return
        conn = self._upstream
        if conn is None:
            return
        self._body_sent = True
        if self.request.chunked:
            conn.write_sequence(encode_chunk(data))
        else:
            conn.write(data)

    def request_body_end(self) -> None:
        """The client's request body is complete."""
        self._body_done = True
        spool = self._request_spool
        if spool is not None:
            spool.finish()
            if self._buffering:
                self._buffering = False
                self.start()
            return
        conn = self._upstream
        if conn is None:
            return
        if self.request.chunked:
            conn.write(LAST_CHUNK)
        conn.transport.unregisterProducer()
        conn.request_end()

    def abandon(self) -> None:
        """The client went away or timed out: drop the upstream side now."""
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        self._close_spool()
        conn, self._upstream = self._upstream, None
        if conn is not None:
            conn.abandon()
        elif self._lease is not None:
            self.backend.pools[self._lease.server.config.name].cancel(self)
        self._release()

    # -- request buffering -------------------------------------------------------

    def _buffer_request(self) -> bool:
        """Start reading the body into a spool; False: stream it as usual."""
        request = self.request
        if self._body_done or not self.route.request_buffering or self._request_spool:
            return False
        expected = -1 if request.chunked else request.content_length
        spool = self.runtime.spooling.open(expected)
        if spool is None:
            return False
        self._request_spool = spool
        self._buffering = True
        self.client.body_wanted(self.owner)
        return True

    def _spool_request_body(self, data: bytes) -> None:
        spool = self._request_spool
        assert spool is not None
        try:
            room = spool.write(data)
        except SpoolError as exc:
            self._fail(exc)
            return
        if room is Room.FULL:
            # Out of spool budget: nothing frees it but a reader, so go
            # upstream now and let the client wait while the spool drains.
            self._replayable = False
            pauses = self.client.pauses
            pauses.add("spool-full")
            spool.on_room = lambda: pauses.discard("spool-full")
            if self._buffering:
                self._buffering = False
                self.start()

    def _send_spooled_body(self, conn: UpstreamConnection, spool: Spool) -> None:
        """Send the head and stream the spooled body to ``conn``."""
        complete = spool.length >= 0
        chunked = self.request.chunked and not complete
        length = spool.length if complete and self.request.chunked else None
        conn.write(self._request_head(chunked=chunked, length=length))
        self._head_sent = True
        self._body_sent = not self._replayable
        self._sent_at = self.client.reactor.seconds()

        def sent(_count: int) -> None:
            if chunked:
                conn.write(LAST_CHUNK)
            conn.request_end()

        write = (lambda d: conn.write_sequence(encode_chunk(d))) if chunked else conn.write
        BodyProducer(
            self.client.reactor, spool, conn.transport, on_done=sent, on_abort=_ignore, write=write
        ).start()

    # -- internals -------------------------------------------------------------

    def _fail(self, error: GatewayError) -> None:
        started = self.phase is Phase.STREAMING
        self.phase = Phase.DONE
        self._close_spool()
        observer = self.observer
        if observer is not None and observer.failed(error) and not self.responding:
            conn, self._upstream = self._upstream, None
            if conn is not None:
                conn.abandon()
            self._release()
            return
        conn, self._upstream = self._upstream, None
        if conn is not None:
            conn.abandon()
        self._release()
        if not started:
            self.status = error.status
        self.client.exchange_failed(self.owner, error, response_started=started)

    def _release(self) -> None:
        self._release_lease()
        self.phase = Phase.DONE
        spool, self._request_spool = self._request_spool, None
        if spool is not None:
            spool.close()

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()


    def _client_blocked(self) -> None:
        conn = self._upstream
        if conn is not None and self._spoolable and self._start_spool(conn):
            return
        if conn is not None:
            conn.pause_reading()
        self.client.client_write_blocked()

    def _start_spool(self, conn: UpstreamConnection) -> bool:
        """The client fell behind: take the rest of the body into a spool.

        Returns False (keep streaming with backpressure) when the spool budget
        can't cover it. Called from the client transport's pauseProducing.
        """
        expected = self._expected_rest()
        spool = self.runtime.spooling.open(expected)
        if spool is None:
            self._spoolable = False
            return False
        client = self.client
        self._client_producer = False
        client.transport.unregisterProducer()
        assert conn.pauses is not None
        conn.pauses.discard("client-full")
        pauses = conn.pauses
        chunked = self._framing is _Framing.CHUNKED
        self._spooled = ResponseSpool(
            client.reactor,
            spool,
            client.transport,
            write=(lambda d: client.write_sequence(encode_chunk(d))) if chunked else client.write,
            pause_upstream=lambda: pauses.add("spool-full"),
            resume_upstream=lambda: pauses.discard("spool-full"),
            blocked=client.client_write_blocked,
            unblocked=client.client_write_unblocked,
            done=self._spool_done,
            aborted=self._spool_cut,
        )
        self._spooled.start()
        return True

    def _expected_rest(self) -> int:
        """Body bytes still to come from the upstream, or -1 when unknown."""
        conn = self._upstream
        remaining = conn.remaining if conn is not None else -1
        return remaining if remaining > 0 else -1

    def _spool_done(self, sent: int) -> None:
        """The client has the whole spooled body."""
        self._spooled = None
        if self.phase is Phase.DONE:
            return
        client = self.client
        if self._framing is _Framing.CHUNKED:
            client.write(LAST_CHUNK)
        self._release()
        client.exchange_done(self.owner, keep_alive=self._keep_alive and self._body_done)

    def _spool_cut(self) -> None:
        """The feed from the spool ended early (client gone or spool failed)."""
        self._spooled = None
        if self.phase is not Phase.DONE:
            self._fail(BadGateway("response spool cut short"))

    def _close_spool(self) -> None:
        spooled, self._spooled = self._spooled, None
        if spooled is not None:
            spooled.close()

    def _client_unblocked(self) -> None:
        conn = self._upstream
        if conn is not None:
            conn.resume_reading()
        self.client.client_write_unblocked()

    def _upstream_stopped(self) -> None:
        """The upstream transport went away while it was our consumer."""

    def _client_stopped(self) -> None:
        """The client transport went away while it was our consumer."""

    def _request_head(self, *, chunked: bool | None = None, length: int | None = None) -> bytes:
        return request_head(
            self.request, self.path, self.host, self.client, via=self.runtime.via,
            host_header=self.backend.config.host_header, server_address=self.upstream_address,
            chunked=chunked, length=length,
        )  # fmt: skip

    def _response_head(self, response: Response) -> bytes:
        request = self.request
        runtime = self.runtime
        headers = response_headers(
            response.headers,
            connection=response.connection,
            via=runtime.via,
            version=response.version[5:],
            server=runtime.server_header,
            date=http_date(self.client.reactor.seconds()),
            hsts=runtime.hsts[self.client.factory.listener_name],
        )
        observer = self.observer
        if observer is not None:
            seen = observer.response_head(response, headers)
            if seen is None:
                self._taken = True
                return b""
            headers = seen
        keep_alive = request.keep_alive and self.client.accepting
        if request.method == b"HEAD" or response.status in _NO_BODY_STATUS:
            framing = _Framing.NONE
        elif response.content_length >= 0:
            framing = _Framing.RAW
        else:
            # Chunked or close-delimited upstream: drop any Content-Length
            # (RFC 9112 §6.3 rule 3) and re-frame for the client.
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
            if request.version == b"HTTP/1.1":
                framing = _Framing.CHUNKED
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                framing = _Framing.RAW
                keep_alive = False
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        elif request.version == b"HTTP/1.0":
            headers.append((b"Connection", b"keep-alive"))
        self._framing = framing
        self._keep_alive = keep_alive
        # Always scanned: X-Accel-Buffering is removed even where nothing spools.
        allowed, headers = spoolable(headers)
        self._spoolable = allowed and framing is not _Framing.NONE and self.route.buffering
        return serialize_head(b"HTTP/1.1 %d %s" % (response.status, response.reason), headers)

