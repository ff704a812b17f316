"""Unit tests for TLS: files (tlsfiles), contexts and SNI (tls), reload (tlsreload),
upstream creators (tlsupstream) and the HTTPS redirect (redirect).

Handshakes run in memory: a pyOpenSSL client and the gateway's server
``Connection`` exchange bytes through their memory BIOs, so no socket and no
clock is involved.  Certificates come from trustme, made once per module.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import config, tlsupstream
from gateway.compat import set_cipher_list
from gateway.config import ConfigError, ListenerConfig, SiteConfig
from gateway.redirect import location, redirect_response
from gateway.parser import HeadLimits, parse_request
from gateway.testing import simple_config
from gateway.tls import (
    ServerSettings,
    ServerTLS,
    TLSServerFactory,
    build_context,
    client_header,
    client_subject,
    hsts_header,
    pick,
)
from gateway.tlsfiles import MaterialError, covers, key_type as key_type_of, load_site
from gateway.tlsreload import Certificates

NOW = datetime.datetime.now(datetime.timezone.utc)


class _Certs:
    """One CA and the certificates the tests serve, made once."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.rsa = self.ca.issue_cert("www.example.com", "example.com", key_type=trustme.KeyType.RSA)
        self.ecdsa = self.ca.issue_cert("www.example.com", "example.com")
        self.wild = self.ca.issue_cert("*.example.org")
        self.expired = self.ca.issue_cert(
            "old.example.com",
            not_before=NOW - datetime.timedelta(days=30),
            not_after=NOW - datetime.timedelta(days=1),
        )
        self.client = self.ca.issue_cert("client@example.com", common_name="client one")
        self.stranger = self.other_ca.issue_cert("client@example.com")


_certs: _Certs | None = None


def certs() -> _Certs:
    global _certs
    if _certs is None:
        _certs = _Certs()
    return _certs


class FilesCase(SynchronousTestCase):
    """A temporary directory and helpers to write certificates into it."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gateway-tls-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as file:
            file.write(data)
        return path

    def leaf(self, name: str, leaf: trustme.LeafCert) -> tuple[str, str]:
        """Write ``leaf`` as NAME.pem and NAME.key; their paths."""
        cert = self.write(f"{name}.pem", leaf.cert_chain_pems[0].bytes())
        key = self.write(f"{name}.key", leaf.private_key_pem.bytes())
        return cert, key

    def site_files(self, **files: str) -> dict[str, str]:
        keys = ("cert", "key", "chain", "ocsp", "alt_cert", "alt_key", "alt_chain", "alt_ocsp")
        return {key: files.get(key, "") for key in keys}


# -- tlsfiles ---------------------------------------------------------------------------


class CoversTests(SynchronousTestCase):
    """covers(): RFC 6125 name matching for the "does the certificate cover it" warning."""

    def test_exact(self) -> None:
        """An exact DNS name covers itself, case-insensitively."""
        self.assertTrue(covers(["www.example.com"], "WWW.example.com"))
        self.assertFalse(covers(["www.example.com"], "example.com"))

    def test_wildcard_one_label(self) -> None:
        """A wildcard covers exactly one more label, not the bare domain or two labels."""
        self.assertTrue(covers(["*.example.com"], "a.example.com"))
        self.assertFalse(covers(["*.example.com"], "example.com"))
        self.assertFalse(covers(["*.example.com"], "a.b.example.com"))

    def test_configured_wildcard(self) -> None:
        """A configured wildcard name is covered only by the same wildcard."""
        self.assertTrue(covers(["*.example.com"], "*.example.com"))
        self.assertFalse(covers(["a.example.com"], "*.example.com"))


class LoadSiteTests(FilesCase):
    """load_site(): every way a site's files can be wrong, and the warnings."""

    def test_good_pair(self) -> None:
        """A matching certificate and key load, with no warning."""
        cert, key = self.leaf("www", certs().rsa)
        files = self.site_files(cert=cert, key=key)
        material, warnings = load_site("www", ["www.example.com"], files, NOW.timestamp())
        self.assertEqual([pair.key_type for pair in material.pairs], ["RSA"])
        self.assertEqual(warnings, [])

    def test_rsa_and_ecdsa(self) -> None:
        """cert and alt_cert of two key types make a site with two pairs."""
        cert, key = self.leaf("rsa", certs().rsa)
        alt_cert, alt_key = self.leaf("ec", certs().ecdsa)
        files = self.site_files(cert=cert, key=key, alt_cert=alt_cert, alt_key=alt_key)
        material, _ = load_site("www", ["www.example.com"], files, NOW.timestamp())
        self.assertEqual([pair.key_type for pair in material.pairs], ["RSA", "ECDSA"])

    def test_same_key_type_twice(self) -> None:
        """Two certificates of one key type are refused: OpenSSL keeps one per type."""
        cert, key = self.leaf("ec1", certs().ecdsa)
        alt_cert, alt_key = self.leaf("ec2", certs().wild)
        files = self.site_files(cert=cert, key=key, alt_cert=alt_cert, alt_key=alt_key)
        error = self.assertRaises(MaterialError, load_site, "x", [], files, NOW.timestamp())
        self.assertEqual(error.problems[0][0], "alt_cert")
        self.assertIn("both ECDSA", error.problems[0][1])

    def test_missing_file(self) -> None:
        """A missing file is a problem at its key, naming the path and the reason."""
        _, key = self.leaf("www", certs().rsa)
        files = self.site_files(cert=self.path("nope.pem"), key=key)
        error = self.assertRaises(MaterialError, load_site, "x", [], files, NOW.timestamp())
        self.assertEqual(error.problems, (("cert", f"cannot read {self.path('nope.pem')}: No such file or directory"),))

    def test_garbage_certificate(self) -> None:
        """A file without a PEM certificate is a problem."""
        _, key = self.leaf("www", certs().rsa)
        cert = self.write("bad.pem", b"not a certificate\n")
        error = self.assertRaises(MaterialError, load_site, "x", [], self.site_files(cert=cert, key=key), 0.0)
        self.assertIn("holds no PEM certificate", error.problems[0][1])

    def test_key_mismatch(self) -> None:
        """A key that is not the certificate's is a problem at ``key``."""
        cert, _ = self.leaf("rsa", certs().rsa)
        _, key = self.leaf("ec", certs().ecdsa)
        error = self.assertRaises(MaterialError, load_site, "x", [], self.site_files(cert=cert, key=key), 0.0)
        self.assertEqual(error.problems[0][0], "key")
        self.assertIn("does not match the certificate", error.problems[0][1])

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused: there is no passphrase to give it."""
        cert, _ = self.leaf("rsa", certs().rsa)
        private = serialization.load_pem_private_key(certs().rsa.private_key_pem.bytes(), None)
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        key = self.write("enc.key", encrypted)
        error = self.assertRaises(MaterialError, load_site, "x", [], self.site_files(cert=cert, key=key), 0.0)
        self.assertIn("encrypted key", error.problems[0][1])

    def test_expired_warns(self) -> None:
        """An expired certificate loads, with a warning."""
        cert, key = self.leaf("old", certs().expired)
        _, warnings = load_site("old", ["old.example.com"], self.site_files(cert=cert, key=key), NOW.timestamp())
        self.assertEqual(len(warnings), 1)
        self.assertIn("certificate expired on", warnings[0][1])

    def test_uncovered_name_warns(self) -> None:
        """A configured name the certificate doesn't carry is a warning."""
        cert, key = self.leaf("www", certs().rsa)
        files = self.site_files(cert=cert, key=key)
        _, warnings = load_site("www", ["www.example.com", "shop.example.com"], files, NOW.timestamp())
        self.assertEqual(warnings[0][0], "cert")
        self.assertIn("does not cover shop.example.com", warnings[0][1])

    def test_chain_order_warns(self) -> None:
        """A chain whose first certificate did not issue the leaf is a warning."""
        cert, key = self.leaf("www", certs().rsa)
        chain = self.write("chain.pem", certs().other_ca.cert_pem.bytes())
        files = self.site_files(cert=cert, key=key, chain=chain)
        _, warnings = load_site("www", ["www.example.com"], files, NOW.timestamp())
        self.assertIn("did not issue the certificate", warnings[0][1])


