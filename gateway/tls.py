"""Terminating TLS: one listener's server contexts, SNI, and what the request path asks of TLS.

A TLS listener is a plain endpoint (``bind = tcp:443``) with ``tls = true``; the
service wraps its :class:`~gateway.frontend.GatewayFactory` in a
:class:`TLSServerFactory` whose connection creator is a :class:`ServerTLS`.
``ServerTLS`` holds one pyOpenSSL context per site: the listener's default site
is the context every handshake starts with, and the SNI callback switches to
the site whose names match (exact first, then wildcards, longest suffix first,
as routes match hosts).

Safe defaults, with no way to weaken them but the documented ``tls_min_version``
override (see docs/tls.md for why each is there):

- TLS 1.2 and 1.3 only (RFC 8996 deprecates 1.0 and 1.1);
- ECDHE key exchange and AEAD ciphers only, in the server's order of preference;
- no compression (CRIME), no renegotiation;
- session resumption: tickets whose keys rotate (a context is rebuilt every
  ``tls_ticket_rotate``; pyOpenSSL offers no ticket-key callback, and OpenSSL
  makes one random key per context), and a server-side session cache under a
  session id context per listener;
- ALPN selects ``http/1.1`` (``h2`` can join the list when it is spoken);
- RSA and ECDSA certificates side by side: OpenSSL serves the one the client's
  signature algorithms and ciphers allow.

Invariants: a context is built only from checked, in-memory material
(:mod:`gateway.tlsfiles`); contexts are swapped whole, so a handshake in
progress or a connection already up keeps the context it started with; no
function here falls back to a weaker context when something fails: it raises.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from gateway.compat import set_cipher_list, set_tls13_ciphersuites
from gateway.tlsfiles import CertKey, SiteMaterial

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory, IReactorTime

    from gateway.config import ListenerConfig

log = Logger()

#: TLS 1.2 suites: ECDHE (forward secrecy) with AEAD only, ECDSA before RSA,
#: AES-128-GCM first (fast with AES-NI, and strong enough), ChaCha20 for CPUs
#: without AES instructions.  Mozilla's "intermediate" list less DHE, whose
#: parameters pyOpenSSL can't size automatically.
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
#: TLS 1.3 suites: all AEAD, all forward secret; our order of preference.
SUITES_TLS13 = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: Added only by the ``tls_min_version = 1.0|1.1`` override: TLS 1.0 and 1.1 have
#: no AEAD suites, so the ECDHE CBC suites are the least bad they can use, and
#: OpenSSL 3 needs security level 0 for their SHA-1 handshake signatures.
CIPHERS_LEGACY = (
    ":ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
    "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0"
)
#: What ALPN may select, in our order of preference (RFC 7301).
ALPN_PROTOCOLS = (b"http/1.1",)

_VERSIONS = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}
_LEGACY = frozenset({"1.0", "1.1"})
_CLIENT_AUTH = {
    "off": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


class TLSSetupError(Exception):
    """A context could not be built from material that passed the check."""


@dataclass(frozen=True)
class ServerSettings:
    """What one listener's contexts are built from, besides certificates."""

    listener: str
    min_version: str = "1.2"
    session_tickets: bool = True
    session_lifetime: float = 3600.0
    client_auth: str = "off"
    client_ca: tuple[x509.Certificate, ...] = ()

    @classmethod
    def of(
        cls, listener: ListenerConfig, rotate: float, client_ca: Sequence[x509.Certificate]
    ) -> ServerSettings:
        """The settings of ``listener``; ``rotate`` is ``[gateway] tls_ticket_rotate``."""
        return cls(
            listener=listener.name,
            min_version=listener.tls_min_version,
            session_tickets=listener.tls_session_tickets,
            session_lifetime=rotate,
            client_auth=listener.tls_client_auth,
            client_ca=tuple(client_ca),
        )

    @property
    def session_id(self) -> bytes:
        """The session id context: sessions resume only on the listener that made them.

        OpenSSL allows 32 bytes; a digest of the name fits any name.
        """
        return hashlib.sha256(b"gateway listener " + self.listener.encode()).digest()


def _load_chain(context: SSL.Context, pair: CertKey) -> None:
    """Certificate and chain into ``context``'s slot for the pair's key type.

    ``use_certificate_chain_file`` is the only pyOpenSSL call that gives each
    certificate its own chain (``add_extra_chain_cert`` is one chain for the
    whole context, wrong when RSA and ECDSA chains differ), and it reads a
    file: so the checked PEM is handed over through an anonymous in-memory
    file where the platform has one, else a private temporary file.  Both hold
    only certificates, which are public.
    """
    pem = pair.chain_pem()
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("gateway-chain")
        try:
            os.write(fd, pem)
            context.use_certificate_chain_file(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="gateway-chain-", suffix=".pem") as file:
        file.write(pem)
        file.flush()
        context.use_certificate_chain_file(file.name)


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> Any:
    """The first of :data:`ALPN_PROTOCOLS` the client offers.

    With no overlap the handshake goes on without ALPN (OpenSSL's NOACK) rather
    than failing: a client that offers only h2 then sees HTTP/1.1 refuse its
    preface, which is clearer than a handshake alert.
    """
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


