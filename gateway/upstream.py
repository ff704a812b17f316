"""Upstream side: pooled keep-alive HTTP/1.1 client connections, one pool per server.

Invariants:
- A connection serves one exchange at a time; it goes back to its pool only after
  the whole request was sent and the whole response was read with keep-alive.
- Pool tables are bounded: ``pool_max_conns`` open connections per server,
  ``pool_max_idle`` idle ones, ``queue_size`` waiting exchanges, each waiter timed
  by ``timeout_queue``.
- Response bodies are passed to the exchange as they arrive; nothing is buffered
  beyond one read, and reading stops while the client is slow (``Pauses``).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Protocol as TypingProtocol

from twisted.internet.error import ConnectionDone, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.chunked import ChunkedDecoder
from gateway.deadline import Deadline
from gateway.errors import (
    BadGateway,
    ConnectFailed,
    GatewayError,
    GatewayTimeout,
    ParseError,
    ServiceUnavailable,
)
from gateway.parser import HeadLimits, Response, check_partial_head, head_end, parse_response
from gateway.fastwrite import writer_for
from gateway.pauses import Pauses
from gateway.tlsupstream import UpstreamTLSError, connect_factory as tls_connect_factory

if TYPE_CHECKING:
    from gateway.config import BackendConfig, ServerConfig

    class Reactor(IReactorTCP, IReactorTime):
        """The reactor interfaces the pool needs."""


log = Logger()

# Response heads from upstream get generous but finite limits (nginx's
# proxy_buffer_size bounds the same thing).
RESPONSE_LIMITS = HeadLimits(max_line=8192, max_size=65536, max_count=200)


class Sink(TypingProtocol):
    """What an upstream connection reports to: the exchange it serves."""

    def upstream_ready(self, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, error: GatewayError, *, before_response: bool) -> None: ...
    def response_head(self, response: Response) -> None: ...
    def response_data(self, data: bytes) -> None: ...
    def response_flush(self) -> None: ...
    def response_end(self) -> None: ...


class State(enum.Enum):
    """States of :class:`UpstreamConnection`.

    - CONNECTING: TCP connect in progress (the protocol does not exist yet).
    - IDLE: in the pool, no exchange; idle timer armed.
    - WAITING: a request is being sent or was sent; no response head yet.
    - RECEIVING: the response head arrived; reading the body.
    - CLOSED: the connection is gone; it is in no table.
    """

    CONNECTING = "connecting"
    IDLE = "idle"
    WAITING = "waiting"
    RECEIVING = "receiving"
    CLOSED = "closed"


class UpstreamConnection(Protocol):
    """One TCP connection to one upstream server, speaking HTTP/1.1 as a client."""

    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool
        self.state = State.CONNECTING
        self.sink: Sink | None = None
        self.reused = False
        self.pauses: Pauses | None = None
        self._buf = b""
        self._method = b"GET"
        self._remaining = 0
        self._decoder: ChunkedDecoder | None = None
        self._request_done = False
        self._received_any = False
        #: timeout_response, timeout_read or pool_idle_timeout, by state.
        self._deadline = Deadline(pool.reactor)

    # -- Twisted callbacks ---------------------------------------------------

    def connectionMade(self) -> None:
        self.write, self.write_sequence = writer_for(self.transport)
        self.pauses = Pauses(self.transport.pauseProducing, self.transport.resumeProducing)
        self.pool.connected(self)

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is State.RECEIVING:
            self._deadline.arm(self.pool.backend.timeout_read, self._read_timeout)
            self._body(data)
        elif state is State.WAITING:
            self._received_any = True
            self._buf += data
            self._head()
        else:
            # Bytes from an idle connection can't belong to any request
            # (RFC 9112 §9.3.2): the connection is unusable.
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        state = self.state
        self.state = State.CLOSED
        self._deadline.stop()
        sink, self.sink = self.sink, None
        self.pool.lost(self, was_idle=state is State.IDLE)
        if sink is None:
            return
        if state is State.RECEIVING and self._remaining == -2:
            sink.response_end()  # read-until-close body ends here (RFC 9112 §6.3)
        elif state is State.RECEIVING:
            sink.upstream_failed(BadGateway("upstream closed mid-response"), before_response=False)
        elif state is State.WAITING:
            sink.upstream_failed(
                BadGateway("upstream closed before responding"),
                before_response=not self._received_any,
            )

    # -- called by the exchange ----------------------------------------------

    def start(self, sink: Sink, method: bytes) -> None:
        """Take on one exchange; the caller writes the request head next."""
        self.sink = sink
        self.state = State.WAITING
        self._method = method
        self._buf = b""
        self._request_done = False
        self._received_any = False
        self._deadline.disarm()

    def request_end(self) -> None:
        """The whole request has been written; now wait for the response head."""
        self._request_done = True
        if self.state is State.WAITING:
            self._deadline.arm(self.pool.backend.timeout_response, self._response_timeout)

    def abandon(self) -> None:
        """The exchange gives up (client gone, timeout): drop the connection."""
        self.sink = None
        if self.state is not State.CLOSED:
            self.transport.abortConnection()

    @property
    def remaining(self) -> int:
        """Response body bytes still to read: >= 0, -1 (chunked) or -2 (until close)."""
        return self._remaining

    def pause_reading(self) -> None:
        """The client is slow: stop reading and stop blaming the upstream for it."""
        self._deadline.disarm()

    def resume_reading(self) -> None:
        """The client drained: resume the read-inactivity clock."""
        if self.state is State.RECEIVING:
            self._deadline.arm(self.pool.backend.timeout_read, self._read_timeout)

    # -- response parsing ------------------------------------------------------

    def _head(self) -> None:
        while True:
            buf = self._buf
            end = head_end(buf)
            if end < 0:
                try:
                    check_partial_head(buf, RESPONSE_LIMITS)
                except ParseError as exc:
                    self._protocol_error(exc)
                return
            try:
                response = parse_response(buf[:end], RESPONSE_LIMITS, self._method)
            except ParseError as exc:
                self._protocol_error(exc)
                return
            self._buf = buf[end:]
            if 100 <= response.status < 200:
                # Interim responses are consumed here: 100 Continue was already
                # answered by the gateway itself, and 101 needs an Upgrade we
                # never forward (RFC 9110 §7.8).
                if response.status == 101:
                    self._protocol_error(ParseError("unexpected 101 from upstream", 502))
                    return
                continue
            break
        self.state = State.RECEIVING
        self._remaining = response.content_length
        self._decoder = ChunkedDecoder() if response.chunked else None
        self._keep_alive = response.keep_alive
        self._deadline.arm(self.pool.backend.timeout_read, self._read_timeout)
        sink = self.sink
        assert sink is not None
        sink.response_head(response)
        if self.sink is not sink:
            return  # the exchange gave up while handling the head
        rest, self._buf = self._buf, b""
        if self._remaining == 0:
            self._finish(rest)
            return
        if rest:
            self._body(rest)
        if self.sink is sink:
            sink.response_flush()

    def _body(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            return
        remaining = self._remaining
        if remaining > 0:
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                sink.response_data(data)
                return
            self._remaining = 0
            sink.response_data(data[:remaining] if len(data) > remaining else data)
            if self.sink is sink:
                self._finish(data[remaining:])
        elif remaining == -1:
            assert self._decoder is not None
            try:
                pieces, leftover = self._decoder.feed(data)
            except ParseError as exc:
                self._protocol_error(exc)
                return
            for piece in pieces:
                sink.response_data(piece)
                if self.sink is not sink:
                    return
            if leftover is not None:
                self._finish(leftover)
        else:
            sink.response_data(data)

    def _finish(self, leftover: bytes) -> None:
        """The response is complete: report it, then pool or close the connection."""
        sink, self.sink = self.sink, None
        self._deadline.disarm()
        reusable = self._keep_alive and self._request_done and not leftover
        if reusable:
            self.state = State.IDLE
            self.reused = True
            if self.pauses:
                self.transport.resumeProducing()
                self.pauses = Pauses(self.transport.pauseProducing, self.transport.resumeProducing)
        else:
            self.state = State.CLOSED
            self.transport.loseConnection()
        if sink is not None:
            sink.response_end()
        if reusable:
            self.pool.release(self)

    # -- errors and timers -----------------------------------------------------

    def _protocol_error(self, exc: ParseError) -> None:
        sink, self.sink = self.sink, None
        log.warn(
            "upstream {server}: malformed response: {reason}",
            server=self.pool.server.name,
            reason=exc.reason,
        )
        self.transport.abortConnection()
        if sink is not None:
            error = BadGateway(f"malformed response: {exc.reason}")
            sink.upstream_failed(error, before_response=False)

    def _response_timeout(self) -> None:
        self._time_out("no response head within timeout_response")

    def _read_timeout(self) -> None:
        self._time_out("no response data within timeout_read")

    def _time_out(self, why: str) -> None:
        sink, self.sink = self.sink, None
        self.transport.abortConnection()
        if sink is not None:
            sink.upstream_failed(GatewayTimeout(why), before_response=False)

    def _idle_timeout(self) -> None:
        self.transport.loseConnection()

    def arm_idle(self) -> None:
        """Start the keep-alive idle clock (the pool calls this)."""
        self._deadline.arm(self.pool.backend.pool_idle_timeout, self._idle_timeout)

class _Attempt(ClientFactory):
    """One connect attempt for one waiting exchange (the pool's bookkeeping)."""

    noisy = False

    def __init__(self, pool: ServerPool, sink: Sink | None) -> None:
        self.pool = pool
        self.sink = sink

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        conn = UpstreamConnection(self.pool)
        conn.factory = self
        return conn

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.pool.connect_failed(self, reason)


class _Waiter:
    """An exchange queued for a connection, with its queue timer."""

    __slots__ = ("sink", "timer")

    def __init__(self, sink: Sink, timer: IDelayedCall) -> None:
        self.sink = sink
        self.timer = timer


class ServerPool:
    """Keep-alive connections to one server, and the exchanges waiting for one.

    ``backend`` is re-pointed at the new BackendConfig on reload, so every limit
    is read from the live configuration, never copied.
    """

    def __init__(self, reactor: Reactor, server: ServerConfig, backend: BackendConfig) -> None:
        self.reactor = reactor
        self.server = server
        self.backend = backend
        self.idle: list[UpstreamConnection] = []
        self.queue: deque[_Waiter] = deque()
        self.open = 0  # connected or connecting
        self.connects = 0  # TCP connections ever opened (for tests and stats)
        self._attempts: set[_Attempt] = set()

    def acquire(self, sink: Sink) -> None:
        """Give ``sink`` a connection: idle one, new one, or a place in the queue.

        The answer is ``sink.upstream_ready`` or ``sink.upstream_failed``; it comes
        synchronously when an idle connection is at hand or the queue is full,
        so the caller must be ready for either before calling.
        """
        while self.idle:
            conn = self.idle.pop()  # LIFO: the warmest connection, the others may idle out
            if conn.state is State.IDLE:
                sink.upstream_ready(conn)
                return
        if self.open < self.backend.pool_max_conns:
            self._connect(sink)
            return
        if len(self.queue) >= self.backend.queue_size:
            sink.upstream_failed(ServiceUnavailable("queue full"), before_response=True)
            return
        timer = self.reactor.callLater(self.backend.timeout_queue, self._queue_timeout, sink)
        self.queue.append(_Waiter(sink, timer))

    def cancel(self, sink: Sink) -> None:
        """``sink`` no longer wants a connection (client gone)."""
        for waiter in self.queue:
            if waiter.sink is sink:
                waiter.timer.cancel()
                self.queue.remove(waiter)
                return
        for attempt in self._attempts:
            if attempt.sink is sink:
                attempt.sink = None  # the connection will go to the pool instead

    def _connect(self, sink: Sink | None) -> None:
        self.open += 1
        self.connects += 1
        attempt = _Attempt(self, sink)
        self._attempts.add(attempt)
        factory: ClientFactory = attempt
        if self.server.scheme == "https":
            # TLS around the attempt; the connection reaches the pool only once
            # the handshake (with verification) succeeded (gateway.tlsupstream).
            try:
                factory = tls_connect_factory(self.reactor, attempt, self.server, self.backend)
            except UpstreamTLSError as exc:
                failure = Failure(exc)
                self.reactor.callLater(0, attempt.clientConnectionFailed, None, failure)
                return
        self.reactor.connectTCP(
            self.server.host, self.server.port, factory, timeout=self.backend.timeout_connect
        )

    def connected(self, conn: UpstreamConnection) -> None:
        """A connect attempt succeeded: hand the connection to its exchange."""
        attempt = conn.factory
        self._attempts.discard(attempt)
        sink = attempt.sink
        if sink is None:
            sink = self._next_waiter()
        if sink is None:
            conn.state = State.IDLE
            self._park(conn)
        else:
            sink.upstream_ready(conn)

    def connect_failed(self, attempt: _Attempt, reason: Failure) -> None:
        """The TCP connect failed or timed out: 502 material, safe to retry."""
        self._attempts.discard(attempt)
        self.open -= 1
        why = "connect timed out" if reason.check(TxTimeoutError) else "connect failed"
        log.warn(
            "upstream {server} {address}: {why}: {error}",
            server=self.server.name,
            address=f"{self.server.host}:{self.server.port}",
            why=why,
            error=reason.getErrorMessage(),
        )
        if attempt.sink is not None:
            attempt.sink.upstream_failed(ConnectFailed(why), before_response=True)
        self._refill()

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished an exchange with keep-alive: reuse or park it."""
        sink = self._next_waiter()
        if sink is not None:
            sink.upstream_ready(conn)
        else:
            self._park(conn)

    def lost(self, conn: UpstreamConnection, *, was_idle: bool) -> None:
        """A connection closed, whatever the reason: forget it, serve the queue."""
        self.open -= 1
        if was_idle and conn in self.idle:
            self.idle.remove(conn)
        self._refill()

    def close_idle(self) -> None:
        """Close every idle connection (shutdown, reload)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.transport.loseConnection()

    def _park(self, conn: UpstreamConnection) -> None:
        if len(self.idle) >= self.backend.pool_max_idle:
            conn.state = State.CLOSED
            conn.transport.loseConnection()
            return
        conn.arm_idle()
        self.idle.append(conn)

    def _refill(self) -> None:
        """Room for a connection opened up: start one for the first waiter."""
        if self.queue and self.open < self.backend.pool_max_conns:
            sink = self._next_waiter()
            if sink is not None:
                self._connect(sink)

    def _next_waiter(self) -> Sink | None:
        if not self.queue:
            return None
        waiter = self.queue.popleft()
        waiter.timer.cancel()
        return waiter.sink

    def _queue_timeout(self, sink: Sink) -> None:
        for waiter in self.queue:
            if waiter.sink is sink:
                self.queue.remove(waiter)
                break
        sink.upstream_failed(ServiceUnavailable("queue timeout"), before_response=True)
