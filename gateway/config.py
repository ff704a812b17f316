"""INI configuration, parsed once into frozen values.

The running configuration is one immutable :class:`Config`; the service swaps it
whole on reload, so nothing may copy a value out of it where a swap can't reach.
Section kinds follow HAProxy's model: ``[gateway]`` (process-wide), ``[defaults]``
(default values for every listener and backend key), ``[listener:NAME]``,
``[route:NAME]``, ``[backend:NAME]``, ``[server:NAME]`` and ``[demo:NAME]``.

Durations are in seconds unless suffixed (``500ms``, ``10s``, ``2m``, ``1h``);
sizes are in bytes unless suffixed (``64k``, ``1m``, ``1g``, powers of 1024).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Process-wide settings: the ``[gateway]`` section."""

    access_log: bool = True
    server_header: str = "gateway"
    via_pseudonym: str = "gateway"
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[route:NAME]``: which requests go to which backend; first match wins."""

    name: str
    backend: str
    host: str = ""
    path_prefix: str = "/"
    listeners: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One ``[server:NAME]``: an origin server inside a backend."""

    name: str
    backend: str
    scheme: str
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One ``[backend:NAME]``: a pool of servers, how to pick one, and upstream limits."""

    name: str
    servers: tuple[ServerConfig, ...] = ()
    balance: str = "roundrobin"
    host_header: str = ""
    timeout_connect: float = 5.0
    timeout_response: float = 60.0
    timeout_read: float = 60.0
    pool_max_idle: int = 32
    pool_idle_timeout: float = 60.0
    pool_max_conns: int = 256
    queue_size: int = 1024
    timeout_queue: float = 5.0


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """One ``[demo:NAME]``: a tiny built-in origin that answers with its own name."""

    name: str
    bind: str


@dataclass(frozen=True, slots=True)
class Config:
    """The whole running configuration; swapped as one value on reload."""

    source: str
    gateway: GatewaySettings = GatewaySettings()
    listeners: tuple[ListenerConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    backends: tuple[BackendConfig, ...] = ()
    demos: tuple[DemoConfig, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def backend(self, name: str) -> BackendConfig:
        """The backend called ``name``; the loader guarantees every reference exists."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)
