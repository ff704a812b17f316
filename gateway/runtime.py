"""The live state the request path reads, derived from one :class:`Config`.

A :class:`Runtime` is built from a Config and swapped whole on reload. Per-backend
state (selector with its in-flight counts, connection pools) is carried over to
the new Runtime when the backend's server list is unchanged, so a reload neither
drops pooled connections nor forgets load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.balancer import ISelector, make_selector
from gateway.config import BackendConfig, Config
from gateway.headers import TrustedProxies
from gateway.parser import HeadLimits
from gateway.routing import RouteTable
from gateway.upstream import ServerPool

if TYPE_CHECKING:
    from gateway.upstream import Reactor


class BackendRuntime:
    """One backend's shared state: its selector and one pool per server."""

    def __init__(self, reactor: Reactor, config: BackendConfig) -> None:
        self.config = config
        self.selector: ISelector = make_selector(config)
        self.pools: dict[str, ServerPool] = {
            server.name: ServerPool(reactor, server, config) for server in config.servers
        }

    def reconfigure(self, config: BackendConfig) -> None:
        """Point every pool at the new limits (same servers, new settings)."""
        self.config = config
        for pool in self.pools.values():
            pool.backend = config

    def close_idle(self) -> None:
        """Close idle upstream connections (shutdown, or the backend was removed)."""
        for pool in self.pools.values():
            pool.close_idle()


class Runtime:
    """Routing tables, backends and header settings for one configuration."""

    def __init__(self, reactor: Reactor, config: Config, previous: Runtime | None = None) -> None:
        self.config = config
        settings = config.gateway
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.via = settings.via_pseudonym.encode("ascii")
        self.server_header = settings.server_header.encode("latin-1")
        self.access_log = settings.access_log
        self.routes = {
            listener.name: RouteTable(config.routes, listener.name, listener.default_backend)
            for listener in config.listeners
        }
        self.limits = {
            listener.name: HeadLimits(
                max_line=listener.max_request_line,
                max_size=listener.max_header_size,
                max_count=listener.max_header_count,
            )
            for listener in config.listeners
        }
        self.listeners = {listener.name: listener for listener in config.listeners}
        old = previous.backends if previous is not None else {}
        self.backends: dict[str, BackendRuntime] = {}
        for backend in config.backends:
            kept = old.get(backend.name)
            if kept is not None and kept.config.servers == backend.servers:
                kept.reconfigure(backend)
                self.backends[backend.name] = kept
            else:
                self.backends[backend.name] = BackendRuntime(reactor, backend)

    def retire(self, successor: Runtime) -> None:
        """Close idle connections of backends the successor no longer uses."""
        for name, backend in self.backends.items():
            if successor.backends.get(name) is not backend:
                backend.close_idle()

    def close_idle(self) -> None:
        """Close every idle upstream connection (shutdown)."""
        for backend in self.backends.values():
            backend.close_idle()
