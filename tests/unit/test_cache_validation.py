"""Tests for gateway.cache.validation: revalidation, 304 updates, conditional requests from cache."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.validation import (
    freshen,
    head_matches,
    if_range_matches,
    not_modified,
    not_modified_headers,
    origin_preconditions,
    revalidation_headers,
    select_for_update,
)
from gateway.httpdate import http_date

T = 1_700_000_000.0
LM = http_date(T - 3600)


class RevalidationTests(SynchronousTestCase):
    def test_validators_sent(self) -> None:
        """RFC 9111 §4.3.1: send the ETag in If-None-Match and Last-Modified in If-Modified-Since."""
        out = revalidation_headers([(b"Host", b"h")], [(b"ETag", b'"v1"'), (b"Last-Modified", LM)])
        self.assertEqual(out, [(b"Host", b"h"), (b"If-None-Match", b'"v1"'), (b"If-Modified-Since", LM)])

    def test_client_conditionals_and_range_replaced(self) -> None:
        """RFC 9111 §4.3.1: the whole stored response is validated, not the client's subrange."""
        request = [(b"Host", b"h"), (b"If-None-Match", b'"mine"'), (b"Range", b"bytes=0-1"),
                   (b"If-Modified-Since", LM), (b"If-Range", b'"x"')]  # fmt: skip
        out = revalidation_headers(request, [(b"ETag", b'W/"v1"')])
        self.assertEqual(out, [(b"Host", b"h"), (b"If-None-Match", b'W/"v1"')])

    def test_no_validator_unconditional(self) -> None:
        """RFC 9111 §4.3.1: without stored validators the request goes unconditional."""
        self.assertEqual(revalidation_headers([(b"Host", b"h")], [(b"Date", LM)]), [(b"Host", b"h")])

    def test_origin_only_preconditions(self) -> None:
        """RFC 9111 §4.3.2: If-Match and If-Unmodified-Since are not applicable to a cache."""
        self.assertTrue(origin_preconditions([(b"If-Match", b'"a"')]))
        self.assertTrue(origin_preconditions([(b"If-Unmodified-Since", LM)]))
        self.assertFalse(origin_preconditions([(b"If-None-Match", b'"a"')]))


class SelectForUpdateTests(SynchronousTestCase):
    def test_strong_etag_selects_all_matching(self) -> None:
        """RFC 9111 §4.3.4: all stored responses with the same strong validator are updated."""
        stored = [([(b"ETag", b'"a"')], 1.0), ([(b"ETag", b'"b"')], 2.0), ([(b"ETag", b'"a"')], 3.0)]
        self.assertEqual(select_for_update([(b"ETag", b'"a"')], stored), [0, 2])

    def test_strong_without_match_updates_nothing(self) -> None:
        """RFC 9111 §4.3.4: no stored response with the strong validator -> MUST NOT update any."""
        self.assertEqual(select_for_update([(b"ETag", b'"z"')], [([(b"ETag", b'"a"')], 1.0)]), [])

    def test_strong_last_modified(self) -> None:
        """RFC 9110 §8.8.2.2: Last-Modified 60 s or more before Date is a strong validator."""
        new = [(b"Last-Modified", LM), (b"Date", http_date(T))]
        stored = [([(b"Last-Modified", LM)], 1.0), ([(b"Last-Modified", http_date(T - 10))], 2.0)]
        self.assertEqual(select_for_update(new, stored), [0])

    def test_weak_selects_most_recent(self) -> None:
        """RFC 9111 §4.3.4: with only weak validators, the most recent matching response is updated."""
        stored = [([(b"ETag", b'W/"a"')], 5.0), ([(b"ETag", b'"a"')], 9.0), ([(b"ETag", b'"b"')], 12.0)]
        self.assertEqual(select_for_update([(b"ETag", b'W/"a"')], stored), [1])

    def test_no_validators_single_stored(self) -> None:
        """RFC 9111 §4.3.4: no validator anywhere and one stored response -> that one."""
        self.assertEqual(select_for_update([], [([(b"Date", LM)], 1.0)]), [0])
        self.assertEqual(select_for_update([], [([(b"ETag", b'"a"')], 1.0)]), [])
        self.assertEqual(select_for_update([], [([], 1.0), ([], 2.0)]), [])


