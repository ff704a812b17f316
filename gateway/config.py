"""INI configuration, parsed once into frozen values.

The running configuration is one immutable :class:`Config`; the service swaps it
whole on reload, so nothing may copy a value out of it where a swap can't reach.
Section kinds follow HAProxy's model: ``[gateway]`` (process-wide), ``[defaults]``
(default values for every listener and backend key), ``[listener:NAME]``,
``[route:NAME]``, ``[backend:NAME]``, ``[server:NAME]``, ``[demo:NAME]`` and
``[site:NAME]`` (a TLS site: host names and their certificates).

Durations are in seconds unless suffixed (``500ms``, ``10s``, ``2m``, ``1h``);
sizes are in bytes unless suffixed (``64k``, ``1m``, ``1g``, powers of 1024).

Loading (:func:`load`, :func:`loads`, :func:`quick`) checks every key against one
table per section kind, :data:`SECTION_KEYS` (the single source of truth for keys,
types, ranges and defaults, built from :mod:`gateway.configkeys`), then the rules
between keys, and raises every problem of a file at once as :class:`ConfigError`.
What loads may still carry warnings (:attr:`Config.warnings`: routes that can
never match, certificates that expired or don't cover their names).  No
reactor, no sockets; the only files read are the one loaded and the TLS files
it names (:mod:`gateway.tlsconfig`), whose paths are made absolute, relative
to the configuration file's directory.
"""

from __future__ import annotations

import configparser
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType
from typing import Any

from gateway.compat import SLOTS
from gateway import configkeys
from gateway.configkeys import Key, table
from gateway.configvalues import NAME
from gateway.inifile import Lines, Problems, parse, scan
from gateway.tlsconfig import tls_findings


@dataclass(frozen=True, **SLOTS)
class GatewaySettings:
    """Process-wide settings: the ``[gateway]`` section."""

    access_log: bool = True
    server_header: str = "gateway"
    via_pseudonym: str = "gateway"
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 0
    shutdown_grace: float = 10.0
    spool_dir: str = ""
    spool_memory: int = 64 * 1024 * 1024
    spool_disk: int = 1024 * 1024 * 1024
    spool_buffer: int = 64 * 1024
    spool_max: int = 1024 * 1024 * 1024
    tls_reload_interval: float = 0.0
    tls_ticket_rotate: float = 3600.0
    cache_dir: str = ""
    cache_max_size: int = 1024 * 1024 * 1024
    cache_max_object: int = 64 * 1024 * 1024
    cache_fsync: bool = False
    cache_hot_entries: int = 4096
    cache_purge_from: tuple[str, ...] = ()
    cache_status_name: str = "gateway"


@dataclass(frozen=True, **SLOTS)
class ListenerConfig:
    """One ``[listener:NAME]``: where clients connect and the limits they meet."""

    name: str
    bind: str
    max_request_line: int = 8192
    max_header_size: int = 32768
    max_header_count: int = 100
    max_body_size: int = 100 * 1024 * 1024
    max_connections: int = 10000
    timeout_header: float = 10.0
    timeout_idle: float = 60.0
    timeout_client: float = 60.0
    timeout_request: float = 300.0
    default_backend: str = ""
    tls: bool = False
    tls_sites: tuple[str, ...] = ()
    tls_default_site: str = ""
    tls_min_version: str = "1.2"
    tls_session_tickets: bool = True
    tls_client_auth: str = "off"
    tls_client_ca: str = ""
    tls_client_header: str = "X-Client-Subject"
    hsts: str = ""
    redirect_https: bool = False
    redirect_https_port: int = 443


@dataclass(frozen=True, **SLOTS)
class RouteConfig:
    """One ``[route:NAME]``: which requests go to which backend.

    A route matches when its host, its path condition, ``methods`` (empty: any)
    and ``header`` (empty: none) all hold; :mod:`gateway.routing` gives the
    order in which routes are tried.  The path condition is ``path_regex`` if
    set, else ``path_exact`` if set, else ``path_prefix``; the loader lets a
    file set only one of the three.  ``header`` is ``name`` or ``name: value``,
    the name in lower case.  The ``cache*`` keys turn the HTTP cache on for
    the route and tune it (:mod:`gateway.cache`; docs/cache.md).
    """

    name: str
    backend: str
    host: str = ""
    path_prefix: str = "/"
    listeners: tuple[str, ...] = ()
    path_exact: str = ""
    path_regex: str = ""
    methods: tuple[str, ...] = ()
    header: str = ""
    buffering: bool = True
    request_buffering: bool = False
    cache: bool = False
    cache_key_sort_query: bool = False
    cache_key_drop_params: tuple[str, ...] = ()
    cache_store_set_cookie: bool = False
    cache_status: bool = True
    cache_stale_if_error: float = 0.0
    cache_collapse_timeout: float = 5.0
    cache_target_field: str = ""
    cache_heuristic_max: float = 86400.0


