"""One active health check of one server: connect, maybe ask over HTTP, give a verdict.

:class:`Probe` is a one-shot client factory; :mod:`gateway.health` starts one per
check and reads its :class:`ProbeResult`.

Invariants:

- A probe reports exactly one :class:`ProbeResult` through its ``done``
  callback, or none at all if :meth:`Probe.abort` came first. After the
  verdict the connection is closed (aborted on timeout) and every later
  callback from the reactor is ignored.
- Everything is bounded: one timer of ``check_timeout`` covers the connect, the
  request and the response; the response head by :data:`CHECK_LIMITS`; the
  body is read only when ``check_body`` is set, and then at most ``max_body``
  bytes of it are searched.
- The request is built once per server (:func:`check_request`), so a value
  that can't be sent fails when the monitor is built, not at every check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError as TxTimeoutError,
)
from twisted.internet.interfaces import IConnector, IDelayedCall
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from gateway.compat import SLOTS
from gateway.chunked import ChunkedDecoder
from gateway.errors import ParseError
from gateway.parser import HeadLimits, Response, check_partial_head, head_end, parse_response

if TYPE_CHECKING:
    from gateway.config import BackendConfig, ServerConfig
    from gateway.upstream import Reactor

__all__ = ["CHECK_LIMITS", "MAX_BODY", "Probe", "ProbeResult", "ProbeState", "check_request"]

#: Limits for a check's response head: the same as for proxied responses.
CHECK_LIMITS = HeadLimits(max_line=8192, max_size=65536, max_count=200)
#: How much of a check's response body is searched for ``check_body``.
MAX_BODY = 64 * 1024

USER_AGENT = b"gateway-health"


@dataclass(frozen=True, **SLOTS)
class ProbeResult:
    """The verdict of one check: passed or not, and why, for the log line."""

    ok: bool
    reason: str


def check_request(backend: BackendConfig, server: ServerConfig) -> bytes:
    """The HTTP check request for ``server``, ready to write.

    Host is ``check_host``, else the backend's ``host_header``, else the
    server's own ``host[:port]`` (port left out when it is 80). The path is
    percent-encoded where it holds anything but visible ASCII, so a value from
    the configuration can't break the request line. ``Connection: close``
    makes every check one connection, as HAProxy's ``httpchk`` does.
    """
    host = backend.check_host or backend.host_header
    if not host:
        name = f"[{server.host}]" if ":" in server.host else server.host
        host = name if server.port == 80 else f"{name}:{server.port}"
    # RFC 3986 §2: reserved and unreserved characters pass; "%" too, so an
    # already-encoded path stays as written.
    path = quote(backend.check_path or "/", safe="/:@!$&'()*+,;=?%-._~")
    return (
        b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: %s\r\n\r\n"
        % (backend.check_method.encode("ascii"), path.encode("ascii"), host.encode("idna"), USER_AGENT)
    )


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _connect_reason(reason: Failure) -> str:
    if reason.check(ConnectionRefusedError):
        return "connect refused"
    if reason.check(TxTimeoutError):
        return "connect timed out"
    if reason.check(DNSLookupError):
        return "DNS lookup failed"
    return f"connect failed: {reason.getErrorMessage()}"


class ProbeState(enum.Enum):
    """States of :class:`Probe`.

    - IDLE: built, :meth:`Probe.start` not called yet.
    - CONNECTING: ``connectTCP`` called; waiting for the connection or its failure.
    - CONNECTED: an HTTP check's request is written; its response is being read.
      (A TCP check passes the moment it connects, so it never rests here.)
    - DONE: the verdict was given, or the probe was aborted; nothing more happens.
    """

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DONE = "done"


class Probe(ClientFactory):
    """One check of one server: a TCP connect, or an HTTP exchange when ``request`` is given.

    ``done`` gets the result once. ``expect`` is the ``check_body`` substring
    (empty: the body is never read); ``status`` the accepted status range,
    both ends included.
    """

    noisy = False

    def __init__(
        self,
        reactor: Reactor,
        server: ServerConfig,
        timeout: float,
        done: Callable[[ProbeResult], None],
        *,
        request: bytes | None = None,
        method: bytes = b"GET",
        status: tuple[int, int] = (200, 399),
        expect: bytes = b"",
        max_body: int = MAX_BODY,
        limits: HeadLimits = CHECK_LIMITS,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.timeout = timeout
        self.request = request
        self.method = method
        self.status = status
        self.expect = expect
        self.max_body = max_body
        self.limits = limits
        self.state = ProbeState.IDLE
        self._done = done
        self._timer: IDelayedCall | None = None
        self._connector: IConnector | None = None
        self._protocol: _CheckProtocol | None = None

    @classmethod
    def for_backend(
        cls,
        reactor: Reactor,
        backend: BackendConfig,
        server: ServerConfig,
        done: Callable[[ProbeResult], None],
        request: bytes | None,
    ) -> Probe:
        """The probe ``backend.check`` asks for (``request`` None: a TCP check)."""
        return cls(
            reactor,
            server,
            backend.check_timeout,
            done,
            request=request,
            method=backend.check_method.encode("ascii"),
            status=backend.check_status,
            expect=backend.check_body.encode("utf-8"),
        )

    # -- called by the monitor -------------------------------------------------

    def start(self) -> None:
        """Connect and arm the one timer that bounds the whole check."""
        if self.state is not ProbeState.IDLE:
            return
        self.state = ProbeState.CONNECTING
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        # The reactor's own connect timeout matches ours; whichever fires
        # first decides, the other finds the probe DONE.
        self._connector = self.reactor.connectTCP(
            self.server.host, self.server.port, self, timeout=self.timeout
        )

    def abort(self) -> None:
        """Give up without a verdict: cancel the timer, drop the connection."""
        if self.state is not ProbeState.DONE:
            self._close(abort=True)

    # -- ClientFactory -----------------------------------------------------------

    def buildProtocol(self, addr: object) -> _CheckProtocol:
        protocol = _CheckProtocol(self)
        protocol.factory = self
        return protocol

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if self.state is ProbeState.CONNECTING:
            self._connector = None  # nothing left to stop
            self.finish(False, _connect_reason(reason))

    # -- called by the protocol --------------------------------------------------

    def connected(self, protocol: _CheckProtocol) -> None:
        """The TCP connection is up: a TCP check passes, an HTTP check asks."""
        if self.state is not ProbeState.CONNECTING:
            protocol.transport.abortConnection()  # we gave up on it already
            return
        self._protocol = protocol
        if self.request is None:
            self.finish(True, "connected")
            return
        self.state = ProbeState.CONNECTED
        protocol.transport.write(self.request)

    @property
    def finished(self) -> bool:
        """True once the verdict is in (or the probe was aborted)."""
        return self.state is ProbeState.DONE

    def finish(self, ok: bool, reason: str, *, abort: bool = False) -> None:
        """Give the verdict once: close the connection, then report."""
        if self.state is ProbeState.DONE:
            return
        self._close(abort=abort)
        self._done(ProbeResult(ok, reason))

    # -- internals ---------------------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        if self.state is ProbeState.CONNECTING:
            reason = f"connect timed out after {_seconds(self.timeout)}"
        else:
            reason = f"no response within {_seconds(self.timeout)}"
        self.finish(False, reason, abort=True)

    def _close(self, *, abort: bool) -> None:
        self.state = ProbeState.DONE
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        protocol, self._protocol = self._protocol, None
        connector, self._connector = self._connector, None
        if protocol is not None:
            if abort:
                protocol.transport.abortConnection()
            else:
                protocol.transport.loseConnection()
        elif connector is not None:
            connector.stopConnecting()


class _Phase(enum.Enum):
    """Where :class:`_CheckProtocol` is in the response.

    - HEAD: collecting the response head (interim 1xx heads are skipped).
    - BODY: the final head passed the status check; searching its body.
    """

    HEAD = "head"
    BODY = "body"


class _CheckProtocol(Protocol):
    """One check connection: reads the response and tells its probe the verdict."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self._phase = _Phase.HEAD
        self._buf = b""
        self._remaining = 0  # body bytes still due; -1 chunked, -2 until close
        self._decoder: ChunkedDecoder | None = None
        self._body = bytearray()

    def connectionMade(self) -> None:
        self.probe.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.probe.finished:
            return
        if self._phase is _Phase.HEAD:
            self._head(data)
        else:
            self._body_data(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        probe = self.probe
        if probe.finished:
            return
        if self._phase is _Phase.BODY and self._remaining == -2:
            self._body_end()  # RFC 9112 §6.3: this body ends when the server closes
        elif self._phase is _Phase.BODY:
            probe.finish(False, "connection closed mid-response")
        else:
            probe.finish(False, "connection closed before the response")

    def _head(self, data: bytes) -> None:
        probe = self.probe
        self._buf += data
        while True:
            buf = self._buf
            end = head_end(buf)
            try:
                if end < 0:
                    check_partial_head(buf, probe.limits)
                    return
                response = parse_response(buf[:end], probe.limits, probe.method)
            except ParseError as exc:
                probe.finish(False, f"malformed response: {exc.reason}", abort=True)
                return
            self._buf = buf[end:]
            if 100 <= response.status < 200 and response.status != 101:
                continue  # interim response; the final one follows (RFC 9110 §15.2)
            break
        self._judge_head(response)

    def _judge_head(self, response: Response) -> None:
        probe = self.probe
        status = response.status
        low, high = probe.status
        if not low <= status <= high:
            probe.finish(False, f"status {status} outside {low}-{high}", abort=True)
            return
        if not probe.expect:
            probe.finish(True, f"status {status}")
            return
        self._phase = _Phase.BODY
        self._remaining = response.content_length
        self._decoder = ChunkedDecoder() if response.chunked else None
        rest, self._buf = self._buf, b""
        if self._remaining == 0:
            self._body_end()
        elif rest:
            self._body_data(rest)

    def _body_data(self, data: bytes) -> None:
        probe = self.probe
        remaining = self._remaining
        if remaining == -1:
            assert self._decoder is not None
            try:
                pieces, leftover = self._decoder.feed(data)
            except ParseError as exc:
                probe.finish(False, f"malformed chunked body: {exc.reason}", abort=True)
                return
            for piece in pieces:
                self._add(piece)
                if probe.finished:
                    return
            if leftover is not None:
                self._body_end()
        elif remaining > 0:
            piece = data[:remaining]
            self._remaining = remaining - len(piece)
            self._add(piece)
            if self._remaining == 0 and not probe.finished:
                self._body_end()
        else:
            self._add(data)

    def _add(self, piece: bytes) -> None:
        """Search the body so far; pass as soon as the substring shows up."""
        probe = self.probe
        body = self._body
        room = probe.max_body - len(body)
        # Only the tail of the old body can join the new piece in a match.
        start = max(0, len(body) - len(probe.expect) + 1)
        body += piece[:room]
        if body.find(probe.expect, start) >= 0:
            probe.finish(True, f"body has {probe.expect.decode('utf-8', 'replace')!r}")
        elif len(body) >= probe.max_body:
            probe.finish(
                False,
                f"no {probe.expect.decode('utf-8', 'replace')!r} in the first {probe.max_body} body bytes",
                abort=True,
            )

    def _body_end(self) -> None:
        self.probe.finish(False, f"body lacks {self.probe.expect.decode('utf-8', 'replace')!r}")
