"""The configuration loader's TLS rules: keys that go together, and files that must work.

:mod:`gateway.config` calls :func:`tls_findings` once every section has parsed
and every file path has been made absolute.  It returns problems (the file is
refused) and warnings (it loads, but something is surely not meant), each as
``(section, key, message)``; the loader adds ``FILE:LINE``.

Fail closed: every certificate, key, chain, CA bundle and OCSP response named
anywhere is read and checked here (:mod:`gateway.tlsfiles`), so a file that
can't be used stops ``check`` and start, never the first handshake.

Invariants: no reactor, no sockets; the files named in the configuration are
the only files read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.configkeys import LISTENER_TLS_KEYS
from gateway.tlsfiles import MaterialError, load_ca_bundle, load_client_pair, load_site

Found = Mapping[str, Mapping[str, Mapping[str, Any]]]
Finding = tuple[str, str, str]

_LEGACY = ("1.0", "1.1")
_BACKEND_TLS_KEYS = ("tls_verify", "tls_ca", "tls_server_name", "tls_client_cert", "tls_client_key")


def effective(found: Found, kind: str, name: str, builtin: Mapping[str, Any]) -> dict[str, Any]:
    """A section's values: its own, else [defaults], else built in."""
    defaults = found["defaults"].get("", {})
    inherited = {key: value for key, value in defaults.items() if key in builtin}
    return {**builtin, **inherited, **found[kind][name]}


def _blame(section: str, own: Mapping[str, Any], key: str) -> tuple[str, str]:
    """Where to report a problem with ``key``: the section if it sets it, else [defaults]."""
    return (section, key) if key in own else ("defaults", key)


def served_sites(values: Mapping[str, Any], found: Found) -> tuple[str, ...]:
    """The sites a TLS listener serves: ``tls_sites``, or every site when empty."""
    return tuple(values["tls_sites"]) or tuple(found["site"])


def tls_findings(
    found: Found,
    listener_builtin: Mapping[str, Any],
    backend_builtin: Mapping[str, Any],
    now: float,
) -> tuple[list[Finding], list[Finding]]:
    """``(problems, warnings)`` for every TLS key and file in ``found``."""
    problems: list[Finding] = []
    warnings: list[Finding] = []
    _listeners(found, listener_builtin, problems, warnings)
    _sites(found, problems, warnings, now)
    _backends(found, backend_builtin, problems, warnings)
    return problems, warnings


def _listeners(
    found: Found, builtin: Mapping[str, Any], problems: list[Finding], warnings: list[Finding]
) -> None:
    for name, own in found["listener"].items():
        section = f"listener:{name}"
        values = effective(found, "listener", name, builtin)
        bind = str(values.get("bind", ""))
        if bind.startswith("ssl:"):
            warnings.append((section, "bind", (
                "an ssl: endpoint gets Twisted's TLS defaults, not the gateway's (no SNI, "
                "ALPN, reload or mTLS); use a tcp: bind with tls = true"
            )))
        if "redirect_https_port" in own and not values["redirect_https"]:
            problems.append((section, "redirect_https_port", (
                "only used on a redirecting listener; allowed: redirect_https = true"
            )))
        if not values["tls"]:
            for key in LISTENER_TLS_KEYS:
                if key in own:
                    problems.append((section, key, "only used on a TLS listener; allowed: tls = true"))
            continue
        if bind.startswith("ssl:"):
            problems.append((section, "tls", (
                "bind is an ssl: endpoint, which already does TLS; allowed: a tcp: or unix: "
                "bind with tls = true"
            )))
        if values["redirect_https"]:
            problems.append((*_blame(section, own, "redirect_https"), (
                "a TLS listener can't redirect to HTTPS; allowed: redirect_https on a plain listener"
            )))
        sites = served_sites(values, found)
        if not sites:
            problems.append((section, "tls", (
                "no [site:NAME] section, so there is no certificate to serve; allowed: at least "
                "one [site:NAME] with names, cert and key"
            )))
        default = values["tls_default_site"]
        if default and sites and default not in sites:
            problems.append((*_blame(section, own, "tls_default_site"), (
                f"[site:{default}] is not among this listener's sites; allowed: {', '.join(sites)}"
            )))
        if values["tls_client_auth"] != "off" and not values["tls_client_ca"]:
            problems.append((*_blame(section, own, "tls_client_auth"), (
                f"tls_client_auth = {values['tls_client_auth']} needs the CAs that sign client "
                "certificates; allowed: tls_client_ca = a PEM bundle"
            )))
        if values["tls_min_version"] in _LEGACY:
            warnings.append((*_blame(section, own, "tls_min_version"), (
                f"TLS {values['tls_min_version']} is enabled: it is deprecated (RFC 8996) and "
                "needs weaker ciphers; allowed but not safe"
            )))
        claimed: dict[str, str] = {}
        for site in sites:
            for host in found["site"].get(site, {}).get("names", ()):
                if host in claimed and claimed[host] != site:
                    problems.append((f"site:{site}", "names", (
                        f"{host} is also served by [site:{claimed[host]}] on [listener:{name}]; "
                        "allowed: each name in one site per listener (put an ECDSA and an RSA "
                        "certificate in one site with alt_cert)"
                    )))
                claimed.setdefault(host, site)
        if values["tls_client_ca"]:
            try:
                load_ca_bundle("tls_client_ca", values["tls_client_ca"])
            except MaterialError as exc:
                for key, message in exc.problems:
                    problems.append(_blame(section, own, key) + (message,))


