"""TLS to backends: client connection creators, and a handshake that finishes before use.

A server whose ``address`` is ``https://`` is reached over TLS.  The pool
(:meth:`gateway.upstream.ServerPool._connect`) asks :func:`connect_factory` for
a factory to hand to ``connectTCP``: TLS around a :class:`HandshakeGate`
around the pool's own connect attempt.  The gate holds the upstream connection
back until the handshake has succeeded, so that

- the pool sees a verification failure as what it is, a failed connect
  (``ConnectFailed``: 502, logged with the reason, tried on another server,
  counted by passive health checks), never as an upstream that closed after a
  request was sent;
- ``timeout_connect`` covers the handshake as well as the TCP connect.

Once through, the connection's transport is the TLS transport and the pool
treats it like any other: pooled, reused, closed the same way.

Verification is on by default (the system's trust store, or ``tls_ca``), with
the name checked by service_identity through Twisted's
``optionsForClientTLS``.  ``tls_verify = false`` is the only way around it; it
is logged at start.

Invariants: creators are cached per settings (a CA bundle is read once, not per
connect) and the cache is emptied on reload; nothing here raises into the
reactor: a failure to build a creator becomes a failed connect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol as TypingProtocol

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.configvalues import is_hostname
from gateway.tls import NoDelayTLS
from gateway.tlsfiles import MaterialError, load_ca_bundle, load_client_pair

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from gateway.config import BackendConfig, Config, ServerConfig

#: Upstream connections speak HTTP/1.1 (RFC 7301 ALPN; a server without ALPN is fine).
ALPN = [b"http/1.1"]


class Attempt(TypingProtocol):
    """What the gate needs of the pool's connect attempt (``upstream._Attempt``)."""

    def buildProtocol(self, addr: Any) -> Any: ...
    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None: ...


class UpstreamTLSError(Exception):
    """The TLS handshake with a server failed, or its settings couldn't be used."""


@dataclass(frozen=True)
class _Settings:
    """What one client creator is built from; the cache key."""

    name: str
    verify: bool
    ca: str
    client_cert: str
    client_key: str


_creators: dict[_Settings, IOpenSSLClientConnectionCreator] = {}
_CACHE_LIMIT = 1024


def server_name(server: ServerConfig, backend: BackendConfig) -> str:
    """The name the server's certificate must carry, and the SNI sent if a DNS name."""
    return backend.tls_server_name or server.host


def clear_cache() -> None:
    """Forget every creator, so that the next connects read the files again (reload)."""
    _creators.clear()


def client_creator(server: ServerConfig, backend: BackendConfig) -> IOpenSSLClientConnectionCreator:
    """The creator for TLS connections to ``server``, cached per settings.

    :raises UpstreamTLSError: when a CA bundle or client certificate can't be used.
    """
    settings = _Settings(
        server_name(server, backend),
        backend.tls_verify,
        backend.tls_ca,
        backend.tls_client_cert,
        backend.tls_client_key,
    )
    creator = _creators.get(settings)
    if creator is None:
        creator = _build(settings)
        if len(_creators) >= _CACHE_LIMIT:
            _creators.clear()
        _creators[settings] = creator
    return creator


def _build(settings: _Settings) -> IOpenSSLClientConnectionCreator:
    client = None
    extra: dict[str, object] = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    try:
        if settings.client_cert:
            files = {"tls_client_cert": settings.client_cert, "tls_client_key": settings.client_key}
            pair = load_client_pair("tls_client_cert", "tls_client_key", files)
            client = pair
        roots = load_ca_bundle("tls_ca", settings.ca) if settings.ca else ()
    except MaterialError as exc:
        raise UpstreamTLSError(str(exc)) from None
    if client is not None:
        extra["privateKey"] = crypto.PKey.from_cryptography_key(client.key)
        extra["certificate"] = crypto.X509.from_cryptography(client.cert)
        if client.chain:
            extra["extraCertChain"] = [crypto.X509.from_cryptography(c) for c in client.chain]
    if not settings.verify:
        options = ssl.CertificateOptions(verify=False, **extra)  # type: ignore[arg-type]
        return _Unverified(options, settings.name)
    trust = (
        ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(c)) for c in roots])
        if roots
        else ssl.platformTrust()
    )
    return ssl.optionsForClientTLS(
        settings.name, trustRoot=trust, acceptableProtocols=ALPN, extraCertificateOptions=extra
    )


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """``tls_verify = false``: encrypted, SNI sent, the certificate not checked."""

    def __init__(self, options: ssl.CertificateOptions, name: str) -> None:
        self._options = options
        self._name = name.encode("idna") if is_hostname(name) and not _is_ip(name) else b""

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if self._name:
            connection.set_tlsext_host_name(self._name)
        connection.set_alpn_protos(ALPN)
        return connection


