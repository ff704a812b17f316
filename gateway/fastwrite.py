"""Send-now writes for plain TCP transports.

Twisted's ``transport.write`` queues data and sends it on the next reactor
iteration: two ``epoll_ctl`` calls and one more event dispatch per write. A
proxy writes at least twice per request (the request upstream, the response
downstream), so on the hot path that overhead rivals the HTTP work itself.

:func:`writer_for` returns a function that, when nothing is queued on the
transport, sends immediately with ``socket.send`` (or ``sendmsg`` for a
sequence: one vectored syscall, no join), and hands whatever the kernel did not
take to ``transport.write``. Ordering holds because the fast path is only taken
with an empty queue. :func:`file_sender_for` does the same for file bytes with
``os.sendfile`` (no copy through Python), leaving the rest to the caller.
Transports that are not plain TCP (TLS, whether as a wrapping protocol or
Twisted's native ``startTLS``, and tests' ``StringTransport``) get their own
``write`` unchanged, and no file sender.

This reads ``FileDescriptor`` internals (``dataBuffer``, ``offset``,
``_tempDataBuffer``) that have been stable across Twisted releases; the unit
tests exercise it over a real socket pair so a change would show.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from twisted.internet.tcp import Connection

Write = Callable[[bytes], None]
WriteSequence = Callable[[Sequence[bytes]], None]
#: ``send_file(fd, offset, count)``: how many bytes went to the socket now.
SendFile = Callable[[int, int, int], int]


def _idle(transport: Connection) -> bool:
    """True when the transport has nothing queued and can take a direct send."""
    return (
        not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    )


def writer_for(transport: object) -> tuple[Write, WriteSequence]:
    """``(write, write_sequence)`` for ``transport``, sending at once when possible."""
    if not isinstance(transport, Connection) or transport.TLS:
        # Twisted's own TLS (``ssl:`` endpoints, startTLS) keeps the TCP class
        # and encrypts inside ``write``: the socket must not be written raw.
        return transport.write, transport.writeSequence  # type: ignore[attr-defined]
    # Immediate sends of a head and then a body would meet Nagle's algorithm
    # and the peer's delayed ACK (40 ms stalls); nginx sets tcp_nodelay on
    # keep-alive connections for the same reason.
    transport.setTcpNoDelay(True)
    sock = transport.socket
    queue = transport.write

    def write(data: bytes) -> None:
        if _idle(transport):
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # Twisted's own write path will meet the error and report it
            if sent == len(data):
                return
            data = data[sent:]
        queue(data)

    def write_sequence(pieces: Sequence[bytes]) -> None:
        if _idle(transport):
            try:
                sent = sock.sendmsg(pieces)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0
            total = 0
            for piece in pieces:
                total += len(piece)
            if sent == total:
                return
            queue(b"".join(pieces)[sent:])
            return
        for piece in pieces:
            queue(piece)

    return write, write_sequence


def file_sender_for(transport: object) -> SendFile | None:
    """``send_file(fd, offset, count)`` for ``transport``: file bytes sent straight to its socket.

    While nothing is queued on a plain TCP transport, ``os.sendfile`` sends
    from the file as far as the socket takes without blocking (nginx's
    ``sendfile on``); the count sent is returned and the caller sends the rest
    its usual way, with backpressure. A queue, an error or the file ending
    early sends nothing more and leaves the rest to that usual way, which
    meets and reports the condition itself. None for transports whose bytes
    are not the socket's (TLS, tests' ``StringTransport``).
    """
    if not isinstance(transport, Connection) or transport.TLS:
        return None
    sock = transport.socket

    def send_file(fd: int, offset: int, count: int) -> int:
        if not _idle(transport):
            return 0
        out = sock.fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, fd, offset + sent, count - sent)
            except OSError:  # BlockingIOError: the socket is full; others: reported by Twisted later
                break
            if n == 0:
                break
            sent += n
        return sent

    return send_file
