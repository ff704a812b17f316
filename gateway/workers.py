"""Multi-core decisions: how many workers, which sockets a supervisor can share, when to restart.

The model is HAProxy's and nginx's master-worker: a supervisor process binds
every listener's socket, and N worker processes, each a whole gateway with its
own reactor, inherit those sockets and accept from them.  This module holds
what both sides decide, as values:

- :func:`worker_count`: ``[gateway] workers`` (or ``--workers``), 0 meaning one
  per CPU core.
- :func:`listen_spec`: what socket a listener's endpoint string asks for, read
  by Twisted's own endpoint parser, so the supervisor binds exactly what
  ``serverFromString`` would have listened on; ``None`` for kinds a parent
  can't bind for its children (``unix:``, ``systemd:``, plugins).
- :func:`encode_sockets` / :func:`decode_sockets`: the environment contract
  telling a worker which inherited descriptor is which listener.
- :class:`RestartPolicy` / :class:`Restarts`: backoff and a cap per window, so a
  worker that dies at once is not restarted in a fork loop.

Invariants: no reactor, no sockets, no processes; the only I/O is what
Twisted's ``ssl:`` endpoint parser does (it reads the key and certificate
files named in the string, as the configuration check already did).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import serverFromString

from gateway.compat import SLOTS

if TYPE_CHECKING:
    from gateway.config import Config, ListenerConfig

#: Listen backlog when the endpoint string sets none.  Twisted's default of 50
#: overflows under load (SYNs dropped, clients retrying after 1 s); nginx uses
#: 511 and the kernel caps any value at ``net.core.somaxconn``.
DEFAULT_BACKLOG = 1024

#: The highest ``workers`` the configuration allows (``configkeys``: 0..64).
MAX_WORKERS = 64

# The environment contract between the supervisor and a worker.
#: The worker's number, 1..N; it stays with the slot when the worker is restarted.
WORKER_ENV = "GATEWAY_WORKER"
#: ``NAME=FD:FAMILY,...``: which inherited descriptor is which listener's socket.
SOCKETS_ENV = "GATEWAY_SOCKETS"
#: ``text``: log classic lines to the inherited stdout; ``json``: log events for
#: the supervisor to relay (when its own log is not stdout).
LOG_ENV = "GATEWAY_WORKER_LOG"

#: Descriptors in a worker: the pickled :class:`~gateway.config.Config` (read to
#: EOF at start), a pipe whose EOF means the supervisor is gone, a pipe on which
#: the worker says it is ready (it listens and handles signals), then sockets.
CONFIG_FD = 3
PARENT_FD = 4
READY_FD = 5
FIRST_SOCKET_FD = 6

_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_FAMILY_NAMES = {value: name for name, value in _FAMILIES.items()}


def worker_count(configured: int, cpu_count: int | None) -> int:
    """How many workers to run: ``configured``, or one per core when it is 0.

    ``cpu_count`` is ``os.cpu_count()``, which may be ``None`` (unknown): then one.
    """
    if configured > 0:
        return min(configured, MAX_WORKERS)
    return max(1, min(cpu_count or 1, MAX_WORKERS))


@dataclass(frozen=True, **SLOTS)
class ListenSpec:
    """The listening socket an endpoint string asks for.

    ``tls`` is true for an ``ssl:`` endpoint: the worker's copy of the endpoint
    wraps the adopted socket in TLS, exactly as ``listenSSL`` would.
    """

    family: int
    host: str
    port: int
    backlog: int
    tls: bool = False


class _Recorder:
    """Stands in for the reactor: records the listen call an endpoint makes, listens on nothing."""

    def __init__(self) -> None:
        self.call: tuple[int, int, str, bool] | None = None

    def listenTCP(self, port: int, factory: object, backlog: int = 50,
                  interface: str = "") -> None:
        self.call = (port, backlog, interface, False)

    def listenSSL(self, port: int, factory: object, contextFactory: object,
                  backlog: int = 50, interface: str = "") -> None:
        self.call = (port, backlog, interface, True)


def endpoint_options(bind: str) -> frozenset[str]:
    """The ``key=value`` option names written in an endpoint string.

    Twisted's syntax: fields split on ``:``, a backslash escapes the next
    character (``interface=\\:\\:1``).
    """
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in bind:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return frozenset(f.split("=", 1)[0] for f in fields[1:] if "=" in f)


def listen_spec(bind: str) -> ListenSpec | None:
    """The socket ``bind`` listens on, or ``None`` when a parent can't bind it for workers.

    Twisted's parser reads the string (the same one ``serverFromString`` uses
    to listen), and the endpoint's ``listen`` is played against a recorder: TCP
    (``tcp:``, ``tcp6:``) and TLS over TCP (``ssl:``) endpoints call
    ``listenTCP``/``listenSSL`` with the port, backlog and interface they
    parsed.  Other kinds call something else and give ``None``.  The backlog is
    :data:`DEFAULT_BACKLOG` unless the string sets one.
    """
    recorder = _Recorder()
    try:
        endpoint: Any = serverFromString(recorder, bind)
        result = endpoint.listen(object())
    except Exception:
        return None
    result.addErrback(lambda _: None)  # another kind called what the recorder lacks
    if recorder.call is None:
        return None
    port, backlog, interface, tls = recorder.call
    if "backlog" not in endpoint_options(bind):
        backlog = DEFAULT_BACKLOG
    # As twisted.internet.tcp.Port decides: an IPv6 literal means AF_INET6.
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    return ListenSpec(family, interface, port, backlog, tls)


def unshareable(config: Config) -> tuple[ListenerConfig, ...]:
    """The listeners whose endpoint a supervisor can't bind for its workers."""
    return tuple(lst for lst in config.listeners if listen_spec(lst.bind) is None)


