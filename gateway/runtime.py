"""The live state the request path reads, derived from one :class:`Config`.

A :class:`Runtime` is built from a Config and swapped whole on reload. What must
outlive a reload is carried over from the previous Runtime by identity: a
server's state (in-flight count, health verdict) and its connection pool when
the server keeps its name and address, a backend's retry budget, the spool
budget, and the HTTP cache (:class:`gateway.cache.shared.SharedCache`) while
``cache_dir`` stays the same. Building a Runtime does no I/O; ``start()``
starts its health checks and loads the cache (first start only) and its
janitor; ``retire()`` ends what no successor took over.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from gateway.balancer import ISelector, ServerState, make_selector
from gateway.cache.route import RoutePolicy, route_policy
from gateway.cache.shared import SharedCache
from gateway.budget import RetryBudget
from gateway.config import BackendConfig, Config, GatewaySettings, ServerConfig
from gateway.headers import TrustedProxies
from gateway.health import HealthMonitor
from gateway.parser import HeadLimits
from gateway.routing import RouteTable
from gateway.spool import SpoolBudget, SpoolLimits
from gateway.spooling import SpoolSettings
from gateway.tls import client_header, hsts_header
from gateway.upstream import ServerPool

if TYPE_CHECKING:
    from gateway.upstream import Reactor


def _identity(server: ServerConfig) -> tuple[str, str, int]:
    """What makes two server configurations "the same server" across a reload."""
    return server.name, server.host, server.port


class BackendRuntime:
    """One backend's shared state: selector, pools, retry budget and health checks."""

    def __init__(
        self, reactor: Reactor, config: BackendConfig, previous: BackendRuntime | None = None
    ) -> None:
        self.config = config
        old_states = {}
        old_pools = {}
        if previous is not None:
            old_states = {_identity(s.config): s for s in previous.selector.servers}
            old_pools = {_identity(p.server): p for p in previous.pools.values()}
        states = []
        self.pools: dict[str, ServerPool] = {}
        for server in config.servers:
            state = old_states.get(_identity(server))
            if state is None:
                state = ServerState(server)
            else:
                state.config = server
                state.weight = server.weight
            states.append(state)
            pool = old_pools.get(_identity(server))
            if pool is None:
                pool = ServerPool(reactor, server, config)
            else:
                pool.server, pool.backend = server, config
            self.pools[server.name] = pool
        self.selector: ISelector = make_selector(config, states=states)
        budget = previous.budget if previous is not None else None
        if budget is None or (budget.ratio, budget.minimum, budget.window) != (
            config.retry_budget,
            config.retry_budget_min,
            config.retry_window,
        ):
            budget = RetryBudget(config.retry_budget, config.retry_budget_min, config.retry_window)
        self.budget = budget
        self.health = HealthMonitor(reactor, config, self.selector.servers, self.selector)

    def retire(self, successor: BackendRuntime | None) -> None:
        """Stop checks, and close idle connections no successor pool took over."""
        self.health.stop()
        kept = set() if successor is None else {id(p) for p in successor.pools.values()}
        for pool in self.pools.values():
            if id(pool) not in kept:
                pool.close_idle()


def spool_directory(settings: GatewaySettings) -> str:
    """``spool_dir``, or ``gateway-spool`` in the system's temporary directory."""
    return settings.spool_dir or os.path.join(tempfile.gettempdir(), "gateway-spool")


def _spool_settings(settings: GatewaySettings, previous: Runtime | None) -> SpoolSettings:
    """Spool limits from ``settings``; the budget (bytes held now) outlives reloads."""
    if previous is None:
        budget = SpoolBudget(settings.spool_memory, settings.spool_disk)
    else:
        budget = previous.spooling.budget
        budget.memory_limit = settings.spool_memory
        budget.disk_limit = settings.spool_disk
    limits = SpoolLimits(memory=settings.spool_buffer, max_size=settings.spool_max)
    return SpoolSettings(budget, limits, spool_directory(settings))


def _shared_cache(
    reactor: Reactor, settings: GatewaySettings, previous: Runtime | None
) -> SharedCache | None:
    """The cache for ``cache_dir`` (None when empty); the previous one if it is the same directory."""
    if not settings.cache_dir:
        return None
    old = previous.cache if previous is not None else None
    if old is not None and old.serves(settings):
        old.configure(settings)
        return old
    return SharedCache(reactor, settings)


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
        #: Per listener: the client-subject header (lower-cased, as configured).
        self.subject_headers = {
            listener.name: (client_header(listener), listener.tls_client_header.encode("ascii"))
            for listener in config.listeners
        }
        #: Per listener: the Strict-Transport-Security value, or None.
        self.hsts = {listener.name: hsts_header(listener) for listener in config.listeners}
        self.spooling = _spool_settings(settings, previous)
        #: The process's HTTP cache, or None when ``cache_dir`` is empty.
        self.cache = _shared_cache(reactor, settings, previous)
        #: Per caching route (``cache = true``) by name: how it caches.
        self.cache_policies: dict[str, RoutePolicy] = {
            route.name: route_policy(route, settings) for route in config.routes if route.cache
        }
        #: Peers allowed to send PURGE (``cache_purge_from``).
        self.purge_from = TrustedProxies(settings.cache_purge_from)
        old = previous.backends if previous is not None else {}
        self.backends: dict[str, BackendRuntime] = {
            backend.name: BackendRuntime(reactor, backend, old.get(backend.name))
            for backend in config.backends
        }

    def start(self) -> None:
        """Start every backend's health checks, and the cache (index load, janitor)."""
        for backend in self.backends.values():
            backend.health.start()
        if self.cache is not None:
            self.cache.start()

    def retire(self, successor: Runtime | None) -> None:
        """Stop this runtime's checks, close idle connections the successor dropped,
        and stop the cache's janitor unless the successor took the cache over."""
        for name, backend in self.backends.items():
            backend.retire(None if successor is None else successor.backends.get(name))
        cache = self.cache
        if cache is not None and (successor is None or successor.cache is not cache):
            cache.stop()
