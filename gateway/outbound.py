"""The request head the gateway sends upstream for one client request.

Pure decision code over what the front end learnt of the client: the header
rules themselves live in :func:`gateway.headers.request_headers`; this adds
what depends on the connection and the chosen server (the Host fallback, the
client certificate subject, the answered ``Expect``, the body framing) and
serializes the head. Kept apart from :mod:`gateway.exchange`, which decides
when to send it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.headers import request_headers, serialize_head

if TYPE_CHECKING:
    from gateway.frontend import ClientConnection
    from gateway.parser import Request

__all__ = ["request_head"]


def request_head(
    request: Request,
    path: bytes,
    host: bytes,
    client: ClientConnection,
    *,
    via: bytes,
    host_header: str,
    server_address: str,
    chunked: bool | None = None,
    length: int | None = None,
) -> bytes:
    """The upstream head for ``request`` to ``path`` on ``host``, from ``client``.

    ``via`` is our Via pseudonym, ``host_header`` the backend's configured Host
    (empty: the client's), ``server_address`` the chosen server's
    ``host:port``. ``chunked``/``length`` override the body framing when a
    buffered body is sent (a spooled chunked body has a length).
    """
    host_override = host_header.encode("idna") if host_header else None
    if host_override is None and not host:
        # An HTTP/1.0 request may come without Host; HTTP/1.1 upstream
        # needs one (RFC 9112 §3.2): name the server, as nginx's $proxy_host.
        host_override = server_address.encode("ascii")
    strip, subject_field = client.subject_header
    headers = request_headers(
        request.headers,
        connection=request.connection,
        peer_ip=client.peer_ip,
        peer_port=client.peer_port,
        proto=client.proto,
        host=host,
        via=via,
        version=request.version[5:],
        trusted=client.peer_trusted,
        host_override=host_override,
        listener=client.listener_name,
        strip=strip,
        forwarded=client.forwarded_element(host),
    )
    subject = client.client_subject
    if subject is not None and strip:
        headers.append((subject_field, subject))
    if request.expect_continue:
        # The gateway answers 100 Continue itself (gateway.frontend), so the
        # expectation is met and must not travel on (RFC 9110 §10.1.1).
        headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
    if length is not None:
        headers.append((b"Content-Length", b"%d" % length))
    elif request.chunked if chunked is None else chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    return serialize_head(b"%s %s HTTP/1.1" % (request.method, path), headers)