def ocsp_response(leaf: trustme.LeafCert, ca: trustme.CA, next_update: datetime.datetime) -> bytes:
    """A signed, successful OCSP response saying ``leaf`` is good."""
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer, algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.GOOD, this_update=NOW - datetime.timedelta(hours=1),
        next_update=next_update, revocation_time=None, revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    response = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(serialization.Encoding.DER)


class OcspFileTests(FilesCase):
    """OCSP response files: checked against the certificate they staple for."""

    def test_good(self) -> None:
        """A fresh response for the certificate loads."""
        cert, key = self.leaf("www", certs().rsa)
        der = ocsp_response(certs().rsa, certs().ca, NOW + datetime.timedelta(days=1))
        files = self.site_files(cert=cert, key=key, ocsp=self.write("www.ocsp", der))
        material, warnings = load_site("www", [], files, NOW.timestamp())
        self.assertEqual(material.pairs[0].ocsp, der)
        self.assertEqual(warnings, [])

    def test_other_certificate(self) -> None:
        """A response for another certificate is a problem at ``ocsp``."""
        cert, key = self.leaf("www", certs().rsa)
        der = ocsp_response(certs().ecdsa, certs().ca, NOW + datetime.timedelta(days=1))
        files = self.site_files(cert=cert, key=key, ocsp=self.write("www.ocsp", der))
        error = self.assertRaises(MaterialError, load_site, "www", [], files, NOW.timestamp())
        self.assertEqual(error.problems[0][0], "ocsp")
        self.assertIn("for another certificate", error.problems[0][1])

    def test_stale(self) -> None:
        """A response past its next update loads with a warning."""
        cert, key = self.leaf("www", certs().rsa)
        der = ocsp_response(certs().rsa, certs().ca, NOW - datetime.timedelta(minutes=5))
        files = self.site_files(cert=cert, key=key, ocsp=self.write("www.ocsp", der))
        _, warnings = load_site("www", [], files, NOW.timestamp())
        self.assertIn("is stale", warnings[0][1])


# -- configuration --------------------------------------------------------------------

BACKEND = """\
[backend:app]
[server:app1]
backend = app
address = http://127.0.0.1:8081
[route:all]
backend = app
"""


