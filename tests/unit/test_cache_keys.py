"""Tests for gateway.cache.keys: primary keys, Vary secondary keys, invalidation targets."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.keys import (
    KeyRules,
    cache_key,
    invalidation_targets,
    secondary_key,
    split_target,
    surrogate_keys,
    vary_matches,
    vary_names,
    vary_values,
)


class CacheKeyTests(SynchronousTestCase):
    def test_scheme_host_path_query(self) -> None:
        """RFC 9111 §2: the cache key is at least the target URI (scheme, host, path, query)."""
        self.assertEqual(cache_key(b"http", b"example.com", b"/a/b?x=1"), b"http://example.com/a/b?x=1")

    def test_host_and_scheme_lower_cased_path_kept(self) -> None:
        """RFC 9110 §4.2.3: scheme and host are case-insensitive; the path is not."""
        self.assertEqual(cache_key(b"HTTP", b"Example.COM", b"/A"), b"http://example.com/A")

    def test_default_port_dropped(self) -> None:
        """RFC 9110 §4.2.3: a default port is equivalent to none."""
        self.assertEqual(cache_key(b"http", b"h:80", b"/"), b"http://h/")
        self.assertEqual(cache_key(b"https", b"h:443", b"/"), b"https://h/")
        self.assertEqual(cache_key(b"http", b"h:8080", b"/"), b"http://h:8080/")
        self.assertEqual(cache_key(b"http", b"h:", b"/"), b"http://h/")

    def test_absolute_form_target(self) -> None:
        """RFC 9112 §3.2.2: an absolute-form target contributes its path and query."""
        self.assertEqual(split_target(b"http://other/p?q"), b"/p?q")
        self.assertEqual(split_target(b"http://other"), b"/")

    def test_empty_path_is_slash(self) -> None:
        """RFC 9110 §4.2.3: an empty path is equivalent to "/"."""
        self.assertEqual(split_target(b"?a=1"), b"/?a=1")

    def test_query_exact_by_default(self) -> None:
        """RFC 9111 §2: without configured normalisation the query is kept as received."""
        self.assertEqual(cache_key(b"http", b"h", b"/p?b=2&a=1&"), b"http://h/p?b=2&a=1&")

    def test_sort_query(self) -> None:
        """Configured normalisation: parameters sorted, empty ones dropped."""
        self.assertEqual(KeyRules(sort_query=True).key(b"http", b"h", b"/p?b=2&&a=1"), b"http://h/p?a=1&b=2")

    def test_drop_params(self) -> None:
        """Configured normalisation: listed parameters are left out of the key."""
        rules = KeyRules(drop_params=frozenset({b"utm_source", b"fbclid"}))
        self.assertEqual(rules.key(b"http", b"h", b"/p?utm_source=x&id=3&fbclid"), b"http://h/p?id=3")
        self.assertEqual(rules.key(b"http", b"h", b"/p?utm_source=x"), b"http://h/p")


class VaryTests(SynchronousTestCase):
    def test_names(self) -> None:
        """RFC 9110 §12.5.5: Vary is a list of case-insensitive field names."""
        headers = [(b"Vary", b"Accept-Encoding, origin"), (b"vary", b"ACCEPT-ENCODING")]
        self.assertEqual(vary_names(headers), (b"accept-encoding", b"origin"))
        self.assertEqual(vary_names([]), ())

    def test_star(self) -> None:
        """RFC 9111 §4.1: Vary containing "*" never matches."""
        self.assertIsNone(vary_names([(b"Vary", b"Accept, *")]))
        self.assertFalse(vary_matches(None, (), []))

    def test_values_combined_and_normalised(self) -> None:
        """RFC 9111 §4.1: field lines are combined and whitespace normalised before comparing."""
        request = [(b"Accept-Encoding", b"gzip ,  br"), (b"accept-encoding", b"zstd")]
        self.assertEqual(vary_values((b"accept-encoding",), request), (b"gzip, br, zstd",))

    def test_match_after_whitespace_normalisation(self) -> None:
        """RFC 9111 §4.1: adding or removing whitespace where allowed still matches."""
        stored = vary_values((b"accept-encoding",), [(b"Accept-Encoding", b"gzip, br")])
        self.assertTrue(vary_matches((b"accept-encoding",), stored, [(b"accept-encoding", b"gzip,br")]))

    def test_different_value_does_not_match(self) -> None:
        """RFC 9111 §4.1: nominated fields must match the original request's."""
        stored = vary_values((b"accept-encoding",), [(b"Accept-Encoding", b"gzip")])
        self.assertFalse(vary_matches((b"accept-encoding",), stored, [(b"Accept-Encoding", b"br")]))
        self.assertFalse(vary_matches((b"accept-encoding",), stored, [(b"Accept-Encoding", b"GZIP")]))

    def test_absent_matches_only_absent(self) -> None:
        """RFC 9111 §4.1: an absent field matches only another request where it is absent."""
        stored = vary_values((b"origin",), [])
        self.assertEqual(stored, (None,))
        self.assertTrue(vary_matches((b"origin",), stored, [(b"Accept", b"*/*")]))
        self.assertFalse(vary_matches((b"origin",), stored, [(b"Origin", b"")]))

    def test_no_vary_always_matches(self) -> None:
        """RFC 9111 §4.1: a response without Vary is selected by any request."""
        self.assertTrue(vary_matches((), (), [(b"Accept", b"x")]))

    def test_secondary_key_distinguishes_absent_and_empty(self) -> None:
        """RFC 9111 §4.1: absent and empty are different; the secondary key tells them apart."""
        self.assertNotEqual(secondary_key((b"origin",), (None,)), secondary_key((b"origin",), (b"",)))
        self.assertEqual(secondary_key((), ()), b"")


