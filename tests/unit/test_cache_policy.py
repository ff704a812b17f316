"""Tests for gateway.cache.policy: storability, freshness, Age, and reuse decisions (RFC 9111)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.fields import DELTA_MAX
from gateway.cache.policy import (
    CacheRules,
    Freshness,
    RequestControl,
    Use,
    age_value,
    corrected_initial_age,
    current_age,
    decide,
    freshness,
    freshness_lifetime,
    headers_to_store,
    request_control,
    retention,
    stale_if_error,
    store_refusal,
    target_list,
    with_age,
)
from gateway.httpdate import http_date

T = 1_700_000_000.0  # when the test responses are dated
RULES = CacheRules()


def refusal(status=200, response=(), request=(), method=b"GET", rules=RULES):
    return store_refusal(method, status, list(request), list(response), rules)


def lifetime(response, status=200, response_time=T, rules=RULES):
    return freshness_lifetime(status, list(response), response_time, rules)


def stored(cache_control: bytes, **extra: float) -> Freshness:
    """The Freshness of a 200 dated T, received at T, with ``cache_control``."""
    headers = [(b"Date", http_date(T)), (b"Cache-Control", cache_control)]
    return freshness(200, headers, T, T, CacheRules(**extra))  # type: ignore[arg-type]


class StorabilityTests(SynchronousTestCase):
    def test_heuristic_status_stored(self) -> None:
        """RFC 9111 §3: a heuristically cacheable status (RFC 9110 §15.1) is storable as is."""
        for status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
            self.assertIsNone(refusal(status), status)

    def test_only_get(self) -> None:
        """RFC 9111 §3: only GET responses are stored; HEAD only updates (§4.3.5)."""
        self.assertEqual(refusal(method=b"HEAD"), "method")
        self.assertEqual(refusal(method=b"POST", response=[(b"Cache-Control", b"max-age=60")]), "method")

    def test_non_final_and_304_not_stored(self) -> None:
        """RFC 9111 §3: "the response status code is final"; a 304 only updates (§4.3.4)."""
        self.assertEqual(refusal(101), "status")
        self.assertEqual(refusal(304, [(b"Cache-Control", b"max-age=60")]), "status")

    def test_partial_not_stored(self) -> None:
        """RFC 9111 §3.3: a cache that does not combine partial content stores no 206."""
        self.assertEqual(refusal(206, [(b"Cache-Control", b"max-age=60")]), "partial")

    def test_other_status_needs_explicit_freshness(self) -> None:
        """RFC 9111 §3: a status that is not heuristically cacheable needs explicit freshness."""
        self.assertEqual(refusal(302), "no-freshness")
        self.assertIsNone(refusal(302, [(b"Cache-Control", b"max-age=60")]))
        self.assertIsNone(refusal(500, [(b"Cache-Control", b"s-maxage=5")]))
        self.assertIsNone(refusal(307, [(b"Expires", http_date(T + 60))]))

    def test_public_allows_other_status(self) -> None:
        """RFC 9111 §3: a public response directive makes a response storable."""
        self.assertIsNone(refusal(302, [(b"Cache-Control", b"public")]))

    def test_no_store(self) -> None:
        """RFC 9111 §5.2.2.5: no-store forbids storing."""
        self.assertEqual(refusal(response=[(b"Cache-Control", b"no-store, max-age=60")]), "no-store")

    def test_request_no_store(self) -> None:
        """RFC 9111 §5.2.1.5: a request no-store forbids storing the response to it."""
        self.assertEqual(refusal(request=[(b"Cache-Control", b"no-store")]), "request-no-store")

    def test_must_understand_overrides_no_store(self) -> None:
        """RFC 9111 §5.2.2.3: with must-understand and an understood status, no-store is ignored."""
        self.assertIsNone(refusal(response=[(b"Cache-Control", b"must-understand, no-store, max-age=60")]))

    def test_must_understand_unknown_status(self) -> None:
        """RFC 9111 §3: with must-understand the cache must understand the status code."""
        response = [(b"Cache-Control", b"must-understand, no-store, max-age=60")]
        self.assertEqual(refusal(299, response), "must-understand")

    def test_private(self) -> None:
        """RFC 9111 §5.2.2.7: a shared cache MUST NOT store a private response."""
        self.assertEqual(refusal(response=[(b"Cache-Control", b"private, max-age=60")]), "private")

    def test_qualified_private_treated_as_unqualified(self) -> None:
        """RFC 9111 §5.2.2.7: private="field" read as plain private (stricter; documented)."""
        self.assertEqual(refusal(response=[(b"Cache-Control", b'private="Set-Cookie"')]), "private")

    def test_authorization_refused(self) -> None:
        """RFC 9111 §3.5: responses to requests with Authorization are not stored by default."""
        self.assertEqual(refusal(request=[(b"Authorization", b"Basic eDp5")],
                                 response=[(b"Cache-Control", b"max-age=60")]), "authorization")  # fmt: skip

    def test_authorization_allowed_by_directives(self) -> None:
        """RFC 9111 §3.5: must-revalidate, public and s-maxage allow storing."""
        for directive in (b"public", b"s-maxage=60", b"must-revalidate, max-age=60"):
            self.assertIsNone(
                refusal(request=[(b"Authorization", b"Basic eDp5")], response=[(b"Cache-Control", directive)]),
                directive,
            )

    def test_set_cookie_refused_by_default(self) -> None:
        """RFC 9111 §7.3 lets a cache store Set-Cookie; by default (like nginx, Varnish) it does not."""
        self.assertEqual(refusal(response=[(b"Set-Cookie", b"a=b")]), "set-cookie")

    def test_set_cookie_option(self) -> None:
        """RFC 9111 §3.1: with store_set_cookie the field is stored with the response."""
        self.assertIsNone(refusal(response=[(b"Set-Cookie", b"a=b")], rules=CacheRules(store_set_cookie=True)))

    def test_vary_star(self) -> None:
        """RFC 9111 §4.1: Vary: * always fails to match, so it is not stored."""
        self.assertEqual(refusal(response=[(b"Vary", b"Accept, *")]), "vary-star")

    def test_targeted_field_overrides_no_store(self) -> None:
        """RFC 9213 §2.2: with a valid CDN-Cache-Control the cache ignores Cache-Control."""
        response = [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60")]
        self.assertIsNone(refusal(response=response))

    def test_targeted_no_store(self) -> None:
        """RFC 9213 §2.2: no-store in the targeted field forbids storing despite Cache-Control."""
        response = [(b"Cache-Control", b"max-age=60"), (b"CDN-Cache-Control", b"no-store")]
        self.assertEqual(refusal(response=response), "no-store")

    def test_own_targeted_field_first(self) -> None:
        """RFC 9213 §2.2: the gateway's own field comes before CDN-Cache-Control in the target list."""
        rules = CacheRules(targets=target_list(b"Gateway-Cache-Control"))
        response = [(b"CDN-Cache-Control", b"no-store"), (b"Gateway-Cache-Control", b"max-age=60")]
        self.assertIsNone(refusal(response=response, rules=rules))
        self.assertEqual(target_list(None), (b"cdn-cache-control",))

    def test_headers_to_store(self) -> None:
        """RFC 9111 §3.1: Connection, fields it names and proxy-specific fields are not stored."""
        headers = [(b"Connection", b"x-hop"), (b"X-Hop", b"1"), (b"Proxy-Authenticate", b"Basic"),
                   (b"Keep-Alive", b"timeout=5"), (b"ETag", b'"1"')]  # fmt: skip
        self.assertEqual(headers_to_store(headers, frozenset({b"x-hop"})), [(b"ETag", b'"1"')])

    def test_rules_checked(self) -> None:
        """Every knob is validated at construction."""
        self.assertRaises(ValueError, CacheRules, heuristic_fraction=1.5)
        self.assertRaises(ValueError, CacheRules, heuristic_max=-1)
        self.assertRaises(ValueError, CacheRules, default_stale_if_error=-1)


