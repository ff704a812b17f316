"""gateway.compat: the bridges that keep the gateway running on PyPy's Python 3.9 and its pyOpenSSL."""

from __future__ import annotations

import warnings

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from gateway.compat import PYPY_NURSERY, interpreter_advice, set_cipher_list, set_tls13_ciphersuites


class CipherTests(SynchronousTestCase):
    """Cipher settings that work alike on every pyOpenSSL the gateway installs."""

    def test_cipher_list_applied(self) -> None:
        """The TLS 1.2 list is what a connection offers (beside the TLS 1.3 suites)."""
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        set_cipher_list(context, b"ECDHE-ECDSA-AES128-GCM-SHA256")
        offered = SSL.Connection(context, None).get_cipher_list()
        self.assertIn("ECDHE-ECDSA-AES128-GCM-SHA256", offered)
        self.assertNotIn("ECDHE-RSA-AES256-GCM-SHA384", offered)

    def test_context_still_settable(self) -> None:
        """Setting the list leaves the context unused: later settings draw no deprecation warning."""
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            set_cipher_list(context, b"ECDHE+AESGCM")
            set_tls13_ciphersuites(context, b"TLS_AES_128_GCM_SHA256")
            context.set_session_id(b"gateway")
            context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        self.assertEqual([str(w.message) for w in caught], [])

    def test_bad_list_refused(self) -> None:
        """A list that selects nothing raises SSL.Error, as pyOpenSSL's own setter does."""
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.assertRaises(SSL.Error, set_cipher_list, context, b"NO-SUCH-CIPHER")


class AdviceTests(SynchronousTestCase):
    """The start-up warning about PyPy's GC nursery."""

    def test_pypy_without_nursery(self) -> None:
        """PyPy with its default nursery is told which one to set."""
        advice = interpreter_advice("PyPy", {})
        assert advice is not None
        self.assertIn(f"PYPY_GC_NURSERY={PYPY_NURSERY}", advice)

    def test_pypy_with_nursery(self) -> None:
        """A nursery chosen in the environment, whatever its size, is left to the operator."""
        self.assertIsNone(interpreter_advice("PyPy", {"PYPY_GC_NURSERY": "4MB"}))

    def test_cpython(self) -> None:
        """CPython has no nursery to advise on."""
        self.assertIsNone(interpreter_advice("CPython", {}))
