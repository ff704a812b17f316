"""TLS files: certificates, keys, chains, CA bundles and OCSP responses, read and checked.

Each loader returns checked values or raises :class:`MaterialError` listing
every problem as ``(key, message)``, the key being the configuration key that
named the file.  Warnings (an expired certificate, a name it doesn't cover, a
stale OCSP response) come back beside the values: they don't stop anything.

The loaders are used twice: by the configuration check
(:mod:`gateway.tlsconfig`), so that a broken file fails ``check`` and start
with ``FILE:LINE``, and by the live TLS code on start and reload
(:mod:`gateway.tlsreload`), which keeps what it has when a new file fails.
Values are kept in memory, so a context is always built from exactly what was
checked, never from a file that changed since.

Invariants: no reactor, no sockets; reads only the files it is given; files
are PEM, except OCSP responses, which are DER as OCSP responders serve them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp

#: What a problem or a warning is: the key naming the file, and the message.
Finding = tuple[str, str]

#: Private keys a certificate can be served with (what pyOpenSSL can load).
#: (``Union``, not ``|``: evaluated at import, and Python 3.9 has no ``|`` on classes.)
ServableKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]
_SERVABLE = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class MaterialError(Exception):
    """Files that can't be used: every problem as ``(key, message)``."""

    def __init__(self, problems: Iterable[Finding]) -> None:
        self.problems: tuple[Finding, ...] = tuple(problems)
        super().__init__("; ".join(f"{key}: {message}" for key, message in self.problems))


class _Unusable(Exception):
    """One file can't be used; the message says why (internal)."""


@dataclass(frozen=True, eq=False)
class CertKey:
    """A certificate with its private key, its chain and an optional OCSP response."""

    cert: x509.Certificate
    key: ServableKey
    chain: tuple[x509.Certificate, ...]
    ocsp: bytes
    key_type: str

    def chain_pem(self) -> bytes:
        """The certificate then its chain, PEM: what the server sends."""
        encoding = serialization.Encoding.PEM
        return b"".join(c.public_bytes(encoding) for c in (self.cert, *self.chain))


@dataclass(frozen=True, eq=False)
class SiteMaterial:
    """One ``[site:NAME]`` loaded: its names and one or two certificates."""

    name: str
    names: tuple[str, ...]
    pairs: tuple[CertKey, ...]


#: A site's file keys, as (certificate, key, chain, OCSP) for each of its two slots.
SITE_SLOTS = (("cert", "key", "chain", "ocsp"), ("alt_cert", "alt_key", "alt_chain", "alt_ocsp"))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise _Unusable(f"cannot read {path}: {exc.strerror or exc}") from None