class LifetimeTests(SynchronousTestCase):
    def test_s_maxage_first(self) -> None:
        """RFC 9111 §4.2.1: a shared cache uses s-maxage over max-age."""
        self.assertEqual(lifetime([(b"Cache-Control", b"max-age=10, s-maxage=20")]), (20.0, False))

    def test_max_age_over_expires(self) -> None:
        """RFC 9111 §4.2.1: max-age over Expires."""
        headers = [(b"Date", http_date(T)), (b"Expires", http_date(T + 500)), (b"Cache-Control", b"max-age=10")]
        self.assertEqual(lifetime(headers), (10.0, False))

    def test_expires_minus_date(self) -> None:
        """RFC 9111 §4.2.1: Expires minus Date."""
        headers = [(b"Date", http_date(T - 100)), (b"Expires", http_date(T + 200))]
        self.assertEqual(lifetime(headers), (300.0, False))

    def test_expires_without_date(self) -> None:
        """RFC 9111 §4.2.1: without Date, the time the message was received stands in."""
        self.assertEqual(lifetime([(b"Expires", http_date(T + 60))], response_time=T), (60.0, False))

    def test_expires_in_past(self) -> None:
        """RFC 9111 §4.2.1: an Expires before Date gives no freshness."""
        headers = [(b"Date", http_date(T)), (b"Expires", http_date(T - 60))]
        self.assertEqual(lifetime(headers), (0.0, False))

    def test_invalid_expires(self) -> None:
        """RFC 9111 §5.3: an invalid date, especially "0", is a time in the past."""
        self.assertEqual(lifetime([(b"Expires", b"0"), (b"Last-Modified", http_date(T - 1000))]), (0.0, False))

    def test_invalid_max_age_is_stale(self) -> None:
        """RFC 9111 §4.2.1: responses with invalid freshness information are considered stale."""
        self.assertEqual(lifetime([(b"Cache-Control", b"max-age=abc")]), (0.0, False))

    def test_heuristic_ten_percent(self) -> None:
        """RFC 9111 §4.2.2: heuristic lifetime is a fraction (10%) of Date - Last-Modified."""
        headers = [(b"Date", http_date(T)), (b"Last-Modified", http_date(T - 1000))]
        self.assertEqual(lifetime(headers), (100.0, True))

    def test_heuristic_capped(self) -> None:
        """RFC 9111 §4.2.2: the heuristic is capped by heuristic_max (default one day)."""
        headers = [(b"Date", http_date(T)), (b"Last-Modified", http_date(T - 365 * 86400))]
        self.assertEqual(lifetime(headers), (86400.0, True))
        self.assertEqual(lifetime(headers, rules=CacheRules(heuristic_max=60)), (60.0, True))

    def test_no_heuristic_for_other_statuses(self) -> None:
        """RFC 9111 §4.2.2: heuristics only for heuristically cacheable statuses or public."""
        headers = [(b"Date", http_date(T)), (b"Last-Modified", http_date(T - 1000))]
        self.assertEqual(lifetime(headers, status=302), (0.0, False))
        self.assertEqual(lifetime(headers + [(b"Cache-Control", b"public")], status=302), (100.0, True))

    def test_no_heuristic_when_modified_after_date(self) -> None:
        """RFC 9111 §4.2.2: a Last-Modified not before Date gives no heuristic freshness."""
        headers = [(b"Date", http_date(T)), (b"Last-Modified", http_date(T + 10))]
        self.assertEqual(lifetime(headers), (0.0, False))

    def test_targeted_max_age(self) -> None:
        """RFC 9213 §2.2: CDN-Cache-Control's max-age replaces Cache-Control's."""
        headers = [(b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", b"max-age=600")]
        self.assertEqual(lifetime(headers), (600.0, False))

    def test_targeted_ignores_expires(self) -> None:
        """RFC 9213 §2.2: with a valid targeted field the cache MUST ignore Expires."""
        headers = [(b"Date", http_date(T)), (b"Expires", http_date(T + 60)), (b"CDN-Cache-Control", b"public")]
        self.assertEqual(lifetime(headers), (0.0, False))


class AgeTests(SynchronousTestCase):
    def test_apparent_age_wins(self) -> None:
        """RFC 9111 §4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value)."""
        # apparent_age = 102 - 95 = 7; corrected_age_value = 3 + (102 - 100) = 5
        self.assertEqual(corrected_initial_age(3, 95, 100, 102), 7)

    def test_corrected_age_value_wins(self) -> None:
        """RFC 9111 §4.2.3: corrected_age_value = age_value + response_delay."""
        # apparent_age = max(0, 102 - 103) = 0; corrected_age_value = 10 + 2 = 12
        self.assertEqual(corrected_initial_age(10, 103, 100, 102), 12)

    def test_resident_time(self) -> None:
        """RFC 9111 §4.2.3: current_age = corrected_initial_age + (now - response_time)."""
        self.assertEqual(current_age(12, 102, 150), 60)

    def test_clock_going_back(self) -> None:
        """RFC 9111 §4.2.3: a negative resident time (clock went back) never makes an entry younger."""
        self.assertEqual(current_age(12, 102, 90), 12)

    def test_stored_response_age_over_time(self) -> None:
        """RFC 9111 §4.2.3 end to end: Date, Age, request and response times, then a Clock."""
        clock = Clock()
        clock.advance(T)
        request_time = clock.seconds()
        clock.advance(2)
        response_time = clock.seconds()
        headers = [(b"Date", http_date(T - 5)), (b"Age", b"4"), (b"Cache-Control", b"max-age=60")]
        fresh = freshness(200, headers, request_time, response_time, RULES)
        # apparent_age = 7, corrected_age_value = 4 + 2 = 6 -> 7
        self.assertEqual(fresh.initial_age, 7)
        clock.advance(30)
        self.assertEqual(fresh.age(clock.seconds()), 37)
        self.assertEqual(fresh.ttl(clock.seconds()), 23)
        clock.advance(23)
        self.assertFalse(fresh.is_fresh(clock.seconds()))

    def test_missing_date(self) -> None:
        """RFC 9110 §6.6.1: without Date the response is dated on receipt, so apparent_age is 0."""
        fresh = freshness(200, [(b"Age", b"3")], T, T + 1, RULES)
        self.assertEqual(fresh.initial_age, 4)

    def test_invalid_age_is_old(self) -> None:
        """RFC 9111 §5.1: Age is delta-seconds; an unreadable Age counts as very old (stale)."""
        fresh = freshness(200, [(b"Age", b"soon"), (b"Cache-Control", b"max-age=60")], T, T, RULES)
        self.assertFalse(fresh.is_fresh(T))

    def test_age_value(self) -> None:
        """RFC 9111 §5.1: the Age value is whole seconds, never negative, capped at 2^31."""
        self.assertEqual(age_value(7.9), b"7")
        self.assertEqual(age_value(-3), b"0")
        self.assertEqual(age_value(1e12), b"%d" % DELTA_MAX)

    def test_with_age_replaces(self) -> None:
        """RFC 9111 §5.1: the served Age replaces the stored one."""
        self.assertEqual(with_age([(b"age", b"3"), (b"ETag", b'"x"')], 12.5), [(b"ETag", b'"x"'), (b"Age", b"12")])


class RequestControlTests(SynchronousTestCase):
    def test_directives(self) -> None:
        """RFC 9111 §5.2.1: max-age, min-fresh, max-stale, no-cache, no-store, only-if-cached."""
        control = request_control(
            [(b"Cache-Control", b"max-age=5, min-fresh=6, max-stale=7, no-cache, no-store, only-if-cached")]
        )
        self.assertEqual(control, RequestControl(True, True, True, 5, 6, 7))

    def test_bare_max_stale(self) -> None:
        """RFC 9111 §5.2.1.2: max-stale without a value accepts a stale response of any age."""
        self.assertEqual(request_control([(b"Cache-Control", b"max-stale")]).max_stale, DELTA_MAX)

    def test_invalid_max_age_is_zero(self) -> None:
        """RFC 9111 §5.2.1.1: an unreadable max-age is taken as 0 (revalidate), not ignored."""
        self.assertEqual(request_control([(b"Cache-Control", b"max-age=x")]).max_age, 0)

    def test_pragma_ignored(self) -> None:
        """RFC 9111 §5.4: Pragma is deprecated; it is not read."""
        self.assertEqual(request_control([(b"Pragma", b"no-cache")]), RequestControl())


class DecideTests(SynchronousTestCase):
    def test_miss(self) -> None:
        """RFC 9111 §4: with nothing stored the request is forwarded."""
        self.assertEqual(decide(None, RequestControl(), T).use, Use.MISS)

    def test_miss_only_if_cached(self) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached with nothing stored gets 504."""
        self.assertEqual(decide(None, RequestControl(only_if_cached=True), T).use, Use.UNAVAILABLE)

    def test_fresh(self) -> None:
        """RFC 9111 §4.2: fresh when freshness_lifetime > current_age; ttl is what is left."""
        verdict = decide(stored(b"max-age=60"), RequestControl(), T + 10)
        self.assertEqual((verdict.use, verdict.age, verdict.ttl), (Use.FRESH, 10, 50))
        self.assertTrue(verdict.from_cache)

    def test_stale_revalidates(self) -> None:
        """RFC 9111 §4.2.4: a stale response is not served without permission; it is revalidated."""
        verdict = decide(stored(b"max-age=60"), RequestControl(), T + 60)
        self.assertEqual(verdict.use, Use.REVALIDATE)
        self.assertFalse(verdict.from_cache)

    def test_response_no_cache(self) -> None:
        """RFC 9111 §5.2.2.4: no-cache responses are never reused without validation."""
        self.assertEqual(decide(stored(b"no-cache, max-age=60"), RequestControl(), T).use, Use.REVALIDATE)
        self.assertEqual(decide(stored(b'no-cache="Set-Cookie", max-age=60'), RequestControl(), T).use,
                         Use.REVALIDATE)  # fmt: skip

    def test_request_no_cache(self) -> None:
        """RFC 9111 §5.2.1.4: request no-cache asks for validation at the origin."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(no_cache=True), T).use, Use.REVALIDATE)

    def test_request_max_age(self) -> None:
        """RFC 9111 §5.2.1.1: the client wants a response no older than max-age."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(max_age=5), T + 10).use, Use.REVALIDATE)
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(max_age=10), T + 10).use, Use.FRESH)

    def test_min_fresh(self) -> None:
        """RFC 9111 §5.2.1.3: the client wants at least min-fresh seconds of freshness left."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(min_fresh=20), T + 50).use, Use.REVALIDATE)
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(min_fresh=10), T + 50).use, Use.FRESH)

    def test_max_stale_with_value(self) -> None:
        """RFC 9111 §5.2.1.2: max-stale=N accepts a response stale by no more than N seconds."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(max_stale=10), T + 70).use, Use.STALE)
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(max_stale=10), T + 71).use, Use.REVALIDATE)

    def test_max_stale_without_value(self) -> None:
        """RFC 9111 §5.2.1.2: bare max-stale accepts any staleness."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(max_stale=DELTA_MAX), T + 10**6).use, Use.STALE)

    def test_must_revalidate_beats_max_stale(self) -> None:
        """RFC 9111 §5.2.2.2: once stale, a must-revalidate response MUST NOT be reused unvalidated."""
        for directive in (b"max-age=60, must-revalidate", b"max-age=60, proxy-revalidate", b"s-maxage=60"):
            self.assertEqual(
                decide(stored(directive), RequestControl(max_stale=DELTA_MAX), T + 61).use, Use.REVALIDATE, directive
            )

    def test_stale_while_revalidate(self) -> None:
        """RFC 5861 §3: within stale-while-revalidate, serve stale and revalidate in the background."""
        fresh = stored(b"max-age=60, stale-while-revalidate=30")
        self.assertEqual(decide(fresh, RequestControl(), T + 90).use, Use.STALE_WHILE_REVALIDATE)
        self.assertEqual(decide(fresh, RequestControl(), T + 91).use, Use.REVALIDATE)

    def test_s_maxage_disables_stale_while_revalidate(self) -> None:
        """RFC 9111 §5.2.2.10: s-maxage implies proxy-revalidate, which forbids serving stale (§4.2.4)."""
        fresh = stored(b"s-maxage=60, stale-while-revalidate=30")
        self.assertEqual(decide(fresh, RequestControl(), T + 70).use, Use.REVALIDATE)

    def test_request_no_cache_beats_stale_while_revalidate(self) -> None:
        """RFC 9111 §5.2.1.4: a client's no-cache is not answered with an unvalidated stale response."""
        fresh = stored(b"max-age=60, stale-while-revalidate=30")
        self.assertEqual(decide(fresh, RequestControl(no_cache=True), T + 70).use, Use.REVALIDATE)

    def test_only_if_cached_stale(self) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached with nothing usable gets 504."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(only_if_cached=True), T + 61).use,
                         Use.UNAVAILABLE)  # fmt: skip

    def test_only_if_cached_fresh(self) -> None:
        """RFC 9111 §5.2.1.7: only-if-cached is answered with a usable stored response."""
        self.assertEqual(decide(stored(b"max-age=60"), RequestControl(only_if_cached=True), T).use, Use.FRESH)