def _is_ip(name: str) -> bool:
    return ":" in name or name.replace(".", "").isdigit()


@implementer(IHandshakeListener)
class HandshakeGate(Protocol):
    """Stands between TLS and the real connection until the handshake is done.

    States: waiting (TLS up, handshake running or aborted by a failed
    verification, timer armed), through (the real protocol is connected and
    receives everything directly: the gate is out of the path), failed (the
    attempt was reported as a failed connect).
    """

    def __init__(
        self, inner: Protocol, attempt: Attempt, reactor: IReactorTime, timeout: float, what: str
    ) -> None:
        self.inner = inner
        self.attempt = attempt
        self.reactor = reactor
        self.timeout = timeout
        self.what = what
        self._timer: IDelayedCall | None = None
        self._through = False
        self._why: str | None = None

    def connectionMade(self) -> None:
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._why = f"TLS handshake with {self.what} timed out"
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """Verified: connect the real protocol and step out of the way.

        Unless the TLS layer is already closing.  Twisted up to 25.5 (which
        setup.cfg allows, and PyPy 3.9 installed until Twisted 26.4) checks the certificate's name
        in an info callback at the end of the handshake, aborts the connection
        there with the error as its reason, and then reports the handshake as
        completed all the same.  Going through would hand the pool a dead
        connection and lose the reason; staying, the gate's ``connectionLost``
        gets the name error and reports a failed connect.  (Twisted 26 checks
        the name in the verify callback, so the handshake itself fails and this
        is never called.)
        """
        if self.transport.disconnecting:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._through = True
        tls = self.transport
        tls.wrappedProtocol = self.inner  # ProtocolWrapper delivers to it from now on
        self.inner.makeConnection(tls)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)  # only if bytes arrive before the switch

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._through:
            self.inner.connectionLost(reason)
            return
        why = self._why or describe(reason, self.what)
        self.attempt.clientConnectionFailed(None, Failure(UpstreamTLSError(why)))


def describe(reason: Failure, what: str) -> str:
    """One line on why a handshake failed, for the log and the error."""
    value = reason.value
    if type(value).__name__ == "VerificationError":
        return f"TLS: the certificate of {what} is not valid for that name ({value})"
    if isinstance(value, SSL.Error):
        reasons = [entry[-1] for entry in value.args[0] if isinstance(entry, tuple)] if value.args else []
        detail = "; ".join(r for r in reasons if r) or str(value)
        return f"TLS handshake with {what} failed: {detail}"
    if isinstance(value, ConnectionLost) or reason.check(ConnectionLost):
        return f"TLS handshake with {what} failed: the server closed the connection"
    return f"TLS handshake with {what} failed: {reason.getErrorMessage()}"


class _GateFactory(ClientFactory):
    """Builds the gate around the attempt's protocol; passes connect failures on."""

    noisy = False

    def __init__(self, attempt: Attempt, reactor: IReactorTime, timeout: float, what: str) -> None:
        self.attempt = attempt
        self.reactor = reactor
        self.timeout = timeout
        self.what = what

    def buildProtocol(self, addr: Any) -> HandshakeGate | None:
        inner = self.attempt.buildProtocol(addr)
        if inner is None:
            return None
        return HandshakeGate(inner, self.attempt, self.reactor, self.timeout, self.what)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.attempt.clientConnectionFailed(connector, reason)


def connect_factory(
    reactor: IReactorTime, attempt: Attempt, server: ServerConfig, backend: BackendConfig
) -> TLSMemoryBIOFactory:
    """What the pool hands ``connectTCP`` for an https server.

    :raises UpstreamTLSError: when the TLS settings can't be used; the pool
        reports it as a failed connect.
    """
    creator = client_creator(server, backend)
    what = f"{server.name} ({server_name(server, backend)})"
    gate = _GateFactory(attempt, reactor, backend.timeout_connect, what)
    factory = TLSMemoryBIOFactory(creator, True, gate, reactor)
    factory.protocol = NoDelayTLS
    return factory


def watched_files(config: Config) -> list[str]:
    """The upstream TLS files of backends with https servers (for reload polling)."""
    return [
        path
        for backend in _tls_backends(config)
        for path in (backend.tls_ca, backend.tls_client_cert, backend.tls_client_key)
        if path
    ]


def _tls_backends(config: Config) -> Iterable[BackendConfig]:
    return (b for b in config.backends if any(s.scheme == "https" for s in b.servers))


def start_warnings(config: Config) -> list[str]:
    """What to log at start: backends whose servers' certificates are not checked."""
    return [
        f"backend {backend.name}: tls_verify = false: the servers' TLS certificates are NOT "
        "verified; anyone on the network path can impersonate them"
        for backend in _tls_backends(config)
        if not backend.tls_verify
    ]
