"""Listening sockets bound ahead of the service that accepts on them.

The supervisor binds every listener's sockets before its workers exist (and
before twistd drops privileges), and a reload binds the sockets of new
listeners before it changes anything, so that a port that can't be bound
refuses the reload instead of leaving it half done.  The socket is then
adopted by a listener (:class:`gateway.adoption.InheritedPort`).

Invariants: no reactor; a failure closes what it opened and raises
``CannotListenError``, as ``listenTCP`` does.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gateway.workers import ListenSpec, listen_spec

if TYPE_CHECKING:
    from gateway.config import Config

log = Logger()


def bind_socket(spec: ListenSpec, reuse_port: bool = False) -> socket.socket:
    """A non-blocking socket bound and listening as ``spec`` says.

    ``SO_REUSEADDR`` is set as Twisted sets it; ``reuse_port`` adds
    ``SO_REUSEPORT``, so that more sockets can bind the same address.

    :raises CannotListenError: like ``listenTCP``, so that a taken port fails
        the start with the same message.
    """
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if spec.family == socket.AF_INET6:
            # As Twisted does: getaddrinfo keeps a scope id (fe80::1%eth0).
            address = socket.getaddrinfo(
                spec.host, spec.port, spec.family, socket.SOCK_STREAM, 0,
                socket.AI_NUMERICHOST | socket.AI_PASSIVE,
            )[0][4]
        else:
            address = (spec.host, spec.port)
        sock.bind(address)
        sock.listen(spec.backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CannotListenError(spec.host, spec.port, exc) from exc
    return sock


def bind_listeners(
    config: Config,
    count: int,
    reuse_port: bool,
    before: Mapping[str, str],
    bound: Mapping[str, list[socket.socket]],
    bind: Callable[[ListenSpec, bool], socket.socket] = bind_socket,
) -> dict[str, list[socket.socket]]:
    """The sockets ``count`` workers of ``config`` accept on, all bound or none.

    With ``reuse_port`` each listener gets a socket per worker (``SO_REUSEPORT``),
    else one shared. A listener whose ``bind`` is what it was (``before``:
    name -> bind) keeps the sockets it has in ``bound`` (more are bound for
    more workers, the surplus is left out for fewer); the others get new ones.

    :raises CannotListenError: when one can't be bound (what this call
        bound is closed again).
    :raises ValueError: when a listener's endpoint can't be shared.
    """
    wanted = count if reuse_port else 1
    sockets: dict[str, list[socket.socket]] = {}
    fresh: list[socket.socket] = []
    try:
        for listener in config.listeners:
            spec = listen_spec(listener.bind)
            if spec is None:
                raise ValueError(f"listener {listener.name}: {listener.bind!r} can't be shared by workers")
            socks: list[socket.socket] = []
            if before.get(listener.name) == listener.bind:
                socks = list(bound.get(listener.name, []))[:wanted]
            if not socks:
                socks = [bind(spec, reuse_port)]
                fresh.append(socks[0])
            host, port = socks[0].getsockname()[:2]
            # Port 0: the others join the port the kernel gave the first.
            same = replace(spec, port=port)
            while len(socks) < wanted:
                socks.append(bind(same, True))
                fresh.append(socks[-1])
            sockets[listener.name] = socks
            log.info(
                "listener {name} bound on {host}:{port} (backlog {backlog}) for {count} workers, {how}",
                name=listener.name, host=host, port=port, backlog=spec.backlog, count=count,
                how="a socket each (SO_REUSEPORT)" if reuse_port else "one shared socket",
            )  # fmt: skip
    except BaseException:
        for sock in fresh:
            sock.close()
        raise
    return sockets


__all__ = ["bind_listeners", "bind_socket"]