def build_context(
    settings: ServerSettings,
    pairs: Sequence[CertKey],
    servername: Callable[[SSL.Connection], None] | None = None,
) -> SSL.Context:
    """A server context for one site with ``pairs`` (one per key type).

    :raises TLSSetupError: if OpenSSL refuses anything; never a partial context.
    """
    if not pairs:
        raise TLSSetupError("no certificate to serve")
    try:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(_VERSIONS[settings.min_version])
        options = (
            SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_SINGLE_ECDH_USE
        )
        if not settings.session_tickets:
            options |= SSL.OP_NO_TICKET
        context.set_options(options)
        ciphers = CIPHERS_TLS12
        if settings.min_version in _LEGACY:
            ciphers += CIPHERS_LEGACY
        set_cipher_list(context, ciphers.encode("ascii"))
        set_tls13_ciphersuites(context, SUITES_TLS13.encode("ascii"))
        context.set_session_id(settings.session_id)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_timeout(max(1, int(settings.session_lifetime)))
        context.set_alpn_select_callback(_select_alpn)
        for pair in pairs:
            _load_chain(context, pair)
            context.use_privatekey(pair.key)
        _staple(context, pairs)
        if settings.client_auth != "off":
            store = context.get_cert_store()
            assert store is not None
            for ca in settings.client_ca:
                store.add_cert(crypto.X509.from_cryptography(ca))
                context.add_client_ca(ca)
        context.set_verify(_CLIENT_AUTH[settings.client_auth])
        if servername is not None:
            context.set_tlsext_servername_callback(servername)
    except (SSL.Error, ValueError, TypeError, OSError) as exc:
        raise TLSSetupError(f"OpenSSL refused the TLS settings: {exc}") from exc
    return context


def _staple(context: SSL.Context, pairs: Sequence[CertKey]) -> None:
    """Serve each certificate's OCSP response to clients that ask (RFC 6066 §8).

    The callback runs after OpenSSL has chosen the certificate, so it answers
    for the one in use; the pairs of a site differ in key type, which tells
    them apart without hashing the certificate at each handshake.
    """
    responses = {
        crypto.PKey.from_cryptography_key(pair.key).type(): pair.ocsp
        for pair in pairs
        if pair.ocsp
    }
    if not responses:
        return

    def staple(conn: SSL.Connection, data: object) -> bytes:
        cert = conn.get_certificate()
        if cert is None:
            return b""
        return responses.get(cert.get_pubkey().type(), b"")

    context.set_ocsp_server_callback(staple)


def pick(name: str, exact: Mapping[str, SSL.Context], wildcards: Mapping[str, SSL.Context]) -> SSL.Context | None:
    """The context for SNI ``name``: an exact name, else the longest wildcard suffix.

    ``wildcards`` maps ``example.com`` for ``*.example.com``; as for routes, a
    wildcard covers every name with at least one more label.
    """
    name = name.lower().removesuffix(".")
    found = exact.get(name)
    if found is not None:
        return found
    dot = name.find(".")
    while dot >= 0:
        found = wildcards.get(name[dot + 1 :])
        if found is not None:
            return found
        dot = name.find(".", dot + 1)
    return None