class InvalidationTests(SynchronousTestCase):
    def test_unsafe_success_invalidates_target(self) -> None:
        """RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI."""
        self.assertEqual(invalidation_targets(b"POST", 201, b"http", b"H", b"/a?x", []), [(b"http", b"h", b"/a?x")])
        self.assertEqual(invalidation_targets(b"DELETE", 302, b"http", b"h", b"/a", []), [(b"http", b"h", b"/a")])

    def test_unknown_method_is_unsafe(self) -> None:
        """RFC 9111 §4.4: "including methods whose safety is unknown"."""
        self.assertEqual(len(invalidation_targets(b"FROB", 200, b"http", b"h", b"/", [])), 1)

    def test_safe_or_error_does_not_invalidate(self) -> None:
        """RFC 9111 §4.4: only unsafe methods with 2xx/3xx invalidate."""
        self.assertEqual(invalidation_targets(b"GET", 200, b"http", b"h", b"/", []), [])
        self.assertEqual(invalidation_targets(b"POST", 404, b"http", b"h", b"/", []), [])
        self.assertEqual(invalidation_targets(b"PUT", 500, b"http", b"h", b"/", []), [])

    def test_location_same_origin(self) -> None:
        """RFC 9111 §4.4: Location and Content-Location of the same origin are invalidated too."""
        headers = [(b"Location", b"../b?q=1"), (b"Content-Location", b"http://H:80/c")]
        self.assertEqual(
            invalidation_targets(b"PUT", 201, b"http", b"h", b"/x/a", headers),
            [(b"http", b"h", b"/x/a"), (b"http", b"h", b"/b?q=1"), (b"http", b"h", b"/c")],
        )

    def test_other_origin_not_invalidated(self) -> None:
        """RFC 9111 §4.4: a cache MUST NOT invalidate a URI of another origin."""
        for location in (b"http://evil.example/a", b"https://h/a", b"//evil/a", b"http://h:8080/a"):
            self.assertEqual(
                invalidation_targets(b"POST", 201, b"http", b"h", b"/", [(b"Location", location)]),
                [(b"http", b"h", b"/")],
                location,
            )


class SurrogateKeyTests(SynchronousTestCase):
    def test_space_separated_unique(self) -> None:
        """Surrogate-Key (Fastly convention): space-separated keys, repeats collapsed."""
        headers = [(b"Surrogate-Key", b"a  b"), (b"surrogate-key", b"b c")]
        self.assertEqual(surrogate_keys(headers), (b"a", b"b", b"c"))