def read_certificates(path: str) -> list[x509.Certificate]:
    """Every PEM certificate in the file at ``path``, in order; at least one."""
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise _Unusable(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def read_key(path: str) -> ServableKey:
    """The unencrypted PEM private key in the file at ``path``, of a type TLS can sign with."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _Unusable(f"{path} holds an encrypted key; allowed: an unencrypted PEM key") from None
    except Exception as exc:  # ValueError, UnsupportedAlgorithm: any unusable key
        raise _Unusable(f"{path} holds no PEM private key ({exc})") from None
    if not isinstance(key, _SERVABLE):
        raise _Unusable(f"{path} holds a {key_type(key)} key; allowed: RSA, ECDSA, Ed25519, Ed448, DSA")
    return key


def key_type(key: object) -> str:
    """``RSA``, ``ECDSA``, ``Ed25519``, ... for a private or public key."""
    kinds = (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "ECDSA"),
        ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "Ed25519"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "DSA"),
    )
    for classes, name in kinds:
        if isinstance(key, classes):
            return name
    return type(key).__name__


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc)


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName DNS names, lower-cased ([] without the extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def covers(patterns: Sequence[str], name: str) -> bool:
    """Whether a certificate with DNS ``patterns`` is valid for ``name`` (RFC 6125 §6.4.3).

    A wildcard ``*.example.com`` stands for exactly one label; a configured
    wildcard name is covered only by the same wildcard.
    """
    name = name.lower().removesuffix(".")
    for pattern in patterns:
        if pattern == name:
            return True
        if pattern.startswith("*.") and not name.startswith("*."):
            label, dot, rest = name.partition(".")
            if dot and label and rest == pattern[2:]:
                return True
    return False


def _pair(
    files: Mapping[str, str], slot: tuple[str, str, str, str], names: Sequence[str], now: float
) -> tuple[CertKey | None, list[Finding], list[Finding]]:
    """One certificate slot of a site: ``(pair or None, problems, warnings)``."""
    cert_key, key_key, chain_key, ocsp_key = slot
    problems: list[Finding] = []
    warnings: list[Finding] = []
    certs: list[x509.Certificate] = []
    key: ServableKey | None = None
    chain: list[x509.Certificate] = []
    response = b""
    for which in (cert_key, key_key, chain_key):
        if not files.get(which):
            continue
        try:
            if which == key_key:
                key = read_key(files[which])
            elif which == cert_key:
                certs = read_certificates(files[which])
            else:
                chain = read_certificates(files[which])
        except _Unusable as exc:
            problems.append((which, str(exc)))
    if not certs or key is None:
        return None, problems, warnings
    leaf, chain = certs[0], certs[1:] + chain
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        problems.append((
            key_key,
            f"the key in {files[key_key]} does not match the certificate in {files[cert_key]}; "
            "allowed: the private key of that certificate",
        ))
        return None, problems, warnings
    if files.get(ocsp_key):
        try:
            response, found = _ocsp(files[ocsp_key], leaf, now)
            warnings += [(ocsp_key, message) for message in found]
        except _Unusable as exc:
            problems.append((ocsp_key, str(exc)))
    if problems:
        return None, problems, warnings
    warnings += [(cert_key, message) for message in certificate_warnings(leaf, chain, names, now)]
    return CertKey(leaf, key, tuple(chain), response, key_type(key)), problems, warnings


def certificate_warnings(
    leaf: x509.Certificate, chain: Sequence[x509.Certificate], names: Sequence[str], now: float
) -> list[str]:
    """What is legal but surely wrong: expired, not yet valid, names not covered, bad chain."""
    found: list[str] = []
    moment = _now(now)
    if leaf.not_valid_after_utc < moment:
        found.append(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > moment:
        found.append(f"certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    patterns = dns_names(leaf)
    missing = [name for name in names if not covers(patterns, name)]
    if missing:
        shown = ", ".join(patterns) or "no DNS names"
        found.append(
            f"certificate does not cover {', '.join(missing)} (it has {shown}); "
            "clients asking for those names will refuse it"
        )
    if chain and chain[0].subject != leaf.issuer:
        found.append(
            f"the chain's first certificate ({chain[0].subject.rfc4514_string()}) did not "
            f"issue the certificate (issuer {leaf.issuer.rfc4514_string()}); check the order"
        )
    return found


def _ocsp(path: str, leaf: x509.Certificate, now: float) -> tuple[bytes, list[str]]:
    """The DER OCSP response at ``path`` for ``leaf``, and warnings about it."""
    data = _read(path)
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise _Unusable(f"{path} holds no DER OCSP response") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Unusable(f"{path}: OCSP response status is {response.response_status.name}")
    if response.serial_number != leaf.serial_number:
        raise _Unusable(
            f"{path} is an OCSP response for another certificate (serial "
            f"{response.serial_number:x}, not {leaf.serial_number:x})"
        )
    warnings: list[str] = []
    if response.certificate_status is ocsp.OCSPCertStatus.REVOKED:
        warnings.append(f"{path} says the certificate is REVOKED")
    next_update = response.next_update_utc
    if next_update is not None and next_update < _now(now):
        warnings.append(f"{path} is stale: its next update was due {next_update:%Y-%m-%d %H:%M} UTC")
    return data, warnings


def load_site(
    name: str, names: Sequence[str], files: Mapping[str, str], now: float
) -> tuple[SiteMaterial, list[Finding]]:
    """A site's certificates, checked; ``(material, warnings)``.

    ``files`` maps the site's file keys (:data:`SITE_SLOTS`) to absolute
    paths, ``""`` for none.  The second certificate, if any, must use another
    key type than the first (RSA beside ECDSA): OpenSSL keeps one certificate
    per key type and picks the one the client's signature algorithms allow.

    :raises MaterialError: with every problem.
    """
    problems: list[Finding] = []
    warnings: list[Finding] = []
    pairs: list[CertKey] = []
    for slot in SITE_SLOTS:
        if not files.get(slot[0]) and not files.get(slot[1]):
            continue
        pair, found, warned = _pair(files, slot, names, now)
        problems += found
        warnings += warned
        if pair is not None:
            pairs.append(pair)
    if len(pairs) == 2 and pairs[0].key_type == pairs[1].key_type:
        problems.append((
            "alt_cert",
            f"cert and alt_cert are both {pairs[0].key_type}; allowed: two key types "
            "(RSA and ECDSA), one certificate each",
        ))
    if problems:
        raise MaterialError(problems)
    return SiteMaterial(name, tuple(names), tuple(pairs)), warnings


def load_ca_bundle(key: str, path: str) -> tuple[x509.Certificate, ...]:
    """The CA certificates in the PEM bundle at ``path``.

    :raises MaterialError: naming ``key`` if the file can't be read or holds none.
    """
    try:
        return tuple(read_certificates(path))
    except _Unusable as exc:
        raise MaterialError([(key, str(exc))]) from None


def load_client_pair(cert_key: str, key_key: str, files: Mapping[str, str]) -> CertKey:
    """A client certificate (with any chain in its file) and its key.

    :raises MaterialError: with every problem, named by ``cert_key``/``key_key``.
    """
    pair, problems, _ = _pair(files, (cert_key, key_key, "", ""), (), 0.0)
    if pair is None:
        raise MaterialError(problems)
    return pair


def signature(paths: Iterable[str]) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a file changes: ``(path, inode, size, mtime_ns)`` per path.

    A missing file shows as ``-1`` values, so that its return counts as a change.
    """
    found = []
    for path in sorted(set(p for p in paths if p)):
        try:
            info = os.stat(path)
        except OSError:
            found.append((path, -1, -1, -1))
        else:
            found.append((path, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)
