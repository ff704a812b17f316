"""Pure per-route cache settings: what one caching route's configuration means to the cache.

Invariants:

- Built once per :class:`~gateway.config.RouteConfig` when a Runtime is built
  (:func:`route_policy`), never per request; frozen.
- Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.compat import SLOTS
from gateway.cache.keys import KeyRules
from gateway.cache.policy import CacheRules, target_list
from gateway.cache.status import Forward, cache_status
from gateway.config import GatewaySettings, RouteConfig

__all__ = ["RoutePolicy", "route_policy"]


@dataclass(frozen=True, **SLOTS)
class RoutePolicy:
    """How one route caches.

    - ``keys``: how requests become primary keys (``cache_key_*``).
    - ``rules``: the RFC 9111 knobs (targeted fields, Set-Cookie, heuristic
      cap, default stale-if-error window).
    - ``status_name``: the cache's name in ``Cache-Status``, or None when the
      route sends no ``Cache-Status`` (``cache_status = false``).
    - ``collapse_timeout``: how long a request waits for another request's
      response to the same key (0: never waits).
    - ``own_field``: the gateway's own targeted field (lower case) or None; it
      is kept in 304s answered from the cache beside ``CDN-Cache-Control``.
    """

    keys: KeyRules
    rules: CacheRules
    status_name: bytes | None
    collapse_timeout: float
    own_field: bytes | None = None

    def status(
        self,
        *,
        hit: bool = False,
        fwd: Forward | None = None,
        fwd_status: int | None = None,
        ttl: float | None = None,
        stored: bool = False,
        collapsed: bool | None = None,
        detail: bytes | None = None,
    ) -> bytes | None:
        """The route's ``Cache-Status`` member for what happened, or None if it sends none."""
        if self.status_name is None:
            return None
        return cache_status(
            self.status_name, hit=hit, fwd=fwd, fwd_status=fwd_status, ttl=ttl, stored=stored,
            collapsed=collapsed, detail=detail,
        )  # fmt: skip


def route_policy(route: RouteConfig, settings: GatewaySettings) -> RoutePolicy:
    """The :class:`RoutePolicy` of a caching route under process settings ``settings``."""
    own = route.cache_target_field.encode("ascii").lower() or None
    return RoutePolicy(
        keys=KeyRules(
            sort_query=route.cache_key_sort_query,
            drop_params=frozenset(p.encode("ascii") for p in route.cache_key_drop_params),
        ),
        rules=CacheRules(
            targets=target_list(own),
            store_set_cookie=route.cache_store_set_cookie,
            heuristic_max=route.cache_heuristic_max,
            default_stale_if_error=route.cache_stale_if_error,
        ),
        status_name=settings.cache_status_name.encode("ascii") if route.cache_status else None,
        collapse_timeout=route.cache_collapse_timeout,
        own_field=own,
    )