class FreshenTests(SynchronousTestCase):
    STORED = [
        (b"Date", http_date(T - 100)),
        (b"Cache-Control", b"max-age=60"),
        (b"ETag", b'"v1"'),
        (b"Content-Length", b"5"),
        (b"Content-Encoding", b"gzip"),
        (b"Vary", b"Accept-Encoding"),
        (b"Age", b"30"),
        (b"X-Old", b"kept"),
    ]

    def test_fields_replaced_in_place(self) -> None:
        """RFC 9111 §3.2: each field in the 304 replaces the stored field values."""
        new = [(b"Date", http_date(T)), (b"Cache-Control", b"max-age=600"), (b"X-New", b"1")]
        out = freshen(self.STORED, new, T)
        self.assertEqual(out[0], (b"Date", http_date(T)))
        self.assertEqual(out[1], (b"Cache-Control", b"max-age=600"))
        self.assertIn((b"X-Old", b"kept"), out)
        self.assertEqual(out[-1], (b"X-New", b"1"))

    def test_content_length_kept(self) -> None:
        """RFC 9111 §3.2: the Content-Length header field is never updated."""
        out = freshen(self.STORED, [(b"Content-Length", b"0")], T)
        self.assertEqual([v for n, v in out if n == b"Content-Length"], [b"5"])

    def test_stored_content_dependencies_kept(self) -> None:
        """RFC 9111 §3.2: fields the stored response depends on (coding, Vary) are not updated."""
        out = freshen(self.STORED, [(b"Content-Encoding", b"br"), (b"Vary", b"*")], T)
        self.assertIn((b"Content-Encoding", b"gzip"), out)
        self.assertIn((b"Vary", b"Accept-Encoding"), out)

    def test_hop_by_hop_not_stored(self) -> None:
        """RFC 9111 §3.1: fields excepted from storage are not added by an update."""
        new = [(b"Connection", b"close, x-hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"1"),
               (b"Proxy-Authenticate", b"x")]  # fmt: skip
        out = freshen(self.STORED, new, T)
        names = {n.lower() for n, _ in out}
        self.assertFalse(names & {b"connection", b"x-hop", b"keep-alive", b"proxy-authenticate"})

    def test_age_dropped_without_new_age(self) -> None:
        """RFC 9111 §4.2.3: the 304 is the new message; a stale stored Age must not carry over."""
        out = freshen(self.STORED, [(b"Date", http_date(T))], T)
        self.assertNotIn(b"age", {n.lower() for n, _ in out})
        out = freshen(self.STORED, [(b"Age", b"2")], T)
        self.assertIn((b"Age", b"2"), out)

    def test_date_added_when_missing(self) -> None:
        """RFC 9110 §6.6.1: a response without Date is dated when received."""
        out = freshen(self.STORED, [(b"ETag", b'"v1"')], T + 5)
        self.assertEqual([v for n, v in out if n == b"Date"], [http_date(T + 5)])

    def test_head_matches(self) -> None:
        """RFC 9111 §4.3.5: a HEAD 200 updates a stored GET response only if validators and length match."""
        stored = [(b"ETag", b'"a"'), (b"Content-Length", b"5")]
        self.assertTrue(head_matches(stored, [(b"ETag", b'"a"'), (b"Content-Length", b"5")]))
        self.assertTrue(head_matches(stored, [(b"Cache-Control", b"max-age=5")]))
        self.assertFalse(head_matches(stored, [(b"ETag", b'"b"')]))
        self.assertFalse(head_matches(stored, [(b"Content-Length", b"6")]))
        self.assertFalse(head_matches(stored, [(b"Last-Modified", LM)]))


class ClientConditionalTests(SynchronousTestCase):
    STORED = [(b"ETag", b'"v1"'), (b"Last-Modified", LM), (b"Date", http_date(T))]

    def check(self, request, stored=None, method=b"GET"):
        return not_modified(method, request, self.STORED if stored is None else stored, T)

    def test_if_none_match_weak_comparison(self) -> None:
        """RFC 9110 §13.1.2: If-None-Match uses the weak comparison function."""
        self.assertTrue(self.check([(b"If-None-Match", b'"x", W/"v1"')]))
        self.assertFalse(self.check([(b"If-None-Match", b'"x"')]))

    def test_if_none_match_star(self) -> None:
        """RFC 9110 §13.1.2: "*" matches any current representation."""
        self.assertTrue(self.check([(b"If-None-Match", b"*")]))

    def test_if_none_match_takes_precedence(self) -> None:
        """RFC 9110 §13.2.2: If-Modified-Since is evaluated only without If-None-Match."""
        request = [(b"If-None-Match", b'"other"'), (b"If-Modified-Since", http_date(T))]
        self.assertFalse(self.check(request))

    def test_if_modified_since(self) -> None:
        """RFC 9110 §13.1.3: not modified when Last-Modified is not after the given date."""
        self.assertTrue(self.check([(b"If-Modified-Since", LM)]))
        self.assertFalse(self.check([(b"If-Modified-Since", http_date(T - 7200))]))

    def test_if_modified_since_uses_date(self) -> None:
        """RFC 9111 §4.3.2: without Last-Modified use Date, else the time received."""
        self.assertTrue(self.check([(b"If-Modified-Since", http_date(T))], [(b"Date", http_date(T - 5))]))
        self.assertFalse(self.check([(b"If-Modified-Since", http_date(T - 10))], [(b"Date", http_date(T - 5))]))
        self.assertTrue(self.check([(b"If-Modified-Since", http_date(T))], []))

    def test_invalid_if_modified_since_ignored(self) -> None:
        """RFC 9110 §13.1.3: an invalid date or a list is ignored."""
        self.assertFalse(self.check([(b"If-Modified-Since", b"yesterday")]))
        self.assertFalse(self.check([(b"If-Modified-Since", LM), (b"If-Modified-Since", LM)]))

    def test_only_get_and_head(self) -> None:
        """RFC 9110 §13.1.3: If-Modified-Since is ignored for methods other than GET and HEAD."""
        self.assertFalse(self.check([(b"If-None-Match", b"*")], method=b"POST"))
        self.assertTrue(self.check([(b"If-Modified-Since", LM)], method=b"HEAD"))

    def test_not_modified_headers(self) -> None:
        """RFC 9110 §15.4.5: a 304 carries Date, ETag, Cache-Control, Expires, Vary, Content-Location."""
        stored = self.STORED + [(b"Content-Type", b"text/html"), (b"Content-Length", b"5"), (b"Vary", b"Accept")]
        out = not_modified_headers(stored)
        self.assertEqual({n.lower() for n, _ in out}, {b"etag", b"last-modified", b"date", b"vary"})


class IfRangeTests(SynchronousTestCase):
    STORED = [(b"ETag", b'"v1"'), (b"Last-Modified", LM), (b"Date", http_date(T))]

    def test_absent(self) -> None:
        """RFC 9110 §13.1.5: without If-Range the range is served."""
        self.assertTrue(if_range_matches([], self.STORED))

    def test_strong_etag(self) -> None:
        """RFC 9110 §13.1.5: an entity tag matches by strong comparison only."""
        self.assertTrue(if_range_matches([(b"If-Range", b'"v1"')], self.STORED))
        self.assertFalse(if_range_matches([(b"If-Range", b'W/"v1"')], self.STORED))
        self.assertFalse(if_range_matches([(b"If-Range", b'"v1"')], [(b"ETag", b'W/"v1"')]))

    def test_date(self) -> None:
        """RFC 9110 §13.1.5: a date must exactly match a strong Last-Modified."""
        self.assertTrue(if_range_matches([(b"If-Range", LM)], self.STORED))
        self.assertFalse(if_range_matches([(b"If-Range", http_date(T - 3599))], self.STORED))
        weak = [(b"Last-Modified", LM), (b"Date", http_date(T - 3570))]
        self.assertFalse(if_range_matches([(b"If-Range", LM)], weak))
