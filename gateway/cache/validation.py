"""Pure conditional-request rules: revalidating stored responses and answering client conditionals.

Invariants:

- Stored heads are never edited in place; every function returns a new list.
- The cache evaluates only If-None-Match, If-Modified-Since and If-Range. A
  request with If-Match or If-Unmodified-Since goes to the origin
  (:func:`origin_preconditions`): RFC 9111 §4.3.2, "the If-Match and
  If-Unmodified-Since conditional header fields are not applicable to a cache".
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.cache.fields import (
    EntityTag,
    entity_tags,
    field_values,
    has_field,
    parse_entity_tag,
    parse_http_date,
    strong_match,
    weak_match,
    without,
)
from gateway.headers import is_hop_by_hop
from gateway.httpdate import http_date
from gateway.parser import Headers, connection_tokens

__all__ = [
    "freshen",
    "head_matches",
    "if_range_matches",
    "not_modified",
    "not_modified_headers",
    "origin_preconditions",
    "revalidation_headers",
    "select_for_update",
]

_CONDITIONALS = (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range")


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = field_values(headers, name)
    return values[0] if values else None


def _etag(headers: Headers) -> EntityTag | None:
    return parse_entity_tag(_first(headers, b"etag"))


def _last_modified(headers: Headers) -> float | None:
    return parse_http_date(_first(headers, b"last-modified"))


def origin_preconditions(request_headers: Headers) -> bool:
    """Whether the request carries preconditions only the origin may evaluate.

    RFC 9111 §4.3.2: "A cache MUST NOT evaluate conditional header fields that
    only apply to an origin server"; "If-Match and If-Unmodified-Since [...] are
    not applicable to a cache". Such a request is forwarded, not looked up.
    """
    return has_field(request_headers, b"if-match") or has_field(request_headers, b"if-unmodified-since")


def revalidation_headers(request_headers: Headers, stored_headers: Headers) -> Headers:
    """The head of a conditional request validating ``stored_headers``.

    RFC 9111 §4.3.1: the cache "starts with a request it is attempting to
    satisfy" (or, for a background revalidation, one synthesised from the
    stored Vary'd request fields) and adds preconditions from the stored
    response; it "MUST send the relevant entity tags (using [...]
    If-None-Match [...]) if the entity tags were provided" and "SHOULD send the
    Last-Modified value (using If-Modified-Since) if the request is not for a
    subrange, a single stored response is being validated, and that response
    contains a Last-Modified value".

    The client's own conditionals and Range are removed: the validation is for
    the whole stored response, and the client's conditions and range are then
    answered from whatever the cache ends up holding. With no validator stored
    the result is a plain (unconditional) request.
    """
    out = without(request_headers, _CONDITIONALS + (b"range",))
    etag = _first(stored_headers, b"etag")
    if etag is not None and parse_entity_tag(etag) is not None:
        out.append((b"If-None-Match", etag.strip(b" \t")))
    modified = _first(stored_headers, b"last-modified")
    if modified is not None and parse_http_date(modified) is not None:
        out.append((b"If-Modified-Since", modified.strip(b" \t")))
    return out


def _strong_last_modified(headers: Headers) -> float | None:
    # RFC 9110 §8.8.2.2: Last-Modified is strong when "being compared by an
    # intermediate cache to the validator stored in its cache entry", that
    # "entry includes a Date value, and the presented Last-Modified value is at
    # least 60 seconds before the Date value".
    modified = parse_http_date(_first(headers, b"last-modified"))
    date = parse_http_date(_first(headers, b"date"))
    if modified is None or date is None or date - modified < 60:
        return None
    return modified


def select_for_update(new_headers: Headers, stored: Sequence[tuple[Headers, float]]) -> list[int]:
    """Which stored responses (``(headers, response_time)``) a 304 updates, by index.

    RFC 9111 §4.3.4:

    - "If the new response contains one or more strong validators [...], then
      each of those strong validators identifies a selected representation for
      update. All the stored responses that have one of those same strong
      validators are identified for update. If none of the stored responses
      contain at least one of the same strong validators, then the cache MUST
      NOT use the new response to update any stored responses."
    - "If the new response contains no strong validators but does contain one
      or more weak validators, and those validators correspond to one of the
      cache's stored responses, then the most recent of those matching stored
      responses is identified for update."
    - "If the new response does not include any form of validator [...], and
      there is only one stored response, and that stored response also lacks a
      validator, then that stored response is identified for update."

    ``stored`` are the candidates for the request (same key, Vary-matching).
    """
    etag = _etag(new_headers)
    strong_modified = _strong_last_modified(new_headers)
    if (etag is not None and not etag[0]) or strong_modified is not None:
        chosen = []
        for i, (headers, _) in enumerate(stored):
            theirs = _etag(headers)
            if etag is not None and theirs is not None and strong_match(etag, theirs):
                chosen.append(i)
            elif strong_modified is not None and _last_modified(headers) == strong_modified:
                chosen.append(i)
        return chosen
    modified = _last_modified(new_headers)
    if etag is not None or modified is not None:
        best: int | None = None
        for i, (headers, response_time) in enumerate(stored):
            theirs = _etag(headers)
            if (etag is not None and theirs is not None and weak_match(etag, theirs)) or (
                modified is not None and _last_modified(headers) == modified
            ):
                if best is None or response_time > stored[best][1]:
                    best = i
        return [] if best is None else [best]
    if len(stored) == 1:
        headers = stored[0][0]
        if not has_field(headers, b"etag") and not has_field(headers, b"last-modified"):
            return [0]
    return []


# RFC 9111 §3.2: the fields a 304 (or HEAD) response does not replace: those
# excepted from storage (§3.1: hop-by-hop, proxy-*), "The Content-Length header
# field", fields "automatically processed" (Content-Range), and fields "the
# cache's stored response depends upon": the stored content is kept with its
# Content-Encoding, and the stored Vary names chose the entry's secondary key.
_KEEP = frozenset({b"content-length", b"content-range", b"content-encoding", b"vary"})


def freshen(stored_headers: Headers, new_headers: Headers, response_time: float) -> Headers:
    """The stored head updated from a 304 (or a matching HEAD 200) received at ``response_time``.

    RFC 9111 §3.2: "the cache MUST add each header field in the provided
    response to the stored response, replacing field values that are already
    present", except the fields listed above. Replaced fields take the place
    of their first stored occurrence; new fields go at the end.

    The new response is a new message, so its age facts replace the old ones
    (the caller also stores the new request_time/response_time): without Age
    the stored Age is dropped, and without Date one is added for
    ``response_time`` (RFC 9110 §6.6.1); otherwise a 304 lacking them would
    leave the entry as old as before it was validated.
    """
    connection = connection_tokens(field_values(new_headers, b"connection"))
    incoming: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for pair in new_headers:
        name = pair[0].lower()
        if name in _KEEP or is_hop_by_hop(name) or name in connection:
            continue
        incoming.setdefault(name, []).append(pair)
    if b"date" not in incoming:
        incoming[b"date"] = [(b"Date", http_date(response_time))]
    out: Headers = []
    placed: set[bytes] = set()
    for pair in stored_headers:
        name = pair[0].lower()
        if name == b"age" and name not in incoming:
            continue
        if name in incoming:
            if name not in placed:
                placed.add(name)
                out.extend(incoming[name])
            continue
        out.append(pair)
    for name, pairs in incoming.items():
        if name not in placed:
            out.extend(pairs)
    return out


def head_matches(stored_headers: Headers, head_headers: Headers) -> bool:
    """Whether a 200 to a HEAD request may update a stored GET response (else it is stale).

    RFC 9111 §4.3.5: "if the stored response and HEAD response have matching
    values for any received validator fields (ETag and Last-Modified) and, if
    the HEAD response has a Content-Length header field, the value of
    Content-Length matches that of the stored response, the cache SHOULD
    update the stored response [...]; otherwise, the cache SHOULD consider the
    stored response to be stale." The caller then :func:`freshen`\\ s it or
    removes it.
    """
    for name in (b"etag", b"last-modified", b"content-length"):
        theirs = [v.strip(b" \t") for v in field_values(head_headers, name)]
        if theirs and theirs != [v.strip(b" \t") for v in field_values(stored_headers, name)]:
            return False
    return True


def not_modified(method: bytes, request_headers: Headers, stored_headers: Headers, response_time: float) -> bool:
    """Whether a client's conditional GET/HEAD is answered 304 from the stored response.

    RFC 9110 §13.2.2 precedence, for the fields a cache evaluates (RFC 9111
    §4.3.2):

    - If-None-Match present: "If the field value is "*", the condition is false
      if the origin server has a current representation" (we hold one);
      otherwise false, i.e. 304, when one listed tag matches the stored ETag
      by weak comparison (§13.1.2). An unparsable list is ignored.
    - Else If-Modified-Since on GET/HEAD: "A recipient MUST ignore the
      If-Modified-Since header field if the received field value is not a
      valid HTTP-date, the field value has more than one member"; 304 when the
      stored Last-Modified is not after it. RFC 9111 §4.3.2: "If [...] the
      Last-Modified header field is not present in a stored response, a cache
      SHOULD use the stored response's Date field value (or, if no Date field
      is present, the time that the stored response was received)".
    """
    if method not in (b"GET", b"HEAD"):
        return False
    inm = field_values(request_headers, b"if-none-match")
    if inm:
        tags = entity_tags(inm)
        if tags is None:
            return False
        if not tags:
            return True
        etag = _etag(stored_headers)
        return etag is not None and any(weak_match(tag, etag) for tag in tags)
    ims = field_values(request_headers, b"if-modified-since")
    if len(ims) != 1:
        return False
    since = parse_http_date(ims[0])
    if since is None:
        return False
    modified = parse_http_date(_first(stored_headers, b"last-modified"))
    if modified is None:
        modified = parse_http_date(_first(stored_headers, b"date"))
    if modified is None:
        modified = response_time
    return modified <= since


# RFC 9110 §15.4.5: "The server generating a 304 response MUST generate any of
# the following header fields that would have been sent in a 200 (OK) response
# to the same request: Content-Location, Date, ETag, and Vary; Cache-Control and
# Expires"; Last-Modified "might be useful if the response does not have an
# ETag"; the targeted cache-control fields guide caches downstream too.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified",
     b"cdn-cache-control", b"age"}
)  # fmt: skip


def not_modified_headers(stored_headers: Headers, extra: Sequence[bytes] = ()) -> Headers:
    """The fields of a 304 answered from the stored response (plus ``extra`` names, lower-case).

    Pass the gateway's own targeted field in ``extra``; Age is kept so that
    :func:`~gateway.cache.policy.with_age` replaces it.
    """
    keep = _NOT_MODIFIED_FIELDS.union(extra)
    return [pair for pair in stored_headers if pair[0].lower() in keep]


def if_range_matches(request_headers: Headers, stored_headers: Headers) -> bool:
    """Whether a Range request's If-Range (if any) lets the range be served.

    RFC 9110 §13.1.5: an entity tag matches by strong comparison ("the
    condition is true if the entity-tag matches [...] using the strong
    comparison function"); an HTTP-date matches only if it "exactly matches the
    Last-Modified field value" and that is a strong validator (§8.8.2.2). False
    means: ignore Range and send the whole response. Without If-Range: True.
    """
    values = field_values(request_headers, b"if-range")
    if not values:
        return True
    if len(values) > 1:
        return False
    value = values[0].strip(b" \t")
    if value[:1] in (b'"', b"W"):
        tag = parse_entity_tag(value)
        etag = _etag(stored_headers)
        return tag is not None and etag is not None and strong_match(tag, etag)
    date = parse_http_date(value)
    return date is not None and date == _strong_last_modified(stored_headers)