@dataclass(frozen=True, **SLOTS)
class ServerConfig:
    """One ``[server:NAME]``: an origin server inside a backend.

    ``max_conns`` caps requests in flight to this server (0: only the pool's
    ``pool_max_conns`` applies); a ``backup`` server takes traffic only while
    every primary is down; a ``drain`` server gets no new requests.
    """

    name: str
    backend: str
    scheme: str
    host: str
    port: int
    weight: int = 1
    max_conns: int = 0
    backup: bool = False
    drain: bool = False


@dataclass(frozen=True, **SLOTS)
class BackendConfig:
    """One ``[backend:NAME]``: a pool of servers, how to pick one, and upstream limits."""

    name: str
    servers: tuple[ServerConfig, ...] = ()
    balance: str = "roundrobin"
    host_header: str = ""
    timeout_connect: float = 5.0
    timeout_response: float = 60.0
    timeout_read: float = 60.0
    pool_max_idle: int = 256
    pool_idle_timeout: float = 60.0
    pool_max_conns: int = 1024
    queue_size: int = 1024
    timeout_queue: float = 5.0
    hash_key: str = "client_ip"
    retries: int = 2
    retry_budget: float = 0.2
    retry_budget_min: int = 10
    retry_window: float = 10.0
    retry_after: float = 5.0
    check: str = "none"
    check_interval: float = 2.0
    check_timeout: float = 1.0
    check_rise: int = 2
    check_fall: int = 3
    check_method: str = "GET"
    check_path: str = "/"
    check_host: str = ""
    check_status: tuple[int, int] = (200, 399)
    check_body: str = ""
    eject_consecutive: int = 5
    eject_statuses: tuple[int, ...] = (502, 503, 504)
    eject_time: float = 30.0
    eject_time_max: float = 300.0
    eject_max_share: float = 0.5
    slow_start: float = 0.0
    tls_verify: bool = True
    tls_ca: str = ""
    tls_server_name: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""


@dataclass(frozen=True, **SLOTS)
class DemoConfig:
    """One ``[demo:NAME]``: a tiny built-in origin that answers with its own name."""

    name: str
    bind: str


@dataclass(frozen=True, **SLOTS)
class SiteConfig:
    """One ``[site:NAME]``: host names and the certificate(s) a TLS listener serves for them.

    ``names`` are DNS names and ``*.NAME`` wildcards, lower-cased.  Paths are
    absolute.  ``alt_*`` is an optional second certificate of another key type
    (ECDSA beside RSA) for the same names.
    """

    name: str
    names: tuple[str, ...]
    cert: str
    key: str
    chain: str = ""
    ocsp: str = ""
    alt_cert: str = ""
    alt_key: str = ""
    alt_chain: str = ""
    alt_ocsp: str = ""