class TLSConfigTests(FilesCase):
    """The loader's TLS keys, rules and file checks."""

    def setUp(self) -> None:
        super().setUp()
        self.leaf("www", certs().rsa)
        self.leaf("ec", certs().ecdsa)
        self.leaf("wild", certs().wild)
        self.write("ca.pem", certs().ca.cert_pem.bytes())

    def load(self, text: str) -> config.Config:
        path = self.write("gw.ini", text.encode())
        return config.load(path)

    def problems(self, text: str) -> tuple[str, ...]:
        path = self.write("gw.ini", text.encode())
        error = self.assertRaises(ConfigError, config.load, path)
        return tuple(p.replace(path, "gw.ini") for p in error.problems)

    def tls_ini(self, listener: str = "", site: str = "", more: str = "") -> str:
        return (
            "[listener:web]\nbind = tcp:8443\ntls = true\n" + listener
            + "[site:www]\nnames = www.example.com, example.com\ncert = www.pem\nkey = www.key\n"
            + site + more + BACKEND
        )

    def test_minimal_tls(self) -> None:
        """A TLS listener with one site loads; paths are made absolute next to the file."""
        loaded = self.load(self.tls_ini())
        listener = loaded.listeners[0]
        self.assertTrue(listener.tls)
        self.assertEqual(listener.tls_min_version, "1.2")
        site = loaded.sites[0]
        self.assertEqual(site, SiteConfig("www", ("www.example.com", "example.com"),
                                          self.path("www.pem"), self.path("www.key")))
        self.assertEqual(loaded.warnings, ())

    def test_broken_certificate_file_line(self) -> None:
        """A broken certificate fails the load with FILE:LINE at its key."""
        self.write("www.pem", b"-----BEGIN CERTIFICATE-----\nnonsense\n")
        self.assertEqual(
            self.problems(self.tls_ini()),
            (f"gw.ini:6 [site:www] cert: {self.path('www.pem')} holds no PEM certificate "
             "(-----BEGIN CERTIFICATE-----)",),
        )

    def test_key_mismatch_file_line(self) -> None:
        """A key that doesn't match is reported at the key's line."""
        text = self.tls_ini().replace("key = www.key", "key = ec.key")
        (problem,) = self.problems(text)
        self.assertTrue(problem.startswith("gw.ini:7 [site:www] key: the key in "), problem)

    def test_expired_is_warning(self) -> None:
        """An expired certificate loads, with a FILE:LINE warning."""
        self.leaf("www", certs().expired)
        loaded = self.load(self.tls_ini().replace("www.example.com, example.com", "old.example.com"))
        (warning,) = loaded.warnings
        self.assertIn(":6 [site:www] cert: certificate expired on", warning)

    def test_tls_without_sites(self) -> None:
        """A TLS listener needs at least one site."""
        text = "[listener:web]\nbind = tcp:8443\ntls = true\n" + BACKEND
        (problem,) = self.problems(text)
        self.assertIn("[listener:web] tls: no [site:NAME] section", problem)

    def test_unknown_site(self) -> None:
        """tls_sites and tls_default_site must name sites."""
        found = self.problems(self.tls_ini("tls_sites = www, nope\ntls_default_site = gone\n"))
        self.assertIn("gw.ini:4 [listener:web] tls_sites: no [site:nope] section; allowed: www", found)
        self.assertIn("gw.ini:5 [listener:web] tls_default_site: no [site:gone] section; allowed: www", found)

    def test_default_site_not_served(self) -> None:
        """The default site must be one the listener serves."""
        more = "[site:wild]\nnames = *.example.org\ncert = wild.pem\nkey = wild.key\n"
        (problem,) = self.problems(self.tls_ini("tls_sites = www\ntls_default_site = wild\n", more=more))
        self.assertIn("[site:wild] is not among this listener's sites", problem)

    def test_tls_keys_on_plain_listener(self) -> None:
        """TLS-only keys on a plain listener are an error, not silently ignored."""
        text = "[listener:web]\nbind = tcp:8080\ntls_client_auth = required\n" + BACKEND
        (problem,) = self.problems(text)
        self.assertEqual(problem, "gw.ini:3 [listener:web] tls_client_auth: only used on a TLS "
                                  "listener; allowed: tls = true")

    def test_client_auth_needs_ca(self) -> None:
        """tls_client_auth needs tls_client_ca."""
        (problem,) = self.problems(self.tls_ini("tls_client_auth = required\n"))
        self.assertIn("tls_client_auth: tls_client_auth = required needs the CAs", problem)

    def test_client_ca_checked(self) -> None:
        """The client CA bundle is read at check time."""
        (problem,) = self.problems(self.tls_ini("tls_client_auth = optional\ntls_client_ca = none.pem\n"))
        self.assertIn("[listener:web] tls_client_ca: cannot read", problem)

    def test_redirect_and_tls(self) -> None:
        """A TLS listener can't also redirect to HTTPS."""
        (problem,) = self.problems(self.tls_ini("redirect_https = true\n"))
        self.assertIn("redirect_https: a TLS listener can't redirect", problem)

    def test_ssl_bind_with_tls(self) -> None:
        """tls = true on an ssl: endpoint would be TLS twice."""
        text = self.tls_ini().replace("bind = tcp:8443", f"bind = ssl:8443:privateKey={self.path('www.key')}:certKey={self.path('www.pem')}")
        (problem,) = self.problems(text)
        self.assertIn("[listener:web] tls: bind is an ssl: endpoint", problem)

    def test_name_in_two_sites(self) -> None:
        """One name in two sites of one listener is ambiguous."""
        more = "[site:other]\nnames = example.com\ncert = www.pem\nkey = www.key\n"
        (problem,) = self.problems(self.tls_ini(more=more))
        self.assertIn("[site:other] names: example.com is also served by [site:www]", problem)

    def test_alt_pairing(self) -> None:
        """alt_cert without alt_key (and the reverse) is an error."""
        (problem,) = self.problems(self.tls_ini(site="alt_cert = ec.pem\n"))
        self.assertIn("[site:www] alt_cert: set without alt_key", problem)

    def test_site_names_refused(self) -> None:
        """Site names are DNS names or wildcards: no IP addresses, no ports."""
        for raw in ["10.0.0.1", "[::1]", "www.example.com:443", "", "a, a"]:
            self.assertRaises(ValueError, config.SECTION_KEYS["site"]["names"].parser.parse, raw)

    def test_hsts_values(self) -> None:
        """hsts takes max-age with includeSubDomains and preload; typos are errors."""
        parser = config.SECTION_KEYS["listener"]["hsts"].parser
        self.assertEqual(parser.parse("max-age=63072000; includeSubDomains"), "max-age=63072000; includeSubDomains")
        self.assertEqual(parser.parse('max-age="300";preload'), 'max-age="300";preload')
        for raw in ["includeSubDomains", "max-age=x", "max-age=1; includeSubdomain", "max-age=1; max-age=2"]:
            self.assertRaises(ValueError, parser.parse, raw)

    def test_backend_tls_keys_need_https(self) -> None:
        """TLS keys on a backend without an https server are an error (an http:// slip)."""
        text = ("[listener:web]\nbind = tcp:8080\n[backend:app]\ntls_ca = ca.pem\n"
                "[server:app1]\nbackend = app\naddress = http://10.0.0.1\n[route:all]\nbackend = app\n")
        (problem,) = self.problems(text)
        self.assertIn("gw.ini:4 [backend:app] tls_ca: no server of this backend has an https:// address", problem)

    def test_http_check_on_https(self) -> None:
        """check = http can't check an https server (plain HTTP to a TLS port): an error."""
        text = ("[listener:web]\nbind = tcp:8080\n[defaults]\ncheck = http\n[backend:app]\n"
                "[server:app1]\nbackend = app\naddress = https://10.0.0.1\n[route:all]\nbackend = app\n")
        (problem,) = self.problems(text)
        self.assertIn("gw.ini:4 [defaults] check: check = http sends plain HTTP", problem)

    def test_redirect_port_alone(self) -> None:
        """redirect_https_port without redirect_https is an error."""
        (problem,) = self.problems("[listener:web]\nbind = tcp:8080\nredirect_https_port = 8443\n" + BACKEND)
        self.assertIn("[listener:web] redirect_https_port: only used on a redirecting listener", problem)

    def test_legacy_version_warns(self) -> None:
        """tls_min_version = 1.0 loads with a warning."""
        loaded = self.load(self.tls_ini("tls_min_version = 1.0\n"))
        self.assertIn("TLS 1.0 is enabled", loaded.warnings[0])

    def test_upstream_tls_keys(self) -> None:
        """Backend TLS keys load; tls_verify = false warns; a client cert needs its key."""
        text = (
            "[listener:web]\nbind = tcp:8080\n[backend:app]\ntls_verify = false\n"
            "tls_server_name = API.internal\ntls_ca = ca.pem\n"
            "[server:app1]\nbackend = app\naddress = https://10.0.0.1\n[route:all]\nbackend = app\n"
        )
        loaded = self.load(text)
        backend = loaded.backends[0]
        self.assertEqual((backend.tls_server_name, backend.tls_ca), ("api.internal", self.path("ca.pem")))
        self.assertEqual(backend.servers[0].port, 443)
        self.assertIn("gw.ini:4 [backend:app] tls_verify: tls_verify = false", loaded.warnings[0].replace(self.path("gw.ini"), "gw.ini"))
        (problem,) = self.problems(text.replace("tls_ca = ca.pem", "tls_client_cert = www.pem"))
        self.assertIn("[backend:app] tls_client_cert: set without tls_client_key", problem)


