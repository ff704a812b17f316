"""Tests for gateway.cache.status: RFC 9211 Cache-Status values."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.cache.status import Forward, cache_status, with_cache_status


class CacheStatusTests(SynchronousTestCase):
    def test_hit(self) -> None:
        """RFC 9211 §2.1, §2.4: a hit with its remaining freshness."""
        self.assertEqual(cache_status(b"gateway", hit=True, ttl=376.9), b"gateway; hit; ttl=376")

    def test_negative_ttl(self) -> None:
        """RFC 9211 §2.4: ttl is negative for a stale response."""
        self.assertEqual(cache_status(b"gateway", hit=True, ttl=-5), b"gateway; hit; ttl=-5")

    def test_forward_stored(self) -> None:
        """RFC 9211 §2.2, §2.5: forwarded because of a URI miss, and stored."""
        value = cache_status(b"gateway", fwd=Forward.URI_MISS, stored=True)
        self.assertEqual(value, b"gateway; fwd=uri-miss; stored")

    def test_forward_reasons(self) -> None:
        """RFC 9211 §2.2: the fwd tokens."""
        self.assertEqual(
            [f.value for f in Forward], ["bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale"]
        )

    def test_collapsed_and_fwd_status(self) -> None:
        """RFC 9211 §2.3, §2.6: fwd-status and collapsed."""
        self.assertEqual(
            cache_status(b"gateway", fwd=Forward.STALE, fwd_status=304, ttl=60, collapsed=True),
            b"gateway; fwd=stale; fwd-status=304; ttl=60; collapsed",
        )

    def test_hit_and_fwd_exclusive(self) -> None:
        """RFC 9211 §2.1/§2.2: a response is either a hit or forwarded."""
        self.assertRaises(ValueError, cache_status, b"gateway", hit=True, fwd=Forward.MISS)

    def test_key_and_detail_escaped(self) -> None:
        """RFC 9211 §2.7/§2.8, RFC 8941 §3.3.3: strings escape quotes and backslashes."""
        value = cache_status(b"gw", fwd=Forward.MISS, key=b'http://h/"a"\\\xff', detail=b"not stored: private")
        self.assertEqual(value, b'gw; fwd=miss; key="http://h/\\"a\\"\\\\%FF"; detail="not stored: private"')
        self.assertEqual(cache_status(b"gw", fwd=Forward.MISS, detail=b"private"), b"gw; fwd=miss; detail=private")

    def test_name_not_a_token(self) -> None:
        """RFC 9211 §2: the cache identifier is a token or a string."""
        self.assertEqual(cache_status(b"my cache", hit=True), b'"my cache"; hit')

    def test_appended_to_upstream(self) -> None:
        """RFC 9211 §2: existing values are kept; ours is last (closest to the user)."""
        headers = [(b"Cache-Status", b"origin-cache; hit"), (b"X", b"1")]
        self.assertEqual(
            with_cache_status(headers, b"gateway; fwd=uri-miss"),
            [(b"X", b"1"), (b"Cache-Status", b"origin-cache; hit, gateway; fwd=uri-miss")],
        )
