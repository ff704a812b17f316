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

from twisted.internet.error import CannotListenError

from gateway.workers import ListenSpec


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


__all__ = ["bind_socket"]