# -- contexts and handshakes --------------------------------------------------------


def handshake(
    server: SSL.Connection,
    *,
    name: bytes | None = None,
    max_version: int | None = None,
    ciphers: bytes | None = None,
    alpn: list[bytes] | None = None,
    client_cert: trustme.LeafCert | None = None,
    ocsp_seen: list[bytes] | None = None,
    session: SSL.Session | None = None,
    context: SSL.Context | None = None,
) -> SSL.Connection:
    """Drive a client handshake against ``server`` in memory; the client connection.

    ``context``: the client context of an earlier handshake, as resumption needs.
    Raises SSL.Error when either side refuses.
    """
    if context is not None:
        return _drive(SSL.Connection(context, None), server, name, ocsp_seen, session)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
        context.set_min_proto_version(SSL.TLS1_VERSION)
    if ciphers is not None:
        set_cipher_list(context, ciphers)
    if alpn is not None:
        context.set_alpn_protos(alpn)
    if client_cert is not None:
        context.use_certificate(x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes()))
        context.use_privatekey(serialization.load_pem_private_key(client_cert.private_key_pem.bytes(), None))
    if ocsp_seen is not None:
        context.set_ocsp_client_callback(lambda conn, data, _: ocsp_seen.append(data) or True)
    return _drive(SSL.Connection(context, None), server, name, ocsp_seen, session)


