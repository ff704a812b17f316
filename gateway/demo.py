"""Built-in demo origins: tiny web servers that say which of them answered.

They exist so that ``twistd -n gateway`` on a bare machine shows balancing at
once (``curl localhost:8080`` twice names two servers). They are not on the
request path and use plain twisted.web.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class DemoResource(Resource):
    """Answers every path with ``served by NAME`` and the request it saw."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-served-by", self.name.encode("ascii"))
        return b"served by %s: %s %s\n" % (
            self.name.encode("ascii"),
            request.method,
            request.uri,
        )


class DemoSite(Site):
    """A Site that keeps quiet: the gateway's access log already has the line."""

    noisy = False

    def log(self, request: Request) -> None:
        """Demo origins write no access log of their own."""


def demo_site(name: str) -> DemoSite:
    """The factory for one demo origin."""
    return DemoSite(DemoResource(name))
