"""Pure RFC 9111 rules for a shared cache: what to store, how long it is fresh, when to reuse it.

Invariants:

- Nothing here reads a clock or does I/O. ``request_time`` is when the cache
  sent the request that produced a stored response, ``response_time`` when the
  response head arrived, ``now`` when a stored response is being considered
  (seconds since the epoch, floats, all from the caller's one clock).
- This is a *shared* cache (RFC 9111 §1): ``s-maxage`` applies, ``private``
  forbids storing, ``Authorization`` restricts it (§3.5).
- A response's directives come from the first valid targeted field in
  ``CacheRules.targets`` if any, else from ``Cache-Control`` and ``Expires``
  (RFC 9213 §2.2; see :func:`~gateway.cache.directives.response_directives`).
  Request directives always come from ``Cache-Control`` (RFC 9213 defines no
  request fields).
- Only responses to GET are stored. A HEAD request can be answered from a stored
  GET response (RFC 9110 §9.3.2); a HEAD response only updates stored ones
  (RFC 9111 §4.3.5, :func:`gateway.cache.validation.head_matches`).
- Partial content (206) is never stored: the cache stores whole responses and
  answers ranges from them (RFC 9111 §3.3 lets a cache that does not combine
  partial responses store none).
- Qualified ``no-cache="field"`` and ``private="field"`` are read as their
  unqualified forms (revalidate every time; don't store): stricter than the
  RFC allows, never looser.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.compat import SLOTS
from gateway.cache.directives import (
    CDN_CACHE_CONTROL,
    INVALID,
    CacheControl,
    parse_cache_control,
    response_directives,
)
from gateway.cache.fields import DELTA_MAX, delta_seconds, field_values, has_field, parse_http_date
from gateway.cache.keys import vary_names
from gateway.headers import is_hop_by_hop
from gateway.parser import Headers

__all__ = [
    "ERROR_STATUSES",
    "HEURISTICALLY_CACHEABLE",
    "UNDERSTOOD_STATUSES",
    "CacheRules",
    "Freshness",
    "RequestControl",
    "Use",
    "Verdict",
    "age_value",
    "corrected_initial_age",
    "current_age",
    "decide",
    "freshness",
    "freshness_lifetime",
    "headers_to_store",
    "request_control",
    "retention",
    "stale_if_error",
    "store_refusal",
    "target_list",
    "with_age",
]

#: RFC 9110 §15.1: "Responses with status codes that are defined as heuristically
#: cacheable (e.g., 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, and
#: 501 in this specification) can be reused by a cache with heuristic expiration".
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: Statuses whose caching requirements this cache implements, for
#: ``must-understand`` (RFC 9111 §5.2.2.3). 206 is not among them (never stored).
UNDERSTOOD_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})

#: RFC 5861 §4: "an error is any situation that would result in a 500, 502,
#: 503, or 504 HTTP response status code being returned." These upstream
#: statuses, like a failed or timed-out exchange, may be answered by
#: :func:`stale_if_error`.
ERROR_STATUSES = frozenset({500, 502, 503, 504})

_NEVER_STORED = frozenset({206, 304, 407})


@dataclass(frozen=True, **SLOTS)
class CacheRules:
    """The knobs of the cache rules for one route.

    - ``targets``: targeted cache-control fields obeyed, most specific first,
      lower-case (RFC 9213 §2.2); see :func:`target_list`.
    - ``store_set_cookie``: store responses carrying ``Set-Cookie`` (and serve
      the field with them). RFC 9111 §7.3 allows it; off by default, as in
      nginx and Varnish, because it hands one user's cookie to everyone.
    - ``heuristic_fraction`` / ``heuristic_max``: heuristic freshness is this
      fraction of (Date - Last-Modified), at most ``heuristic_max`` seconds
      (RFC 9111 §4.2.2: "A typical setting of this fraction might be 10%").
    - ``default_stale_if_error``: seconds a stale response may stand in for a
      failed origin when the origin gave no ``stale-if-error`` (an
      "out-of-band contract", RFC 9111 §4.2.4). 0 turns it off.
    """

    targets: tuple[bytes, ...] = (CDN_CACHE_CONTROL,)
    store_set_cookie: bool = False
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    default_stale_if_error: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.heuristic_fraction <= 1.0:
            raise ValueError(f"heuristic_fraction must be within 0..1, got {self.heuristic_fraction}")
        if self.heuristic_max < 0:
            raise ValueError(f"heuristic_max must not be negative, got {self.heuristic_max}")
        if self.default_stale_if_error < 0:
            raise ValueError(f"default_stale_if_error must not be negative, got {self.default_stale_if_error}")
        object.__setattr__(self, "targets", tuple(t.lower() for t in self.targets))


def target_list(own_field: bytes | None = None) -> tuple[bytes, ...]:
    """The target list: the gateway's own targeted field (if configured), then ``CDN-Cache-Control``.

    RFC 9213 §2.2: targeted fields are checked "in target list order", and the
    list goes from the most specific to the least; a field for this gateway
    alone is more specific than the one for every CDN.
    """
    if own_field and own_field.lower() != CDN_CACHE_CONTROL:
        return (own_field.lower(), CDN_CACHE_CONTROL)
    return (CDN_CACHE_CONTROL,)


# --- storing (RFC 9111 §3) -------------------------------------------------------


def store_refusal(
    method: bytes, status: int, request_headers: Headers, response_headers: Headers, rules: CacheRules
) -> str | None:
    """Why this response must not be stored, or None when it may be.

    RFC 9111 §3, a shared cache "MUST NOT store a response to a request unless"
    every condition holds; the reasons, checked in this order:

    - ``method``: the request method is not GET (HEAD responses carry no
      content to store; see the module invariants).
    - ``status``: not a final status, or 304, or 407 (whose Proxy-Authenticate
      is specific to this hop, §3.1).
    - ``partial``: 206; ranges are answered from whole stored responses.
    - ``request-no-store``: the request has ``no-store`` (§5.2.1.5).
    - ``must-understand``: ``must-understand`` with a status we don't
      implement (§5.2.2.3); with one we do, ``no-store`` is ignored.
    - ``no-store``: §5.2.2.5.
    - ``private``: §5.2.2.7, shared caches "MUST NOT store the response".
    - ``authorization``: the request had Authorization and the response has
      none of ``public``, ``s-maxage``, ``must-revalidate`` (§3.5).
    - ``set-cookie``: the response sets a cookie and ``store_set_cookie`` is off.
    - ``vary-star``: ``Vary: *`` can never be served from cache (§4.1), so
      storing it would only take space.
    - ``no-freshness``: neither explicit freshness (``public``, ``max-age``,
      ``s-maxage``, ``Expires``) nor a heuristically cacheable status.

    The size limit is the store's (it aborts the write past
    ``max_object_size``).
    """
    # RFC 9111 §3: "the request method is understood by the cache"
    if method != b"GET":
        return "method"
    # RFC 9111 §3: "the response status code is final"
    if status < 200 or status > 599:
        return "status"
    if status == 206:
        return "partial"
    if status in _NEVER_STORED:
        return "status"
    if b"no-store" in parse_cache_control(field_values(request_headers, b"cache-control")):
        return "request-no-store"
    control, targeted = response_directives(response_headers, rules.targets)
    if b"no-store" in control or b"must-understand" in control:
        # RFC 9111 §5.2.2.3: "When a cache that implements the must-understand
        # directive receives a response that includes it, the cache SHOULD
        # ignore the no-store directive if it understands the status code."
        if b"must-understand" in control:
            if status not in UNDERSTOOD_STATUSES:
                return "must-understand"
        else:
            return "no-store"
    if b"private" in control:
        return "private"
    # RFC 9111 §3.5: "the following response directives have such an effect:
    # must-revalidate (Section 5.2.2.2), public (Section 5.2.2.9), and s-maxage"
    if has_field(request_headers, b"authorization") and not (
        b"public" in control or b"s-maxage" in control or b"must-revalidate" in control
    ):
        return "authorization"
    if not rules.store_set_cookie and has_field(response_headers, b"set-cookie"):
        return "set-cookie"
    if vary_names(response_headers) is None:
        return "vary-star"
    explicit = (
        b"public" in control
        or b"max-age" in control
        or b"s-maxage" in control
        or (not targeted and has_field(response_headers, b"expires"))
    )
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return "no-freshness"
    return None


def headers_to_store(headers: Headers, connection: frozenset[bytes] = frozenset()) -> Headers:
    """The response fields to store: all but hop-by-hop and proxy-specific ones.

    RFC 9111 §3.1: "Caches MUST include all received response header fields
    [...] when storing a response", except that the Connection field and the
    fields it names "MAY be" removed before storage, and Proxy-Authenticate,
    Proxy-Authentication-Info and Proxy-Authorization "MUST NOT be stored".
    ``connection`` is the response's Connection tokens (lower-case).
    """
    return [pair for pair in headers if not (is_hop_by_hop(name := pair[0].lower()) or name in connection)]


# --- freshness (RFC 9111 §4.2) -------------------------------------------------------


def _date_value(headers: Headers, response_time: float) -> float:
    # RFC 9110 §6.6.1: a response without (a valid) Date is dated when received.
    values = field_values(headers, b"date")
    date = parse_http_date(values[0]) if values else None
    return response_time if date is None else date


def freshness_lifetime(
    status: int, headers: Headers, response_time: float, rules: CacheRules, control: CacheControl | None = None,
    targeted: bool = False,
) -> tuple[float, bool]:  # fmt: skip
    """``(freshness_lifetime, heuristic)`` in seconds, by RFC 9111 §4.2.1, else §4.2.2.

    "If the cache is shared and the s-maxage response directive is present,
    use its value, or If the max-age response directive is present, use its
    value, or If the Expires response header field is present, use its value
    minus the value of the Date response header field (using the time the
    message was received if it is not present [...]), or Otherwise, no explicit
    expiration time is present in the response. A heuristic freshness lifetime
    might be applicable". An invalid max-age/s-maxage, an invalid Expires
    (§5.3: "especially the value "0"") or conflicting repeats mean 0 (stale).
    Expires is ignored when a targeted field supplied ``control``.
    """
    if control is None:
        control, targeted = response_directives(headers, rules.targets)
    for name in (b"s-maxage", b"max-age"):
        seconds = control.seconds(name)
        if seconds is not None:
            return (0.0 if seconds == INVALID else float(seconds)), False
    date = _date_value(headers, response_time)
    if not targeted:
        expires_values = field_values(headers, b"expires")
        if expires_values:
            expires = parse_http_date(expires_values[0])
            if expires is None or any(v != expires_values[0] for v in expires_values):
                return 0.0, False
            return max(0.0, expires - date), False
    # RFC 9111 §4.2.2: heuristics only for heuristically cacheable statuses and
    # responses "marked as explicitly cacheable (e.g., with a public response
    # directive)"; "no more than some fraction of the interval since" Last-Modified.
    if status in HEURISTICALLY_CACHEABLE or b"public" in control:
        values = field_values(headers, b"last-modified")
        modified = parse_http_date(values[0]) if values else None
        if modified is not None and date > modified:
            return min((date - modified) * rules.heuristic_fraction, rules.heuristic_max), True
    return 0.0, False


def corrected_initial_age(age_value: float, date_value: float, request_time: float, response_time: float) -> float:
    """RFC 9111 §4.2.3, the age of a response when it arrived.

    ::

        apparent_age = max(0, response_time - date_value);
        response_delay = response_time - request_time;
        corrected_age_value = age_value + response_delay;
        corrected_initial_age = max(apparent_age, corrected_age_value);
    """
    apparent_age = max(0.0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """RFC 9111 §4.2.3: ``resident_time = now - response_time; current_age =
    corrected_initial_age + resident_time``.

    A clock that went backwards would make resident_time negative; it counts
    as 0, so an entry never grows younger.
    """
    return initial_age + max(0.0, now - response_time)


def _age_header(headers: Headers) -> float:
    # RFC 9111 §5.1: Age = delta-seconds. Absent: 0. Invalid or repeated with
    # different values: the age is unknown, so it counts as the largest one
    # (the response is stale) rather than as young.
    values = field_values(headers, b"age")
    if not values:
        return 0.0
    seconds = delta_seconds(values[0].strip(b" \t"))
    if seconds is None or any(v != values[0] for v in values):
        return float(DELTA_MAX)
    return float(seconds)


@dataclass(frozen=True, **SLOTS)
class Freshness:
    """What decides the reuse of one stored response, computed once from its head.

    - ``lifetime``: freshness lifetime in seconds (§4.2.1/§4.2.2);
      ``heuristic`` says it was guessed from Last-Modified.
    - ``initial_age``: corrected_initial_age (§4.2.3); with ``response_time``
      it gives the current age at any ``now``.
    - ``no_cache``: the response has ``no-cache``: never reused without
      validation (§5.2.2.4).
    - ``revalidate_when_stale``: ``must-revalidate``, ``proxy-revalidate`` or
      ``s-maxage`` (which "incorporates the semantics of the proxy-revalidate
      response directive", §5.2.2.10): never served stale (§4.2.4).
    - ``stale_while_revalidate``: seconds of staleness in which the response
      may be served while it is revalidated in the background (RFC 5861 §3);
      0 if none.
    - ``stale_if_error``: the response's own ``stale-if-error`` window
      (RFC 5861 §4), or None when it gave none.
    """

    lifetime: float
    initial_age: float
    response_time: float
    heuristic: bool = False
    no_cache: bool = False
    revalidate_when_stale: bool = False
    stale_while_revalidate: float = 0.0
    stale_if_error: float | None = None

    def age(self, now: float) -> float:
        """The current age at ``now`` (RFC 9111 §4.2.3)."""
        return current_age(self.initial_age, self.response_time, now)

    def ttl(self, now: float) -> float:
        """Seconds of freshness left at ``now``; negative once stale (RFC 9211 §2.4)."""
        return self.lifetime - self.age(now)

    def is_fresh(self, now: float) -> bool:
        """RFC 9111 §4.2: ``response_is_fresh = (freshness_lifetime > current_age)``."""
        return self.lifetime > self.age(now)

    @property
    def stale_at(self) -> float:
        """The time at which the response stops being fresh."""
        return self.response_time - self.initial_age + self.lifetime


def _window(control: CacheControl, name: bytes) -> float | None:
    seconds = control.seconds(name)
    if seconds is None:
        return None
    return 0.0 if seconds == INVALID else float(seconds)


def freshness(
    status: int, headers: Headers, request_time: float, response_time: float, rules: CacheRules
) -> Freshness:
    """The :class:`Freshness` of a stored response with this status and head.

    ``request_time`` and ``response_time`` belong to the exchange that produced
    (or last validated) the stored response.
    """
    control, targeted = response_directives(headers, rules.targets)
    lifetime, heuristic = freshness_lifetime(status, headers, response_time, rules, control, targeted)
    initial = corrected_initial_age(
        _age_header(headers), _date_value(headers, response_time), request_time, response_time
    )
    return Freshness(
        lifetime=lifetime,
        initial_age=initial,
        response_time=response_time,
        heuristic=heuristic,
        # RFC 9111 §5.2.2.4 (field-name form read as unqualified: module docstring)
        no_cache=b"no-cache" in control,
        # RFC 9111 §5.2.2.2 must-revalidate, §5.2.2.8 proxy-revalidate, §5.2.2.10 s-maxage
        revalidate_when_stale=(
            b"must-revalidate" in control or b"proxy-revalidate" in control or b"s-maxage" in control
        ),
        stale_while_revalidate=_window(control, b"stale-while-revalidate") or 0.0,
        stale_if_error=_window(control, b"stale-if-error"),
    )


# --- reuse (RFC 9111 §4, §5.2.1) ---------------------------------------------------------


@dataclass(frozen=True, **SLOTS)
class RequestControl:
    """The request's cache directives (RFC 9111 §5.2.1).

    ``max_stale`` is :data:`~gateway.cache.fields.DELTA_MAX` for a bare
    ``max-stale`` ("willing to accept a stale response of any age"). An invalid
    ``max-age`` reads as 0 (the client wants something fresh; we can't tell how
    fresh), an invalid ``min-fresh`` or ``max-stale`` as absent. ``Pragma:
    no-cache`` is not read: RFC 9111 §5.4 deprecates Pragma and no longer
    gives it meaning.
    """

    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: int | None = None


def request_control(headers: Headers) -> RequestControl:
    """The :class:`RequestControl` of a request's head."""
    values = field_values(headers, b"cache-control")
    if not values:
        return _NO_REQUEST_DIRECTIVES
    control = parse_cache_control(values)
    max_age = control.seconds(b"max-age")
    min_fresh = control.seconds(b"min-fresh")
    max_stale: int | None = None
    if b"max-stale" in control:
        max_stale = DELTA_MAX if control.get(b"max-stale") is None else control.seconds(b"max-stale")
        if max_stale == INVALID:
            max_stale = None
    return RequestControl(
        no_cache=b"no-cache" in control,
        no_store=b"no-store" in control,
        only_if_cached=b"only-if-cached" in control,
        max_age=0 if max_age == INVALID else max_age,
        min_fresh=None if min_fresh == INVALID else min_fresh,
        max_stale=max_stale,
    )


_NO_REQUEST_DIRECTIVES = RequestControl()


class Use(enum.Enum):
    """What to do with a request given what the cache holds for it."""

    #: Nothing stored matches: forward the request.
    MISS = "miss"
    #: Nothing usable and the request says ``only-if-cached``: answer 504
    #: (RFC 9111 §5.2.1.7).
    UNAVAILABLE = "unavailable"
    #: Serve the stored response as is.
    FRESH = "fresh"
    #: Serve the stale stored response: the request's ``max-stale`` allows it.
    STALE = "stale"
    #: Serve the stale stored response and revalidate it in the background,
    #: once per entry however many requests see it (RFC 5861 §3).
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    #: Forward a conditional request (validation.revalidation_headers); on a
    #: failure :func:`stale_if_error` says whether the stored response may
    #: stand in.
    REVALIDATE = "revalidate"


@dataclass(frozen=True, **SLOTS)
class Verdict:
    """The decision for one request, with the stored response's current ``age`` and ``ttl``."""

    use: Use
    age: float = 0.0
    ttl: float = 0.0

    @property
    def from_cache(self) -> bool:
        """Whether the stored response is sent without asking the origin first."""
        return self.use in _FROM_CACHE


_FROM_CACHE = frozenset({Use.FRESH, Use.STALE, Use.STALE_WHILE_REVALIDATE})


def decide(stored: Freshness | None, request: RequestControl, now: float) -> Verdict:
    """Whether a matching stored response (None: none) may answer a request at ``now``.

    RFC 9111 §4: a stored response is reused only if it "does not contain the
    no-cache directive [...] unless it is successfully validated" and is
    "fresh [...], or allowed to be served stale [...], or successfully
    validated". In order:

    1. Response ``no-cache`` (§5.2.2.4) or request ``no-cache`` (§5.2.1.4):
       revalidate.
    2. Request ``max-age``: "the client prefers a response whose age is less
       than or equal to the specified number of seconds" (§5.2.1.1).
    3. Fresh: serve, unless ``min-fresh`` asks for more freshness than is left
       (§5.2.1.3).
    4. Stale and ``must-revalidate``/``proxy-revalidate``/``s-maxage``: "once
       the response has become stale, a cache MUST NOT reuse that response to
       satisfy another request until it has been successfully validated"
       (§5.2.2.2, §4.2.4); this beats max-stale and stale-while-revalidate.
    5. Request ``max-stale`` covers the staleness (§5.2.1.2), and no
       ``min-fresh`` contradicts it: serve stale.
    6. Within ``stale-while-revalidate``: serve stale, revalidate in background.
    7. Otherwise revalidate.

    Whenever the answer would be to ask the origin and the request says
    ``only-if-cached``, it is :attr:`Use.UNAVAILABLE` instead (§5.2.1.7).
    """
    if stored is None:
        return _UNAVAILABLE if request.only_if_cached else _MISS
    age = stored.age(now)
    ttl = stored.lifetime - age
    forward = Verdict(Use.UNAVAILABLE if request.only_if_cached else Use.REVALIDATE, age, ttl)
    if stored.no_cache or request.no_cache:
        return forward
    if request.max_age is not None and age > request.max_age:
        return forward
    if ttl > 0:
        if request.min_fresh is not None and ttl < request.min_fresh:
            return forward
        return Verdict(Use.FRESH, age, ttl)
    staleness = -ttl
    if stored.revalidate_when_stale or request.min_fresh is not None:
        return forward
    if request.max_stale is not None and staleness <= request.max_stale:
        return Verdict(Use.STALE, age, ttl)
    # RFC 5861 §3: "the cache MAY serve the response in which it appears after
    # it becomes stale, up to the indicated number of seconds."
    if stored.stale_while_revalidate > 0 and staleness <= stored.stale_while_revalidate:
        return Verdict(Use.STALE_WHILE_REVALIDATE, age, ttl)
    return forward


_MISS = Verdict(Use.MISS)
_UNAVAILABLE = Verdict(Use.UNAVAILABLE)


def stale_if_error(stored: Freshness, now: float, rules: CacheRules) -> bool:
    """Whether ``stored`` may answer a request whose forwarding failed at ``now``.

    Failure: no connection, a timeout, no server up, or an upstream status in
    :data:`ERROR_STATUSES` (RFC 9111 §4.3.3 lets a cache treat a 5xx to a
    validation "as if the server failed to respond"). RFC 5861 §4:
    stale-if-error allows a stale response "when an error is encountered", for
    up to its window; ``rules.default_stale_if_error`` stands in when the origin
    gave none. A still-fresh response may always stand in. Never with
    ``no-cache`` (§5.2.2.4: not without successful validation) nor, once stale,
    with ``must-revalidate``/``proxy-revalidate``/``s-maxage``: §5.2.2.2 says "if
    a cache is disconnected, the cache MUST generate an error response rather
    than reuse the stale response", and the most restrictive directive wins
    (§4.2.1). The request's own ``stale-if-error`` is not read.
    """
    if stored.no_cache:
        return False
    staleness = stored.age(now) - stored.lifetime
    if staleness < 0:
        return True
    if stored.revalidate_when_stale:
        return False
    window = stored.stale_if_error if stored.stale_if_error is not None else rules.default_stale_if_error
    return window > 0 and staleness <= window


def retention(stored: Freshness, headers: Headers, rules: CacheRules) -> float:
    """The time after which the stored response is of no use (``inf``: none).

    With a validator (ETag or Last-Modified) a stale response still saves the
    body transfer of a revalidation (RFC 9111 §4.3), so only LRU removes it.
    Without one it is useless once past its stale windows. The store takes this
    as ``keep_until``; the janitor drops such entries first.
    """
    if has_field(headers, b"etag") or has_field(headers, b"last-modified"):
        return float("inf")
    end = stored.stale_at
    if stored.no_cache:
        return end
    if stored.revalidate_when_stale:
        return end
    sie = stored.stale_if_error if stored.stale_if_error is not None else rules.default_stale_if_error
    return end + max(stored.stale_while_revalidate, sie)


# --- the Age field of a served response ----------------------------------------------------


def age_value(age: float) -> bytes:
    """The ``Age`` field value for a current age (RFC 9111 §5.1: delta-seconds).

    Whole seconds, rounded down, at least 0 and at most 2^31 (§1.2.2).
    """
    if age <= 0:
        return b"0"
    return b"%d" % min(int(age), DELTA_MAX)


def with_age(headers: Headers, age: float) -> Headers:
    """``headers`` with every Age field replaced by one for ``age``.

    RFC 9111 §5.1: a cache sends the response's current age; the stored Age
    (the origin's or an upstream cache's) is already counted in it.
    """
    out = [pair for pair in headers if pair[0].lower() != b"age"]
    out.append((b"Age", age_value(age)))
    return out
