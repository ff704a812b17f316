"""Tests for gateway.cache.fields and gateway.cache.directives: field syntax the cache reads."""

from __future__ import annotations

import calendar

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.directives import INVALID, CacheControl, parse_cache_control, parse_targeted, response_directives
from gateway.cache.fields import (
    DELTA_MAX,
    delta_seconds,
    entity_tags,
    list_members,
    parse_entity_tag,
    parse_http_date,
    strong_match,
    weak_match,
)

NOV_6_1994 = float(calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0)))


class ListTests(SynchronousTestCase):
    def test_members_are_stripped_and_empties_dropped(self) -> None:
        """RFC 9110 §5.6.1: OWS around list members is removed, empty members ignored."""
        self.assertEqual(list_members([b" a ,, b\t", b"c"]), [b"a", b"b", b"c"])

    def test_commas_in_quoted_strings_do_not_split(self) -> None:
        """RFC 9110 §5.6.4: a quoted-string is one value, commas and escaped quotes included."""
        self.assertEqual(list_members([b'a="x, \\"y", b']), [b'a="x, \\"y"', b"b"])

    def test_entity_tags_take_backslash_literally(self) -> None:
        """RFC 9110 §8.8.3: etagc includes backslash; entity tags have no quoted-pair."""
        self.assertEqual(entity_tags([b'"a\\", "b"']), [(False, b'"a\\"'), (False, b'"b"')])


class DeltaSecondsTests(SynchronousTestCase):
    def test_digits(self) -> None:
        """RFC 9111 §1.2.2: delta-seconds = 1*DIGIT."""
        self.assertEqual(delta_seconds(b"60"), 60)

    def test_capped_at_two_to_the_31(self) -> None:
        """RFC 9111 §1.2.2: an overflowing value MUST be taken as 2147483648."""
        self.assertEqual(delta_seconds(b"99999999999999999999999"), DELTA_MAX)
        self.assertEqual(delta_seconds(b"2147483649"), DELTA_MAX)

    def test_quoted_form_accepted(self) -> None:
        """RFC 9111 §5.2: recipients ought to accept both token and quoted-string forms."""
        self.assertEqual(delta_seconds(b'"30"'), 30)

    def test_invalid(self) -> None:
        """RFC 9111 §1.2.2: anything but digits is not delta-seconds."""
        for value in (b"", b"-1", b"1.5", b"ten", None):
            self.assertIsNone(delta_seconds(value))


class HttpDateTests(SynchronousTestCase):
    def test_imf_fixdate(self) -> None:
        """RFC 9110 §5.6.7: the preferred IMF-fixdate format."""
        self.assertEqual(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), NOV_6_1994)

    def test_rfc850(self) -> None:
        """RFC 9110 §5.6.7: recipients MUST accept the obsolete RFC 850 format."""
        self.assertEqual(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), NOV_6_1994)

    def test_asctime(self) -> None:
        """RFC 9110 §5.6.7: recipients MUST accept the asctime format."""
        self.assertEqual(parse_http_date(b"Sun Nov  6 08:49:37 1994"), NOV_6_1994)

    def test_invalid_values(self) -> None:
        """RFC 9111 §5.3: "0" and other non-dates are not HTTP-dates."""
        for value in (b"0", b"", b"Sun, 31 Feb 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 25:49:37 GMT",
                      b"Sun, 06 Xyz 1994 08:49:37 GMT", b"yesterday"):  # fmt: skip
            self.assertIsNone(parse_http_date(value), value)


class EntityTagTests(SynchronousTestCase):
    def test_strong_and_weak(self) -> None:
        """RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag."""
        self.assertEqual(parse_entity_tag(b'"abc"'), (False, b'"abc"'))
        self.assertEqual(parse_entity_tag(b'W/"abc"'), (True, b'"abc"'))
        self.assertIsNone(parse_entity_tag(b"abc"))

    def test_comparison(self) -> None:
        """RFC 9110 §8.8.3.2: weak comparison ignores W/, strong comparison needs both strong."""
        self.assertTrue(weak_match((True, b'"1"'), (False, b'"1"')))
        self.assertFalse(strong_match((True, b'"1"'), (False, b'"1"')))
        self.assertTrue(strong_match((False, b'"1"'), (False, b'"1"')))

    def test_star(self) -> None:
        """RFC 9110 §13.1.2: If-None-Match "*" is the empty list here; garbage is None."""
        self.assertEqual(entity_tags([b"*"]), [])
        self.assertIsNone(entity_tags([b"nope"]))