def _sites(found: Found, problems: list[Finding], warnings: list[Finding], now: float) -> None:
    for name, values in found["site"].items():
        section = f"site:{name}"
        pairing = [("alt_cert", "alt_key"), ("alt_key", "alt_cert")]
        incomplete = False
        for key, other in pairing:
            if values.get(key) and not values.get(other):
                incomplete = True
                problems.append((section, key, f"set without {other}; allowed: both or neither"))
        for key in ("alt_chain", "alt_ocsp"):
            if values.get(key) and not values.get("alt_cert"):
                problems.append((section, key, "set without alt_cert; allowed: alt_cert first"))
        if incomplete or "cert" not in values or "key" not in values:
            continue
        try:
            _, warned = load_site(name, values.get("names", ()), values, now)
        except MaterialError as exc:
            problems += [(section, key, message) for key, message in exc.problems]
            continue
        warnings += [(section, key, message) for key, message in warned]


def _backends(
    found: Found, builtin: Mapping[str, Any], problems: list[Finding], warnings: list[Finding]
) -> None:
    https = {
        values.get("backend")
        for values in found["server"].values()
        if values.get("address", ("",))[0] == "https"
    }
    for name, own in found["backend"].items():
        section = f"backend:{name}"
        values = effective(found, "backend", name, builtin)
        if name not in https:
            # Most likely an address written http:// by mistake: traffic the
            # operator meant to encrypt would go in the clear.
            for key in _BACKEND_TLS_KEYS:
                if key in own:
                    problems.append((section, key, (
                        "no server of this backend has an https:// address, so this TLS "
                        "setting would be unused; allowed: address = https://HOST:PORT"
                    )))
            continue
        if values["check"] == "http":
            # gateway.probe speaks plain HTTP over TCP: against a TLS port every
            # check fails and every server would be taken down.
            problems.append((*_blame(section, own, "check"), (
                f"check = http sends plain HTTP, but [backend:{name}] has https:// servers; "
                "allowed: check = tcp or none (checks over TLS are not supported)"
            )))
        if not values["tls_verify"]:
            warnings.append((*_blame(section, own, "tls_verify"), (
                "tls_verify = false: the servers' certificates are not checked, so anyone on "
                "the path can impersonate them"
            )))
        cert, key = values["tls_client_cert"], values["tls_client_key"]
        if bool(cert) != bool(key):
            missing = "tls_client_key" if cert else "tls_client_cert"
            present = "tls_client_cert" if cert else "tls_client_key"
            problems.append((*_blame(section, own, present), (
                f"set without {missing}; allowed: both or neither"
            )))
        elif cert:
            try:
                load_client_pair("tls_client_cert", "tls_client_key", values)
            except MaterialError as exc:
                problems += [_blame(section, own, k) + (m,) for k, m in exc.problems]
        if values["tls_ca"]:
            try:
                load_ca_bundle("tls_ca", values["tls_ca"])
            except MaterialError as exc:
                problems += [_blame(section, own, k) + (m,) for k, m in exc.problems]