@dataclass(frozen=True)
class _Contexts:
    """One generation of a listener's contexts, swapped whole."""

    default: SSL.Context
    exact: Mapping[str, SSL.Context]
    wildcards: Mapping[str, SSL.Context]


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The connection creator of one TLS listener: contexts per site, chosen by SNI.

    :meth:`install` builds a new generation of contexts and swaps it in; the
    handshakes that start afterwards use it.  Nothing is installed until the
    first call, and a failed call leaves the previous generation in place.
    """

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self._contexts: _Contexts | None = None
        self.generation = 0

    def install(
        self,
        settings: ServerSettings,
        sites: Sequence[SiteMaterial],
        default: str,
    ) -> None:
        """Build contexts for ``sites`` (``default`` names the fallback) and swap them in.

        :raises TLSSetupError: nothing is swapped.
        """
        by_site: dict[str, SSL.Context] = {}
        exact: dict[str, SSL.Context] = {}
        wildcards: dict[str, SSL.Context] = {}
        for site in sites:
            try:
                context = build_context(settings, site.pairs, self._servername)
            except TLSSetupError as exc:
                raise TLSSetupError(f"[site:{site.name}]: {exc}") from exc
            by_site[site.name] = context
            for name in site.names:
                if name.startswith("*."):
                    wildcards.setdefault(name[2:], context)
                else:
                    exact.setdefault(name, context)
        if default not in by_site:
            raise TLSSetupError(f"no default site {default!r} among {', '.join(by_site)}")
        contexts = _Contexts(by_site[default], exact, wildcards)
        for context in by_site.values():
            # The SNI callback finds its generation here, so a handshake that
            # began before a swap still picks among the contexts it began with.
            context.set_app_data(contexts)
        self._contexts = contexts
        self.generation += 1

    @staticmethod
    def _servername(conn: SSL.Connection) -> None:
        """SNI callback: switch to the named site's context; unknown names keep the default.

        The switch stays within the generation the handshake began with (the
        initial context's app data): its default context holds the session
        cache and ticket key that resumption goes through.
        """
        raw = conn.get_servername()
        if not raw:
            return
        initial = conn.get_context()
        contexts = initial.get_app_data()
        if not isinstance(contexts, _Contexts):
            return
        context = pick(raw.decode("ascii", "replace"), contexts.exact, contexts.wildcards)
        if context is not None and context is not initial:
            conn.set_context(context)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A new server-side connection on the current default context."""
        contexts = self._contexts
        if contexts is None:
            raise TLSSetupError(f"listener {self.listener}: no TLS contexts installed")
        return SSL.Connection(contexts.default, None)


class NoDelayTLS(BufferingTLSTransport):
    """Twisted's TLS protocol, with Nagle's algorithm off on the TCP connection below.

    The plain-TCP fast path (:mod:`gateway.fastwrite`) sets TCP_NODELAY on its
    own; TLS records go through the TLS transport instead, and a head and a
    body record meeting Nagle and a delayed ACK would stall 40 ms.
    """

    def makeConnection(self, transport: object) -> None:
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket (unix:); nothing to tune
        super().makeConnection(transport)


class TLSServerFactory(TLSMemoryBIOFactory):
    """TLS around a listener's factory; a refused connection stays refused.

    ``TLSMemoryBIOFactory`` would wrap the ``None`` a full listener returns
    (``max_connections``) and fail; here the connection is simply refused.
    """

    protocol = NoDelayTLS

    def __init__(self, creator: ServerTLS, wrapped: IProtocolFactory, clock: IReactorTime) -> None:
        super().__init__(creator, False, wrapped, clock)
        self.creator = creator

    def buildProtocol(self, addr: Any) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        # IProtocolFactory allows None ("refuse"); WrappingFactory's annotation doesn't.
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)

    def logPrefix(self) -> str:
        """``GatewayFactory+TLS``: one word, as the "starting on PORT" log line expects."""
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if callable(inner) else type(self.wrappedFactory).__name__
        return f"{name}+TLS"


# -- what the request path asks of TLS ---------------------------------------------


def _escape(text: str) -> bytes:
    """RFC 4514 text as a header-safe value: other than printable ASCII as ``\\XX``.

    RFC 4514 §2.4 allows any character as a backslash and two hex digits per
    UTF-8 byte, so the escaped string still names the same subject, and no
    control character (CR, LF, NUL) can reach a header.
    """
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E:
            out.append(byte)
        else:
            out += b"\\%02X" % byte
    return bytes(out)


def client_subject(transport: object) -> bytes | None:
    """The verified client certificate's subject (RFC 4514), or None.

    None when the connection is not TLS, no client certificate was asked for
    or sent, or the handshake is not complete.  A certificate returned here was
    verified against ``tls_client_ca`` by OpenSSL during the handshake: with
    ``tls_client_auth`` optional or required, a bad one fails the handshake.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
        if handle is None:
            return None
        cert = handle.get_peer_certificate(as_cryptography=True)
    except SSL.Error:
        return None
    if cert is None:
        return None
    return _escape(cert.subject.rfc4514_string())


def client_header(listener: ListenerConfig) -> bytes:
    """The lower-cased name of the client-subject header, b"" if none.

    On every listener with a name set (TLS or not) incoming fields of this
    name are dropped, so that no client can forge one; on a listener with
    ``tls_client_auth`` other than ``off`` the gateway adds its own.
    """
    return listener.tls_client_header.lower().encode("ascii")


def hsts_header(listener: ListenerConfig) -> bytes | None:
    """The Strict-Transport-Security value for responses on ``listener``, or None.

    RFC 6797 §7.2: "An HSTS Host MUST NOT include the STS header field in
    HTTP responses conveyed over non-secure transport", so only TLS listeners
    get one.
    """
    if listener.tls and listener.hsts:
        return listener.hsts.encode("ascii")
    return None