@dataclass(frozen=True, **SLOTS)
class InheritedSocket:
    """A listening socket a worker inherited: its descriptor there and its address family."""

    fd: int
    family: int


def encode_sockets(sockets: Mapping[str, InheritedSocket]) -> str:
    """``NAME=FD:FAMILY,...`` for :data:`SOCKETS_ENV` (listener names have no ``=:,``)."""
    return ",".join(
        f"{name}={sock.fd}:{_FAMILY_NAMES[sock.family]}" for name, sock in sockets.items()
    )


def decode_sockets(text: str) -> dict[str, InheritedSocket]:
    """The mapping :func:`encode_sockets` wrote; ``ValueError`` naming what is malformed."""
    sockets: dict[str, InheritedSocket] = {}
    for item in filter(None, text.split(",")):
        name, _, rest = item.partition("=")
        fd, _, family = rest.partition(":")
        if not name or not fd.isdigit() or family not in _FAMILIES:
            raise ValueError(f"{SOCKETS_ENV}: expected NAME=FD:inet|inet6, got {item!r}")
        sockets[name] = InheritedSocket(int(fd), _FAMILIES[family])
    return sockets


@dataclass(frozen=True, **SLOTS)
class RestartPolicy:
    """How soon a dead worker is started again.

    The first restart waits ``first_delay``; each further one in a row doubles
    the wait up to ``max_delay``.  A worker that ran for ``stable_after``
    seconds before dying starts the count again.  Whatever the backoff says, a
    slot gets at most ``cap`` restarts per ``window`` seconds; past that the
    next waits until the oldest leaves the window.
    """

    first_delay: float = 0.1
    max_delay: float = 30.0
    stable_after: float = 10.0
    cap: int = 10
    window: float = 60.0


@dataclass(frozen=True, **SLOTS)
class Restart:
    """One decision: wait ``delay`` seconds; ``attempt`` in a row; ``capped`` by the window."""

    delay: float
    attempt: int
    capped: bool


class Restarts:
    """One worker slot's restart history under a :class:`RestartPolicy`."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self._times: deque[float] = deque()

    def next(self, now: float, uptime: float) -> Restart:
        """The restart for a worker that died at ``now`` after running ``uptime`` seconds."""
        policy = self.policy
        if uptime >= policy.stable_after:
            self.attempt = 0
        self.attempt += 1
        delay = min(policy.first_delay * 2 ** (self.attempt - 1), policy.max_delay)
        while self._times and self._times[0] <= now - policy.window:
            self._times.popleft()
        capped = len(self._times) >= policy.cap
        if capped:
            delay = max(delay, self._times[0] + policy.window - now)
        self._times.append(now + delay)
        return Restart(delay, self.attempt, capped)
