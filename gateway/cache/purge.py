"""PURGE: dropping stored responses on request, from configured addresses only.

``PURGE /path?query`` drops every variant stored for that URL;
``PURGE /prefix*`` (a target ending in ``*``) drops every entry whose URL
starts with ``/prefix`` on that host. Both schemes are purged (``http`` and
``https``): a purge usually comes over an internal plain listener for content
that clients fetch over TLS.

Invariants:

- Only peers in ``[gateway] cache_purge_from`` may purge (the TCP peer's
  address, never a forwarding header, so it can't be forged); the front end
  answers everyone else 405.
- An exact purge uses the key rules of the route a GET of the URL would
  take (query sorting, dropped parameters), so it hits what that GET stored.
- Open writers for purged keys are aborted too (the store does that), so a
  response in flight when the purge came is not stored after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.logger import Logger

from gateway.compat import SLOTS
from gateway.cache.keys import KeyRules, cache_key
from gateway.headers import serialize_head
from gateway.httpdate import http_date

if TYPE_CHECKING:
    from gateway.cache.store import DiskStore
    from gateway.parser import Request
    from gateway.runtime import Runtime

__all__ = ["SCHEMES", "Purged", "handle_purge", "purge", "purge_response"]

log = Logger()

#: The schemes a purge covers.
SCHEMES = (b"http", b"https")


def purge(store: DiskStore, keys: KeyRules | None, host: bytes, target: bytes) -> int:
    """Drop what is stored for ``host`` + ``target`` (a prefix if it ends in ``*``); how many entries."""
    if target.endswith(b"*"):
        prefix = target[:-1]
        return sum(store.purge_prefix(cache_key(scheme, host, prefix)) for scheme in SCHEMES)
    rules = keys if keys is not None else KeyRules()
    return sum(store.purge(rules.key(scheme, host, target)) for scheme in SCHEMES)


def purge_response(count: int, *, server: bytes, date: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    """The 200 answer to a PURGE: ``purged N`` as text, never cached downstream."""
    body = b"purged %d\n" % count
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
        (b"Date", date),
    ]
    if server:
        headers.append((b"Server", server))
    if not keep_alive:
        headers.append((b"Connection", b"close"))
    head = serialize_head(b"HTTP/1.1 200 OK", headers)
    return head if head_only else head + body


@dataclass(frozen=True, **SLOTS)
class Purged:
    """A PURGE done: the ``answer`` to write, its body's length, and whether the connection stays."""

    answer: bytes
    body_length: int
    keep_alive: bool


def handle_purge(
    runtime: Runtime,
    listener: str,
    peer_ip: str,
    request: Request,
    host: bytes,
    target: bytes,
    *,
    now: float,
    accepting: bool,
) -> Purged | None:
    """Purge for a PURGE request on ``listener`` from ``peer_ip``; None if the peer may not (405).

    The connection stays open only if the request had no body (it is not read).
    """
    cache = runtime.cache
    if cache is None or peer_ip not in runtime.purge_from:
        return None
    route = runtime.routes[listener].match(host, target.rstrip(b"*") or b"/", b"GET", request.headers)
    policy = runtime.cache_policies.get(route.name) if route is not None else None
    count = purge(cache.store, policy.keys if policy is not None else None, host, target)
    log.info(
        "cache: PURGE {host}{target} from {peer}: {count} entries",
        host=host.decode("latin-1"), target=target.decode("latin-1"), peer=peer_ip, count=count,
    )  # fmt: skip
    keep_alive = request.keep_alive and accepting and not request.chunked and request.content_length == 0
    answer = purge_response(count, server=runtime.server_header, date=http_date(now), keep_alive=keep_alive)
    return Purged(answer, len(b"purged %d\n" % count), keep_alive)
