"""Twisted's own reverse proxy, ``twisted.web.proxy.ReverseProxyResource``, as a reference.

Usage: ``python bench/twisted_proxy.py LISTEN_PORT ORIGIN_PORT`` serves
http://127.0.0.1:LISTEN_PORT/ by forwarding every request to the origin on
127.0.0.1:ORIGIN_PORT.  It opens a new HTTP/1.0 connection to the origin per
request, which is much of why the gateway should beat it by 5× or more.  Its
access log is off, as it is for the gateway and nginx in the benchmark.
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor
from twisted.web.proxy import ProxyClientFactory, ReverseProxyResource
from twisted.web.server import Request, Site


class _QuietSite(Site):
    """A Site that writes no access log line and no start/stop messages."""

    noisy = False

    def log(self, request: Request) -> None:
        """Skip the access log, which the other proxies don't write either."""


def main(argv: list[str]) -> None:
    """Listen on 127.0.0.1:LISTEN_PORT and proxy to 127.0.0.1:ORIGIN_PORT until stopped."""
    listen_port, origin_port = (int(arg) for arg in argv)
    # One client factory starts per request; don't log "Starting factory" each time.
    ProxyClientFactory.noisy = False
    site = _QuietSite(ReverseProxyResource("127.0.0.1", origin_port, b""))
    endpoint = endpoints.TCP4ServerEndpoint(reactor, listen_port, interface="127.0.0.1")
    endpoint.listen(site)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