@dataclass(frozen=True, **SLOTS)
class Config:
    """The whole running configuration; swapped as one value on reload."""

    source: str
    gateway: GatewaySettings = GatewaySettings()
    listeners: tuple[ListenerConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    backends: tuple[BackendConfig, ...] = ()
    demos: tuple[DemoConfig, ...] = ()
    sites: tuple[SiteConfig, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def backend(self, name: str) -> BackendConfig:
        """The backend called ``name``; the loader guarantees every reference exists."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)


class ConfigError(Exception):
    """Every problem found in one configuration, each a complete message.

    Each problem reads ``FILE:LINE [section] key: what is wrong; allowed: ...``
    (``-`` stands for the key when a problem concerns a whole section, and line
    0 for the whole file), so an operator can fix them all in one pass.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        """The problems, one per line."""
        return "\n".join(self.problems)


#: Keys that name one section's own resource and so can't come from [defaults].
IDENTITY_KEYS = frozenset({"bind"})

_LISTENER = table(ListenerConfig, configkeys.LISTENER, configkeys.REQUIRED_KEYS["listener"])
_BACKEND = table(BackendConfig, configkeys.BACKEND)

#: The single source of truth: section kind -> key -> how it parses, its default.
SECTION_KEYS: Mapping[str, Mapping[str, Key]] = MappingProxyType(
    {
        "gateway": table(GatewaySettings, configkeys.GATEWAY),
        "defaults": MappingProxyType(
            {k: v for k, v in {**_LISTENER, **_BACKEND}.items() if k not in IDENTITY_KEYS}
        ),
        "listener": _LISTENER,
        "route": table(RouteConfig, configkeys.ROUTE, configkeys.REQUIRED_KEYS["route"]),
        "backend": _BACKEND,
        "server": table(ServerConfig, configkeys.SERVER, configkeys.REQUIRED_KEYS["server"]),
        "demo": table(DemoConfig, configkeys.DEMO, configkeys.REQUIRED_KEYS["demo"]),
        "site": table(SiteConfig, configkeys.SITE, configkeys.REQUIRED_KEYS["site"]),
    }
)

#: Kinds written without a name (``[gateway]``); every other kind is ``kind:NAME``.
SINGLE_KINDS = frozenset({"gateway", "defaults"})
_KIND_FORMS = ", ".join(k if k in SINGLE_KINDS else f"{k}:NAME" for k in SECTION_KEYS)

def _read_section(
    section: str,
    items: Mapping[str, str],
    table: Mapping[str, Key],
    lines: Lines,
    problems: Problems,
) -> dict[str, Any]:
    """The section's keys parsed against ``table``; everything wrong is reported."""
    values: dict[str, Any] = {}
    for key, raw in items.items():
        if not key:
            continue  # "= value": configparser has reported the line
        where = lines.of(section, key)
        if key not in table:
            identity = section == "defaults" and key in IDENTITY_KEYS
            what = "is set per section, never in [defaults]" if identity else "unknown key"
            problems.add(where, section, key, f"{what}; allowed: {', '.join(table)}")
            continue
        try:
            values[key] = table[key].parser.parse(raw)
        except ValueError as exc:
            problems.add(where, section, key, str(exc))
    for key, spec in table.items():
        if spec.required and key not in items:
            problems.add(lines.of(section), section, key, "required key is missing")
    return values


def _sections(
    parser: configparser.ConfigParser, lines: Lines, problems: Problems
) -> dict[str, dict[str, dict[str, Any]]]:
    """kind -> NAME -> parsed values, for every well-formed section in file order."""
    found: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in SECTION_KEYS}
    for section in parser.sections():
        kind, colon, name = section.partition(":")
        where = lines.of(section)
        if kind not in SECTION_KEYS:
            message = f"unknown section kind {kind!r}; allowed: {_KIND_FORMS}"
            problems.add(where, section, "-", message)
        elif kind in SINGLE_KINDS and colon:
            problems.add(where, section, "-", f"[{kind}] takes no name; allowed: [{kind}]")
        elif kind not in SINGLE_KINDS and not (colon and NAME.match(name)):
            message = f"expected [{kind}:NAME], got {section!r}; allowed: NAME of [A-Za-z0-9_.-]+"
            problems.add(where, section, "-", message)
        else:
            items = dict(parser.items(section))
            table = SECTION_KEYS[kind]
            found[kind][name] = _read_section(section, items, table, lines, problems)
    return found


def _check_references(
    found: Mapping[str, Mapping[str, dict[str, Any]]], lines: Lines, problems: Problems
) -> None:
    """Every name refers to a section that exists; every backend has a server."""

    def missing(section: str, key: str, kind: str, name: str) -> None:
        allowed = ", ".join(found[kind]) or f"no [{kind}:NAME] section exists"
        message = f"no [{kind}:{name}] section; allowed: {allowed}"
        problems.add(lines.of(section, key), section, key, message)

    for name, values in found["route"].items():
        if "backend" in values and values["backend"] not in found["backend"]:
            missing(f"route:{name}", "backend", "backend", values["backend"])
        for listener in values.get("listeners", ()):
            if listener not in found["listener"]:
                missing(f"route:{name}", "listeners", "listener", listener)
    for name, values in found["server"].items():
        if "backend" in values and values["backend"] not in found["backend"]:
            missing(f"server:{name}", "backend", "backend", values["backend"])
    fallback = {"defaults": found["defaults"].get("", {})}
    fallback.update({f"listener:{name}": v for name, v in found["listener"].items()})
    for section, values in fallback.items():
        backend = values.get("default_backend", "")
        if backend and backend not in found["backend"]:
            missing(section, "default_backend", "backend", backend)
        for site in values.get("tls_sites", ()):
            if site not in found["site"]:
                missing(section, "tls_sites", "site", site)
        site = values.get("tls_default_site", "")
        if site and site not in found["site"]:
            missing(section, "tls_default_site", "site", site)
    used = {values.get("backend") for values in found["server"].values()}
    for name in found["backend"]:
        if name not in used:
            section = f"backend:{name}"
            message = f"no [server:NAME] has backend = {name}; allowed: at least one server"
            problems.add(lines.of(section), section, "servers", message)
    defaulted = [values.get("default_backend") for values in fallback.values()]
    routes = "at least one [route:NAME] section, or a listener's default_backend"
    for kind, allowed in [("listener", "at least one [listener:NAME] section"), ("route", routes)]:
        if not found[kind] and not (kind == "route" and any(defaulted)):
            problems.add(0, f"{kind}:*", "-", f"no {kind} is defined; allowed: {allowed}")
    binds: dict[str, str] = {}
    for kind in ("listener", "demo"):
        for name, values in found[kind].items():
            section, bind = f"{kind}:{name}", values.get("bind")
            if bind is not None and bind in binds:
                message = f"{bind!r} is bound by [{binds[bind]}]; allowed: one per endpoint"
                problems.add(lines.of(section, "bind"), section, "bind", message)
            elif bind is not None:
                binds[bind] = section


def _check_rules(
    found: Mapping[str, Mapping[str, dict[str, Any]]], lines: Lines, problems: Problems
) -> None:
    """Rules between keys (:func:`gateway.configkeys.cross_key_problems` and
    :func:`gateway.configkeys.cache_problems`)."""
    builtin = {key: spec.default for key, spec in _BACKEND.items()}
    settings = {key: spec.default for key, spec in SECTION_KEYS["gateway"].items()}
    found_problems = configkeys.cross_key_problems(found, builtin)
    found_problems += configkeys.cache_problems(found, settings)
    for section, key, message in found_problems:
        problems.add(lines.of(section, key), section, key, message)


def _resolve_paths(found: Mapping[str, Mapping[str, dict[str, Any]]], source: str) -> None:
    """Make every file path absolute, relative to the configuration file's directory."""
    base = os.path.dirname(os.path.abspath(source))
    keys = dict(configkeys.FILE_KEYS)
    keys["defaults"] = keys["listener"] + keys["backend"]
    for kind, names in keys.items():
        for values in found[kind].values():
            for key in names:
                if values.get(key):
                    values[key] = os.path.normpath(os.path.join(base, values[key]))


def _check_tls(
    found: Mapping[str, Mapping[str, dict[str, Any]]], lines: Lines, problems: Problems
) -> list[tuple[int, str]]:
    """TLS rules and files (:mod:`gateway.tlsconfig`); the warnings, with their lines."""
    listener = {key: spec.default for key, spec in _LISTENER.items()}
    backend = {key: spec.default for key, spec in _BACKEND.items()}
    found_problems, found_warnings = tls_findings(found, listener, backend, time.time())
    for section, key, message in found_problems:
        problems.add(lines.of(section, key), section, key, message)
    warnings: list[tuple[int, str]] = []
    for section, key, message in found_warnings:
        line = lines.of(section, key)
        text = f"{problems.source}:{line} [{section}] {key}: {message}"
        if (line, text) not in warnings:
            warnings.append((line, text))
    return warnings


def _route_warnings(source: str, config: Config, lines: Lines) -> tuple[str, ...]:
    """``FILE:LINE [route:NAME] -: never matches: ...`` for each shadowed route."""
    # Imported here: gateway.routing builds on this module's RouteConfig.
    from gateway.routing import shadowed

    listeners = [listener.name for listener in config.listeners]
    warnings: list[str] = []
    for route, earlier in shadowed(config.routes, listeners):
        line, first = lines.of(f"route:{route.name}"), lines.of(f"route:{earlier.name}")
        warnings.append(
            f"{source}:{line} [route:{route.name}] -: never matches: "
            f"shadowed by [route:{earlier.name}] (line {first})"
        )
    return tuple(warnings)


def _assemble(source: str, found: Mapping[str, Mapping[str, dict[str, Any]]]) -> Config:
    """Frozen values from checked sections; [defaults] fills what a section leaves out."""
    defaults = found["defaults"].get("", {})

    def inherit(kind: str, values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in defaults.items() if k in SECTION_KEYS[kind]} | values

    servers: list[ServerConfig] = []
    for name, values in found["server"].items():
        kwargs = dict(values)
        scheme, host, port = kwargs.pop("address")
        server = ServerConfig(name=name, scheme=scheme, host=host, port=port, **kwargs)
        servers.append(server)
    return Config(
        source=source,
        gateway=GatewaySettings(**found["gateway"].get("", {})),
        listeners=tuple(
            ListenerConfig(name=name, **inherit("listener", values))
            for name, values in found["listener"].items()
        ),
        routes=tuple(
            RouteConfig(name=name, **values) for name, values in found["route"].items()
        ),
        backends=tuple(
            BackendConfig(
                name=name,
                servers=tuple(s for s in servers if s.backend == name),
                **inherit("backend", values),
            )
            for name, values in found["backend"].items()
        ),
        demos=tuple(DemoConfig(name=name, **values) for name, values in found["demo"].items()),
        sites=tuple(SiteConfig(name=name, **values) for name, values in found["site"].items()),
    )


def loads(text: str, source: str) -> Config:
    """The configuration in ``text``; ``source`` names it in error messages.

    :raises ConfigError: with every problem in the text, in line order.
    """
    problems = Problems(source)
    lines = scan(text, problems)
    parser = parse(text, source, lines, problems)
    if parser is None:
        # A failed parse has always recorded why.
        raise ConfigError(problems.found())
    found = _sections(parser, lines, problems)
    _resolve_paths(found, source)
    _check_references(found, lines, problems)
    _check_rules(found, lines, problems)
    tls_warnings = _check_tls(found, lines, problems)
    if problems.found():
        raise ConfigError(problems.found())
    loaded = _assemble(source, found)
    warnings = _route_warnings(source, loaded, lines)
    warnings += tuple(text for _, text in sorted(tls_warnings, key=lambda pair: pair[0]))
    return replace(loaded, warnings=warnings)


def load(path: str) -> Config:
    """The configuration in the file at ``path`` (UTF-8, a BOM is tolerated).

    :raises ConfigError: if the file can't be read (line 0) or has problems.
    """
    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{path}:0 [*] -: cannot read the file: {reason}"]) from exc
    return loads(text, path)


def quick(listen: str, upstreams: Sequence[str], cache_dir: str | None = None) -> Config:
    """The configuration for ``--listen``/``--upstream`` (and ``--cache``) on the command line.

    It equals what :func:`loads` makes of one ``[listener:quick]`` binding
    ``listen``, one ``[route:quick]`` to ``[backend:quick]`` (round robin) and
    servers ``quick1``, ``quick2``, ... for ``upstreams`` (apart from ``source``),
    and its values are checked by the same parsers.  With ``cache_dir``, the
    route caches (``cache = true``) in that directory (``[gateway] cache_dir``,
    made absolute against the working directory).
    """
    source = "<command line>"
    problems: list[str] = []
    try:
        bind = SECTION_KEYS["listener"]["bind"].parser.parse(listen)
    except ValueError as exc:
        problems.append(f"{source}: --listen: {exc}")
    settings = GatewaySettings()
    if cache_dir is not None:
        try:
            directory = SECTION_KEYS["gateway"]["cache_dir"].parser.parse(cache_dir)
        except ValueError as exc:
            problems.append(f"{source}: --cache: {exc}")
        else:
            if directory:
                settings = replace(settings, cache_dir=os.path.abspath(directory))
            else:
                problems.append(f"{source}: --cache: missing; allowed: a directory path")
    servers: list[ServerConfig] = []
    for number, url in enumerate(upstreams, start=1):
        try:
            scheme, host, port = SECTION_KEYS["server"]["address"].parser.parse(url)
        except ValueError as exc:
            problems.append(f"{source}: --upstream: {exc}")
        else:
            servers.append(ServerConfig(f"quick{number}", "quick", scheme, host, port))
    if not upstreams:
        problems.append(f"{source}: --upstream: missing; allowed: one or more http://HOST:PORT")
    if problems:
        raise ConfigError(problems)
    return Config(
        source=source,
        gateway=settings,
        listeners=(ListenerConfig(name="quick", bind=bind),),
        routes=(RouteConfig(name="quick", backend="quick", cache=bool(settings.cache_dir)),),
        backends=(BackendConfig(name="quick", servers=tuple(servers)),),
    )


def default_path() -> str:
    """The packaged default configuration, ``gateway/data/default.ini``."""
    return str(resources.files("gateway") / "data" / "default.ini")