class CacheControlTests(SynchronousTestCase):
    def test_names_case_insensitive(self) -> None:
        """RFC 9111 §5.2: directive names are compared case-insensitively."""
        control = parse_cache_control([b"No-Store, MAX-AGE=5"])
        self.assertIn(b"no-store", control)
        self.assertEqual(control.seconds(b"max-age"), 5)

    def test_lines_combined(self) -> None:
        """RFC 9110 §5.3: several field lines are one comma-separated list."""
        control = parse_cache_control([b"public", b"max-age=10"])
        self.assertIn(b"public", control)
        self.assertEqual(control.seconds(b"max-age"), 10)

    def test_quoted_argument_unquoted(self) -> None:
        """RFC 9111 §5.2: arguments may be quoted-strings; the quotes are not part of the value."""
        control = parse_cache_control([b'no-cache="Set-Cookie, X-Foo", max-age="7"'])
        self.assertEqual(control.get(b"no-cache"), b"Set-Cookie, X-Foo")
        self.assertEqual(control.seconds(b"max-age"), 7)

    def test_conflicting_repeat_is_invalid(self) -> None:
        """RFC 9111 §4.2.1: conflicting repeated directives may make the response stale."""
        control = parse_cache_control([b"max-age=5, max-age=50"])
        self.assertEqual(control.seconds(b"max-age"), INVALID)

    def test_identical_repeat_is_fine(self) -> None:
        """RFC 9111 §4.2.1: a repeated directive with one value is that value."""
        self.assertEqual(parse_cache_control([b"max-age=5, max-age=5"]).seconds(b"max-age"), 5)

    def test_invalid_delta(self) -> None:
        """RFC 9111 §4.2.1: non-integer max-age is invalid freshness information."""
        self.assertEqual(parse_cache_control([b"max-age=soon"]).seconds(b"max-age"), INVALID)
        self.assertIsNone(parse_cache_control([b"public"]).seconds(b"max-age"))

    def test_non_token_names_ignored(self) -> None:
        """RFC 9111 §5.2: cache-directive = token [ "=" ... ]; other members are not directives."""
        control = parse_cache_control([b"(bad), public"])
        self.assertEqual(control.names(), frozenset({b"public"}))


class TargetedTests(SynchronousTestCase):
    def test_dictionary_types(self) -> None:
        """RFC 9213 §2.1: a Dictionary; integers, booleans, strings and tokens map to arguments."""
        control = parse_targeted([b'max-age=60, no-store, must-revalidate=?1, private=?0, no-cache="a"'])
        assert control is not None
        self.assertEqual(control.seconds(b"max-age"), 60)
        self.assertIn(b"no-store", control)
        self.assertIn(b"must-revalidate", control)
        self.assertNotIn(b"private", control)
        self.assertEqual(control.get(b"no-cache"), b"a")

    def test_parse_error_ignores_field(self) -> None:
        """RFC 9213 §2.1: on a parsing error the field SHOULD be ignored."""
        for bad in (b"Max-Age=60", b"max-age=60,", b"max-age=6 0", b'no-cache="x', b"max-age==1"):
            self.assertIsNone(parse_targeted([bad]), bad)

    def test_empty_ignored(self) -> None:
        """RFC 9213 §2.1: an empty targeted field SHOULD be ignored."""
        self.assertIsNone(parse_targeted([b""]))
        self.assertIsNone(parse_targeted([]))

    def test_last_repeat_wins(self) -> None:
        """RFC 8941 §4.2.2: a repeated dictionary key keeps its last value."""
        control = parse_targeted([b"max-age=1", b"max-age=2"])
        assert control is not None
        self.assertEqual(control.seconds(b"max-age"), 2)

    def test_parameters_ignored_other_types_invalid(self) -> None:
        """RFC 9213 §2.1: parameters are ignored; a decimal is no delta-seconds."""
        control = parse_targeted([b"max-age=60;foo=bar, s-maxage=1.5, x=(a b)"])
        assert control is not None
        self.assertEqual(control.seconds(b"max-age"), 60)
        self.assertEqual(control.seconds(b"s-maxage"), INVALID)
        self.assertIn(b"x", control)

    def test_negative_integer_invalid(self) -> None:
        """RFC 9111 §1.2.2: delta-seconds has no sign."""
        control = parse_targeted([b"max-age=-5"])
        assert control is not None
        self.assertEqual(control.seconds(b"max-age"), INVALID)


class ResponseDirectivesTests(SynchronousTestCase):
    def test_cache_control_without_targets(self) -> None:
        """RFC 9213 §2.2: with no targeted field, Cache-Control governs."""
        control, targeted = response_directives([(b"Cache-Control", b"max-age=5")])
        self.assertEqual(control.seconds(b"max-age"), 5)
        self.assertFalse(targeted)

    def test_targeted_overrides_cache_control(self) -> None:
        """RFC 9213 §2.2: the cache MUST ignore Cache-Control when a targeted field is valid."""
        headers = [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60")]
        control, targeted = response_directives(headers)
        self.assertTrue(targeted)
        self.assertNotIn(b"no-store", control)
        self.assertEqual(control.seconds(b"max-age"), 60)

    def test_first_in_target_list_wins(self) -> None:
        """RFC 9213 §2.2: the first field in target list order with a valid value is used."""
        headers = [(b"CDN-Cache-Control", b"max-age=60"), (b"Gateway-Cache-Control", b"max-age=5")]
        control, _ = response_directives(headers, (b"gateway-cache-control", b"cdn-cache-control"))
        self.assertEqual(control.seconds(b"max-age"), 5)

    def test_invalid_target_falls_through(self) -> None:
        """RFC 9213 §2.2: an invalid targeted field is skipped for the next one, then Cache-Control."""
        headers = [(b"Gateway-Cache-Control", b"MAX-AGE"), (b"Cache-Control", b"max-age=9")]
        control, targeted = response_directives(headers, (b"gateway-cache-control", b"cdn-cache-control"))
        self.assertFalse(targeted)
        self.assertEqual(control.seconds(b"max-age"), 9)

    def test_cache_control_value_object(self) -> None:
        """CacheControl compares by content (a value object)."""
        self.assertEqual(CacheControl({b"a": None}), CacheControl({b"a": None}))