def _drive(
    client: SSL.Connection,
    server: SSL.Connection,
    name: bytes | None,
    ocsp_seen: list[bytes] | None,
    session: SSL.Session | None,
) -> SSL.Connection:
    client.set_connect_state()
    if name is not None:
        client.set_tlsext_host_name(name)
    if ocsp_seen is not None:
        client.request_ocsp()
    if session is not None:
        client.set_session(session)
    server.set_accept_state()
    done = {client: False, server: False}
    for _ in range(20):
        for one, other in ((client, server), (server, client)):
            if not done[one]:
                try:
                    one.do_handshake()
                    done[one] = True
                except SSL.WantReadError:
                    pass
            try:
                other.bio_write(one.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            break
    # TLS 1.3: tickets and the server's verdict on a client certificate come
    # after the handshake; one round of application data brings them.
    client.send(b"x")
    for _ in range(3):
        for one, other in ((client, server), (server, client)):
            try:
                other.bio_write(one.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        for one in (server, client):
            try:
                one.recv(1 << 16)
            except SSL.WantReadError:
                pass
    return client


def reused(conn: SSL.Connection) -> bool:
    """Whether the handshake resumed a session.

    pyOpenSSL has no public call for it; SSL_session_reused is in its bindings.
    (The integration tests check the same with Python's ``session_reused``.)
    """
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(conn._ssl))  # type: ignore[attr-defined]


def subject_cn(conn: SSL.Connection) -> list[str]:
    """The DNS names of the certificate the server presented."""
    cert = conn.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


class ServerTLSTests(FilesCase):
    """ServerTLS: contexts per site, SNI, versions, ALPN, stapling, mTLS."""

    def material(self, name: str, names: list[str], first: trustme.LeafCert,
                 second: trustme.LeafCert | None = None, **extra: str):
        cert, key = self.leaf(f"{name}1", first)
        files = self.site_files(cert=cert, key=key, **extra)
        if second is not None:
            files["alt_cert"], files["alt_key"] = self.leaf(f"{name}2", second)
        material, _ = load_site(name, names, files, NOW.timestamp())
        return material

    def creator(self, settings: ServerSettings | None = None, **extra: str) -> ServerTLS:
        creator = ServerTLS("web")
        www = self.material("www", ["www.example.com", "example.com"], certs().rsa, certs().ecdsa, **extra)
        wild = self.material("wild", ["*.example.org"], certs().wild)
        creator.install(settings or ServerSettings("web"), [www, wild], "www")
        return creator

    def test_sni_exact_wildcard_default(self) -> None:
        """Exact names, wildcards and no/unknown SNI get the right site's certificate."""
        creator = self.creator()
        cases = [(b"www.example.com", "www.example.com"), (b"a.example.org", "*.example.org"),
                 (b"a.b.example.org", "*.example.org"), (None, "www.example.com"),
                 (b"unknown.test", "www.example.com")]
        for name, expected in cases:
            client = handshake(creator.serverConnectionForTLS(None), name=name)
            self.assertEqual(subject_cn(client)[0], expected, name)

    def test_pick(self) -> None:
        """pick(): exact first, then the longest wildcard suffix, else None."""
        exact = {"a.example.com": "exact"}
        wild = {"example.com": "short", "eu.example.com": "long"}
        self.assertEqual(pick("A.example.com.", exact, wild), "exact")  # type: ignore[arg-type]
        self.assertEqual(pick("x.eu.example.com", exact, wild), "long")  # type: ignore[arg-type]
        self.assertEqual(pick("x.example.com", exact, wild), "short")  # type: ignore[arg-type]
        self.assertIsNone(pick("example.com", exact, wild))  # type: ignore[arg-type]

    def test_rsa_or_ecdsa_by_cipher(self) -> None:
        """A TLS 1.2 client that only does RSA gets RSA; one that does ECDSA gets ECDSA."""
        creator = self.creator()
        for cipher, key_type in [(b"ECDHE-RSA-AES128-GCM-SHA256", "RSA"),
                                 (b"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDSA")]:
            client = handshake(creator.serverConnectionForTLS(None), name=b"www.example.com",
                               max_version=SSL.TLS1_2_VERSION, ciphers=cipher)
            cert = client.get_peer_certificate(as_cryptography=True)
            self.assertEqual(key_type_of(cert.public_key()), key_type)

    def test_old_versions_refused(self) -> None:
        """TLS 1.0 and 1.1 handshakes fail by default."""
        creator = self.creator()
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            self.assertRaises(SSL.Error, handshake, creator.serverConnectionForTLS(None),
                              max_version=version, ciphers=b"DEFAULT:@SECLEVEL=0")

    def test_legacy_override(self) -> None:
        """tls_min_version = 1.1 lets a TLS 1.1 client in, with a CBC suite."""
        creator = self.creator(ServerSettings("web", min_version="1.1"))
        client = handshake(creator.serverConnectionForTLS(None), max_version=SSL.TLS1_1_VERSION,
                           ciphers=b"DEFAULT:@SECLEVEL=0")
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.1")

    def test_modern_defaults(self) -> None:
        """TLS 1.3 with an AEAD suite; no compression; only AEAD suites for TLS 1.2."""
        creator = self.creator()
        client = handshake(creator.serverConnectionForTLS(None))
        self.assertEqual(client.get_protocol_version_name(), "TLSv1.3")
        server = creator.serverConnectionForTLS(None)
        for name in server.get_cipher_list():
            self.assertTrue("GCM" in name or "CHACHA20" in name, name)

    def test_alpn(self) -> None:
        """ALPN selects http/1.1; a client offering only h2 goes on without ALPN."""
        creator = self.creator()
        client = handshake(creator.serverConnectionForTLS(None), alpn=[b"h2", b"http/1.1"])
        self.assertEqual(client.get_alpn_proto_negotiated(), b"http/1.1")
        client = handshake(creator.serverConnectionForTLS(None), alpn=[b"h2"])
        self.assertEqual(client.get_alpn_proto_negotiated(), b"")

    def test_resumption(self) -> None:
        """A session from one handshake resumes the next, also across an SNI switch."""
        creator = self.creator()
        for name in (None, b"a.example.org"):
            first = handshake(creator.serverConnectionForTLS(None), name=name)
            session = first.get_session()
            second = handshake(creator.serverConnectionForTLS(None), name=name, session=session,
                               context=first.get_context())
            self.assertTrue(reused(second), name)

    def test_rotation_ends_resumption(self) -> None:
        """After contexts are rebuilt (ticket key rotation), old sessions don't resume."""
        creator = self.creator()
        first = handshake(creator.serverConnectionForTLS(None))
        self.creator_reinstall(creator)
        second = handshake(creator.serverConnectionForTLS(None), session=first.get_session(),
                           context=first.get_context())
        self.assertFalse(reused(second))

    def creator_reinstall(self, creator: ServerTLS) -> None:
        www = self.material("www", ["www.example.com"], certs().rsa)
        creator.install(ServerSettings("web"), [www], "www")

    def test_tickets_off(self) -> None:
        """tls_session_tickets = false: no ticket, still resumption from the cache."""
        creator = self.creator(ServerSettings("web", session_tickets=False))
        server = creator.serverConnectionForTLS(None)
        first = handshake(server, max_version=SSL.TLS1_2_VERSION)
        # OpenSSL drops a cached session whose connection ends without a
        # close_notify; Twisted's loseConnection sends one.
        server.shutdown()
        session = first.get_session()
        second = handshake(creator.serverConnectionForTLS(None), session=session,
                           context=first.get_context())
        self.assertTrue(reused(second))

    def test_ocsp_staple_per_certificate(self) -> None:
        """Each certificate gets its own OCSP response stapled."""
        rsa = ocsp_response(certs().rsa, certs().ca, NOW + datetime.timedelta(days=1))
        ec = ocsp_response(certs().ecdsa, certs().ca, NOW + datetime.timedelta(days=1))
        creator = ServerTLS("web")
        cert, key = self.leaf("r", certs().rsa)
        alt_cert, alt_key = self.leaf("e", certs().ecdsa)
        files = self.site_files(cert=cert, key=key, ocsp=self.write("r.ocsp", rsa),
                                alt_cert=alt_cert, alt_key=alt_key, alt_ocsp=self.write("e.ocsp", ec))
        material, _ = load_site("www", ["www.example.com"], files, NOW.timestamp())
        creator.install(ServerSettings("web"), [material], "www")
        for cipher, expected in [(b"ECDHE-RSA-AES128-GCM-SHA256", rsa), (b"ECDHE-ECDSA-AES128-GCM-SHA256", ec)]:
            seen: list[bytes] = []
            handshake(creator.serverConnectionForTLS(None), max_version=SSL.TLS1_2_VERSION,
                      ciphers=cipher, ocsp_seen=seen)
            self.assertEqual(seen, [expected])

    def mtls(self, mode: str) -> ServerTLS:
        ca = x509.load_pem_x509_certificate(certs().ca.cert_pem.bytes())
        return self.creator(ServerSettings("web", client_auth=mode, client_ca=(ca,)))

    def test_mtls_required(self) -> None:
        """required: a good client certificate passes; none or a stranger's fails."""
        creator = self.mtls("required")
        server = creator.serverConnectionForTLS(None)
        handshake(server, client_cert=certs().client)
        subject = server.get_peer_certificate(as_cryptography=True).subject.rfc4514_string()
        self.assertIn("CN=client one", subject)
        for cert in (None, certs().stranger):
            server = creator.serverConnectionForTLS(None)
            try:
                handshake(server, client_cert=cert)
            except SSL.Error:
                continue
            self.assertIsNone(server.get_peer_certificate(), f"accepted {cert}")

    def test_mtls_optional(self) -> None:
        """optional: no certificate is fine, a bad one is refused."""
        creator = self.mtls("optional")
        server = creator.serverConnectionForTLS(None)
        handshake(server)
        self.assertIsNone(server.get_peer_certificate())
        self.assertRaises(SSL.Error, handshake, creator.serverConnectionForTLS(None),
                          client_cert=certs().stranger)

    def test_build_context_needs_certificate(self) -> None:
        """No certificate, no context: never an empty or default one."""
        from gateway.tls import TLSSetupError
        self.assertRaises(TLSSetupError, build_context, ServerSettings("web"), [])

    def test_not_installed(self) -> None:
        """A creator with nothing installed refuses connections rather than improvise."""
        from gateway.tls import TLSSetupError
        self.assertRaises(TLSSetupError, ServerTLS("web").serverConnectionForTLS, None)


class RequestPathHelperTests(SynchronousTestCase):
    """client_subject, client_header and hsts_header: what the request path calls."""

    def test_subject_not_tls(self) -> None:
        """A plain transport has no client subject."""
        self.assertIsNone(client_subject(StringTransport()))

    def test_subject_escaped(self) -> None:
        """Non-ASCII and control characters in a subject become RFC 4514 hex escapes."""
        from gateway.tls import _escape
        self.assertEqual(_escape("CN=Zoë\r\n"), b"CN=Zo\\C3\\AB\\0D\\0A")

    def test_client_header(self) -> None:
        """The header name comes lower-cased; empty turns it off."""
        self.assertEqual(client_header(ListenerConfig("w", "tcp:0")), b"x-client-subject")
        self.assertEqual(client_header(ListenerConfig("w", "tcp:0", tls_client_header="")), b"")

    def test_hsts_only_on_tls(self) -> None:
        """HSTS is sent on TLS listeners only (RFC 6797 §7.2), and only when set."""
        value = "max-age=63072000; includeSubDomains"
        self.assertEqual(hsts_header(ListenerConfig("w", "tcp:0", tls=True, hsts=value)), value.encode())
        self.assertIsNone(hsts_header(ListenerConfig("w", "tcp:0", tls=False, hsts=value)))
        self.assertIsNone(hsts_header(ListenerConfig("w", "tcp:0", tls=True)))


# -- reload -----------------------------------------------------------------------------


class CertificatesTests(FilesCase):
    """Certificates: start strict, reload per site, rotate and poll on the clock."""

    def setUp(self) -> None:
        super().setUp()
        self.leaf("www", certs().rsa)
        self.clock = MemoryReactorClock()
        self.config = simple_config(
            listener={"tls": True},
            tls_ticket_rotate=600.0,
            tls_reload_interval=5.0,
        )
        site = SiteConfig("www", ("www.example.com",), self.path("www.pem"), self.path("www.key"))
        from dataclasses import replace
        self.config = replace(self.config, sites=(site,))
        self.certificates = Certificates(self.clock, self.config)
        self.factory = self.certificates.wrap(self.config.listeners[0], object())  # type: ignore[arg-type]
        self.creator = self.certificates.creators["web"]

    def served_serial(self) -> int:
        client = handshake(self.creator.serverConnectionForTLS(None))
        return client.get_peer_certificate(as_cryptography=True).serial_number

    def test_wrap(self) -> None:
        """wrap() gives a TLS factory whose log prefix is one word."""
        self.assertIsInstance(self.factory, TLSServerFactory)
        self.assertEqual(self.factory.logPrefix(), "object+TLS")

    def test_start_refuses_broken(self) -> None:
        """A file that broke after the check refuses the start with the reason."""
        self.write("www.pem", b"junk")
        certificates = Certificates(self.clock, self.config)
        error = self.assertRaises(ConfigError, certificates.wrap, self.config.listeners[0], object())
        self.assertIn("[site:www] cert:", error.problems[0])

    def test_rotation(self) -> None:
        """Every tls_ticket_rotate the contexts are rebuilt."""
        self.certificates.start()
        self.addCleanup(self.certificates.stop)
        generation = self.creator.generation
        self.clock.advance(599)
        self.assertEqual(self.creator.generation, generation)
        self.clock.advance(1)
        self.assertEqual(self.creator.generation, generation + 1)

    def test_poll_picks_up_new_certificate(self) -> None:
        """A changed file is loaded at the next poll; new handshakes see it."""
        self.certificates.start()
        self.addCleanup(self.certificates.stop)
        before = self.served_serial()
        self.leaf("www", self.certs_new())
        os.utime(self.path("www.pem"), ns=(1, 1))
        self.clock.advance(5)
        self.assertNotEqual(self.served_serial(), before)

    def certs_new(self) -> trustme.LeafCert:
        return certs().ca.issue_cert("www.example.com", key_type=trustme.KeyType.RSA)

    def test_bad_reload_keeps_old(self) -> None:
        """A broken new file keeps the certificate in use, and says why."""
        before = self.served_serial()
        self.write("www.pem", b"junk")
        logged: list[dict] = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.certificates.reload("SIGHUP")
        self.assertEqual(self.served_serial(), before)
        messages = [e.get("log_format", "") for e in logged]
        self.assertTrue(any("keeps the certificate in use" in (e.get("what") or "") for e in logged), messages)

    def test_open_connection_survives_reload(self) -> None:
        """A connection made before a reload keeps working on its context."""
        server = self.creator.serverConnectionForTLS(None)
        client = handshake(server)
        self.leaf("www", self.certs_new())
        self.certificates.reload("SIGHUP")
        client.send(b"still here")
        server.bio_write(client.bio_read(1 << 16))
        self.assertEqual(server.recv(100), b"still here")


    def test_configuration_reload(self) -> None:
        """A reloaded configuration's sites are served by the listeners already open."""
        from dataclasses import replace
        before = self.served_serial()
        self.leaf("new", self.certs_new())
        site = SiteConfig("www", ("www.example.com",), self.path("new.pem"), self.path("new.key"))
        self.certificates.configure(replace(self.config, sites=(site,)))
        self.assertNotEqual(self.served_serial(), before)

    def test_sighup(self) -> None:
        """install_sighup: SIGHUP queues the callback through callFromThread; restore undoes it."""
        import signal
        from gateway.tlsreload import install_sighup

        queued: list[object] = []

        class Reactor:
            def callFromThread(self, f: object) -> None:
                queued.append(f)

        def callback() -> None:
            pass

        before = signal.getsignal(signal.SIGHUP)
        restore = install_sighup(Reactor(), callback)
        try:
            os.kill(os.getpid(), signal.SIGHUP)
        finally:
            restore()
        self.assertEqual(queued, [callback])
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
        self.assertEqual(install_sighup(object(), callback)(), None)  # no callFromThread: no-op


# -- upstream ---------------------------------------------------------------------------


class UpstreamCreatorTests(FilesCase):
    """tlsupstream: creators per settings, and failures that become failed connects."""

    def setUp(self) -> None:
        super().setUp()
        tlsupstream.clear_cache()
        self.addCleanup(tlsupstream.clear_cache)

    def test_cached(self) -> None:
        """The same settings give the same creator; a new name a new one."""
        cfg = simple_config(servers=2)
        backend = cfg.backends[0]
        one = tlsupstream.client_creator(backend.servers[0], backend)
        self.assertIs(tlsupstream.client_creator(backend.servers[0], backend), one)
        from dataclasses import replace
        other = tlsupstream.client_creator(backend.servers[0], replace(backend, tls_server_name="x.test"))
        self.assertIsNot(other, one)

    def test_bad_ca(self) -> None:
        """A CA bundle that can't be read raises UpstreamTLSError (a failed connect)."""
        from dataclasses import replace
        cfg = simple_config(servers=1)
        backend = replace(cfg.backends[0], tls_ca=self.path("missing.pem"))
        self.assertRaises(tlsupstream.UpstreamTLSError, tlsupstream.client_creator,
                          backend.servers[0], backend)

    def test_pool_connects_with_tls(self) -> None:
        """An https server is reached with TLS around the pool's attempt."""
        from dataclasses import replace
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from gateway.upstream import ServerPool
        cfg = simple_config(servers=1)
        backend = cfg.backends[0]
        server = replace(backend.servers[0], scheme="https")
        clock = MemoryReactorClock()
        pool = ServerPool(clock, server, backend)
        pool._connect(None)
        host, port, factory, timeout, _ = clock.tcpClients[0]
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertEqual((host, port), ("127.0.0.1", 9001))

    def test_pool_bad_settings_fail_connect(self) -> None:
        """Unusable TLS settings fail the connect (502 material), logged, nothing raised."""
        from dataclasses import replace
        from gateway.upstream import ServerPool
        cfg = simple_config(servers=1)
        backend = replace(cfg.backends[0], tls_ca=self.path("missing.pem"))
        server = replace(backend.servers[0], scheme="https")
        clock = MemoryReactorClock()
        pool = ServerPool(clock, server, backend)
        failures: list[object] = []

        class Sink:
            def upstream_failed(self, error: object, *, before_response: bool) -> None:
                failures.append(error)

        pool.acquire(Sink())  # type: ignore[arg-type]
        self.assertEqual(clock.tcpClients, [])
        clock.advance(0)
        self.assertEqual(len(failures), 1)
        self.assertEqual(getattr(failures[0], "status", None), 502)
        self.assertEqual(pool.open, 0)


class _Recorder(Protocol):
    """One end of an in-memory connection: what reached it, and whether it was connected."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.made = False
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


class _Attempt:
    """The pool's connect attempt as the gate sees it: builds the request sender."""

    def __init__(self) -> None:
        self.inner = _Recorder(b"GET /secret HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        self.failed: list[Failure] = []

    def buildProtocol(self, addr: object) -> _Recorder:
        return self.inner

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.failed.append(reason)


class HandshakeGateTests(FilesCase):
    """tlsupstream.HandshakeGate over Twisted's real TLS protocol, both ends in memory."""

    def setUp(self) -> None:
        super().setUp()
        tlsupstream.clear_cache()
        self.addCleanup(tlsupstream.clear_cache)

    def connect(self, name: str) -> tuple[_Attempt, _Recorder]:
        """The gateway's TLS client for server name ``name`` against a server whose
        certificate is for www.example.com (signed by the CA in tls_ca); both ends."""
        from dataclasses import replace
        from twisted.internet.protocol import Factory
        from twisted.test.iosim import FakeTransport, connect

        c = certs()
        ca = self.write("ca.pem", c.ca.cert_pem.bytes())
        cfg = simple_config(servers=1)
        backend = replace(cfg.backends[0], tls_ca=ca, tls_server_name=name)
        server = replace(backend.servers[0], scheme="https")
        clock = MemoryReactorClock()
        attempt = _Attempt()
        client = tlsupstream.connect_factory(clock, attempt, server, backend).buildProtocol(None)
        origin = _Recorder()
        cert, key = self.leaf("www", c.rsa)
        material, _ = load_site("www", ["www.example.com"], self.site_files(cert=cert, key=key), NOW.timestamp())
        creator = ServerTLS("web")
        creator.install(ServerSettings("web"), [material], "www")
        listener = TLSServerFactory(creator, Factory.forProtocol(lambda: origin), clock)
        server_side = listener.buildProtocol(None)
        pump = connect(server_side, FakeTransport(server_side, True),
                       client, FakeTransport(client, False), greet=False, clock=clock)
        pump.flush()
        clock.advance(30)  # past timeout_connect: no timer may be left to fire
        pump.flush()
        return attempt, origin

    def test_wrong_name_is_a_failed_connect(self) -> None:
        """A certificate for another name fails the connect with the name error; the
        request sender is never connected and the server reads no application byte.

        On Twisted 25.5 the name is checked in an info callback that aborts the
        connection and then reports the handshake as completed anyway.
        """
        attempt, origin = self.connect("wrong.example.com")
        self.assertFalse(attempt.inner.made)
        self.assertIsNone(attempt.inner.lost)
        self.assertEqual(origin.received, b"")
        (failure,) = attempt.failed
        self.assertIsInstance(failure.value, tlsupstream.UpstreamTLSError)
        self.assertIn("is not valid for that name", str(failure.value))

    def test_right_name_goes_through(self) -> None:
        """With the certificate's name the request sender is connected and the server
        reads its bytes (so the test above would see them if they were sent)."""
        attempt, origin = self.connect("www.example.com")
        self.assertEqual(attempt.failed, [])
        self.assertTrue(attempt.inner.made)
        self.assertTrue(origin.received.startswith(b"GET /secret HTTP/1.1\r\n"), origin.received)


# -- redirect ---------------------------------------------------------------------------


def request(head: bytes):
    return parse_request(head, HeadLimits(max_line=8192, max_size=32768, max_count=100))


class RedirectTests(SynchronousTestCase):
    """redirect: where requests go, and the listener that sends them there."""

    def test_location(self) -> None:
        """Same host without port, same target with query; the port only when not 443."""
        req = request(b"GET /a/b?c=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n")
        self.assertEqual(location(req, 443), b"https://example.com/a/b?c=1")
        self.assertEqual(location(req, 8443), b"https://example.com:8443/a/b?c=1")
        ipv6 = request(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")
        self.assertEqual(location(ipv6, 443), b"https://[::1]/")
        absolute = request(b"GET http://h.test:80/p?q HTTP/1.1\r\nHost: h.test\r\n\r\n")
        self.assertEqual(location(absolute, 443), b"https://h.test/p?q")
        no_host = request(b"GET / HTTP/1.0\r\n\r\n")
        self.assertIsNone(location(no_host, 443))

    def test_status_by_method(self) -> None:
        """GET and HEAD get 301; other methods 308, which keeps method and body."""
        get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        post = request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(redirect_response(get, b"https://h/", server=b"", date=b"d", close=False)[0], 301)
        self.assertEqual(redirect_response(post, b"https://h/", server=b"", date=b"d", close=False)[0], 308)

    def connect(self, **listener: object) -> tuple[MemoryReactorClock, StringTransport, object]:
        from gateway.testing import Harness
        harness = Harness(simple_config(listener={"redirect_https": True, **listener}))
        client = harness.client()
        return harness.clock, client.transport, client.protocol

    def test_keep_alive_and_pipelining(self) -> None:
        """Two pipelined requests get two redirects on one connection."""
        _, transport, protocol = self.connect()
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        data = transport.value()
        self.assertEqual(data.count(b"HTTP/1.1 301 Moved Permanently\r\n"), 2)
        self.assertIn(b"Location: https://h/1\r\n", data)
        self.assertIn(b"Location: https://h/2\r\n", data)
        self.assertFalse(transport.disconnecting)

    def test_body_closes(self) -> None:
        """A request with a body is answered, then the connection closes."""
        _, transport, protocol = self.connect()
        protocol.dataReceived(b"POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        self.assertIn(b"308 Permanent Redirect", transport.value())
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_limits(self) -> None:
        """The listener's head limits apply: too many header bytes get 431."""
        _, transport, protocol = self.connect(max_header_size=1024)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(transport.disconnecting)

    def test_header_timeout(self) -> None:
        """A head that doesn't complete within timeout_header gets 408."""
        clock, transport, protocol = self.connect(timeout_header=2.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_idle_timeout(self) -> None:
        """An idle connection closes after timeout_idle."""
        clock, transport, _ = self.connect(timeout_idle=3.0)
        clock.advance(3)
        self.assertTrue(transport.disconnecting)

    def test_no_host(self) -> None:
        """Without a host there is nowhere to redirect: 400."""
        _, transport, protocol = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))


# -- the service ------------------------------------------------------------------------


class ServiceTests(FilesCase):
    """GatewayService makes TLS and redirect listeners from the configuration."""

    def test_listeners(self) -> None:
        """A TLS listener is wrapped and proxies as https; a redirect listener redirects."""
        from dataclasses import replace
        from gateway.config import ListenerConfig
        from gateway.service import GatewayService
        self.leaf("www", certs().rsa)
        base = simple_config()
        site = SiteConfig("www", ("www.example.com",), self.path("www.pem"), self.path("www.key"))
        listeners = (ListenerConfig("web", "tcp:0", tls=True), ListenerConfig("plain", "tcp:0", redirect_https=True))
        cfg = replace(base, listeners=listeners, sites=(site,))
        clock = MemoryReactorClock()
        service = GatewayService(clock, cfg)
        self.assertEqual([f.proto for f in service.factories], [b"https", b"http"])
        self.assertEqual(list(service.certificates.creators), ["web"])
        service.startService()
        factories = sorted(type(entry[1]).__name__ for entry in clock.tcpServers)
        self.assertEqual(factories, ["GatewayFactory", "TLSServerFactory"])
        service.stopService()
