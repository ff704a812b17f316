"""The gateway's reactor: Twisted's epoll reactor without per-event log contexts.

Twisted's ``EPollReactor.doPoll`` wraps every ready descriptor's callback in
``log.callWithLogger``: four Python frames and a context dictionary per event,
kept for the legacy logging system's ``[Protocol,0,ip]`` prefixes. A proxy
handles four to six socket events per request, so this wrapping costs more than
routing and balancing together. :class:`GatewayReactor` dispatches directly;
everything else, including error handling in ``_doReadOrWrite``, is Twisted's.

``twistd gateway`` installs it unless the operator chose a reactor with
``twistd --reactor``.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet.epollreactor import EPollReactor


class GatewayReactor(EPollReactor):
    """``EPollReactor`` with direct event dispatch."""

    def doPoll(self, timeout: float | None) -> None:
        """Poll for events and dispatch each one straight to ``_doReadOrWrite``."""
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> bool:
    """Install :class:`GatewayReactor` as the global reactor if none is installed yet.

    Returns whether it was installed (False when another reactor already is,
    for instance one chosen with ``twistd --reactor``, or on a platform
    without epoll).
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    try:
        reactor = GatewayReactor()
    except (AttributeError, OSError):
        return False
    installReactor(reactor)
    return True