class StaleIfErrorTests(SynchronousTestCase):
    def test_within_window(self) -> None:
        """RFC 5861 §4: stale-if-error=N allows a stale response for N seconds when the origin fails."""
        fresh = stored(b"max-age=60, stale-if-error=100")
        self.assertTrue(stale_if_error(fresh, T + 160, RULES))
        self.assertFalse(stale_if_error(fresh, T + 161, RULES))

    def test_default_window(self) -> None:
        """RFC 9111 §4.2.4: a configured default window stands in when the origin gives none."""
        self.assertTrue(stale_if_error(stored(b"max-age=60"), T + 100, CacheRules(default_stale_if_error=50)))
        self.assertFalse(stale_if_error(stored(b"max-age=60"), T + 100, RULES))

    def test_origin_window_beats_default(self) -> None:
        """RFC 5861 §4: the origin's own window wins over the configured default."""
        fresh = stored(b"max-age=60, stale-if-error=10")
        self.assertFalse(stale_if_error(fresh, T + 100, CacheRules(default_stale_if_error=500)))

    def test_must_revalidate(self) -> None:
        """RFC 9111 §5.2.2.2: a disconnected cache MUST NOT reuse a stale must-revalidate response."""
        fresh = stored(b"max-age=60, must-revalidate, stale-if-error=100")
        self.assertFalse(stale_if_error(fresh, T + 70, RULES))

    def test_no_cache(self) -> None:
        """RFC 9111 §5.2.2.4: a no-cache response is never used without successful validation."""
        self.assertFalse(stale_if_error(stored(b"no-cache, stale-if-error=100"), T, RULES))

    def test_fresh_stands_in(self) -> None:
        """RFC 9111 §4.3.3: a still-fresh stored response may answer when validation fails."""
        self.assertTrue(stale_if_error(stored(b"max-age=60, must-revalidate"), T + 10, RULES))


class RetentionTests(SynchronousTestCase):
    def test_validators_keep_forever(self) -> None:
        """RFC 9111 §4.3: a stale response with a validator is still useful for revalidation."""
        headers = [(b"ETag", b'"1"')]
        self.assertEqual(retention(stored(b"max-age=60"), headers, RULES), float("inf"))

    def test_without_validators(self) -> None:
        """RFC 5861: without validators an entry is useless past its stale windows."""
        fresh = stored(b"max-age=60, stale-while-revalidate=30, stale-if-error=100")
        self.assertEqual(retention(fresh, [], RULES), T + 160)
        self.assertEqual(retention(stored(b"max-age=60, must-revalidate"), [], RULES), T + 60)
