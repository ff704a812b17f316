"""Pure server selection for one backend: which server takes the next request.

Invariants:

- One selector per backend per process, shared by every listener; the service
  builds it once per configuration and keeps it across connections, so its
  state (rotation, in-flight counts) spans all of them.
- ``ServerState.inflight`` counts live :class:`Lease` objects: a lease adds one
  when made and takes it back on its first ``release()`` only. Whoever picks a
  server releases the lease when the request is done, whatever the outcome.
- A selector never picks a server that is down or whose name is in
  ``exclude`` (the servers already tried for this request); when nothing is
  eligible it returns None and the caller answers 502/503.
- Weights are integers of at least 1 (checked at construction); comparisons
  use integer arithmetic only.
- Nothing here reads a clock, a socket or the reactor.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import Attribute, Interface, implementer

from gateway.config import BackendConfig, ServerConfig

__all__ = ["ISelector", "LeastConn", "Lease", "RoundRobin", "ServerState", "make_selector"]

_NO_EXCLUSIONS: frozenset[str] = frozenset()


class ServerState:
    """Runtime state of one server of a backend.

    ``config`` is the server's frozen configuration; ``inflight`` the number of
    requests holding a lease on it; ``up`` whether it may be picked (health
    checks flip it; until then every server is up).
    """

    __slots__ = ("config", "inflight", "up")

    def __init__(self, config: ServerConfig, *, inflight: int = 0, up: bool = True) -> None:
        self.config = config
        self.inflight = inflight
        self.up = up

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return self.config.host, self.config.port

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<ServerState {self.config.name} {self.config.host}:{self.config.port} {state} inflight={self.inflight}>"


class Lease:
    """One request's hold on a server; counts in ``server.inflight`` until released."""

    __slots__ = ("server", "_held")

    def __init__(self, server: ServerState) -> None:
        self.server = server
        self._held = True
        server.inflight += 1

    @property
    def released(self) -> bool:
        return not self._held

    def release(self) -> None:
        """Give the server back; only the first call counts, later ones do nothing."""
        if self._held:
            self._held = False
            self.server.inflight -= 1

    def __repr__(self) -> str:
        return f"<Lease {self.server.config.name}{' released' if not self._held else ''}>"


class ISelector(Interface):
    """Chooses a server of one backend for each request."""

    servers = Attribute("Sequence[ServerState]: the backend's servers, in configuration order.")

    def pick(exclude: frozenset[str] = _NO_EXCLUSIONS) -> Lease | None:
        """A lease on an up server whose name is not in ``exclude``, or None if there is none."""


def _checked(servers: Sequence[ServerState]) -> tuple[ServerState, ...]:
    servers = tuple(servers)
    for server in servers:
        if server.config.weight < 1:
            raise ValueError(f"server {server.config.name!r}: weight must be at least 1, got {server.config.weight}")
    return servers


@implementer(ISelector)
class RoundRobin:
    """nginx's smooth weighted round-robin (``ngx_http_upstream_get_peer``).

    Each pick adds every eligible server's weight to its running score, takes
    the highest score (the earliest server on a tie) and subtracts the total of
    the eligible weights from the winner. Over one cycle of ``sum(weights)``
    picks each server is chosen ``weight`` times, spread out rather than in a
    burst: weights 5:1:1 give ``a a b a c a a``. Down or excluded servers sit
    the pick out and their scores stay as they were.
    """

    __slots__ = ("servers", "_weights", "_names", "_scores")

    def __init__(self, servers: Sequence[ServerState]) -> None:
        self.servers: tuple[ServerState, ...] = _checked(servers)
        self._weights = tuple(server.config.weight for server in self.servers)
        self._names = tuple(server.config.name for server in self.servers)
        self._scores = [0] * len(self.servers)

    def pick(self, exclude: frozenset[str] = _NO_EXCLUSIONS) -> Lease | None:
        scores = self._scores
        weights = self._weights
        names = self._names
        best = -1
        total = 0
        for index, server in enumerate(self.servers):
            if not server.up or (exclude and names[index] in exclude):
                continue
            weight = weights[index]
            scores[index] += weight
            total += weight
            if best < 0 or scores[index] > scores[best]:
                best = index
        if best < 0:
            return None
        scores[best] -= total
        return Lease(self.servers[best])


@implementer(ISelector)
class LeastConn:
    """Fewest in-flight requests per unit of weight; ties rotate.

    Server ``s`` beats ``t`` when ``s.inflight / s.weight < t.inflight /
    t.weight``, compared as ``s.inflight * t.weight < t.inflight * s.weight``
    so no floats are involved. The scan starts just after the last server
    picked, and only a strictly better server displaces the first candidate, so
    equally loaded servers take turns.
    """

    __slots__ = ("servers", "_weights", "_names", "_start")

    def __init__(self, servers: Sequence[ServerState]) -> None:
        self.servers: tuple[ServerState, ...] = _checked(servers)
        self._weights = tuple(server.config.weight for server in self.servers)
        self._names = tuple(server.config.name for server in self.servers)
        self._start = 0

    def pick(self, exclude: frozenset[str] = _NO_EXCLUSIONS) -> Lease | None:
        servers = self.servers
        weights = self._weights
        names = self._names
        count = len(servers)
        best = -1
        best_load = 0
        best_weight = 1
        index = self._start
        for _ in range(count):
            server = servers[index]
            if server.up and not (exclude and names[index] in exclude):
                load = server.inflight
                weight = weights[index]
                if best < 0 or load * best_weight < best_load * weight:
                    best, best_load, best_weight = index, load, weight
            index += 1
            if index == count:
                index = 0
        if best < 0:
            return None
        self._start = best + 1 if best + 1 < count else 0
        return Lease(servers[best])


_SELECTORS = {"roundrobin": RoundRobin, "leastconn": LeastConn}


def make_selector(backend: BackendConfig) -> ISelector:
    """A fresh selector over ``backend.servers``, all up, by ``backend.balance``.

    Raises ValueError for an unknown ``balance`` (the config loader rejects it
    first; this guards callers that build configs by hand).
    """
    kind = _SELECTORS.get(backend.balance)
    if kind is None:
        expected = "|".join(_SELECTORS)
        raise ValueError(f"backend {backend.name!r}: balance: expected {expected}, got {backend.balance!r}")
    selector: ISelector = kind([ServerState(config) for config in backend.servers])
    return selector
