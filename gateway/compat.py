"""What the gateway needs to run on PyPy, whose Debian build implements Python 3.9.

PyPy serves small responses about twice as fast as CPython (docs/performance.md),
so the gateway keeps to Python 3.9 and to the libraries PyPy 3.9 can install
(cryptography 43 and pyOpenSSL 25.1, the last with PyPy 3.9 wheels). Each
difference is bridged here, once, and only where CPython and PyPy differ:

- :data:`SLOTS`: ``dataclass(slots=True)`` arrived in Python 3.10. Under 3.9
  the frozen dataclasses carry a ``__dict__``; behaviour is the same.
- :func:`set_tls13_ciphersuites`: pyOpenSSL gained
  ``Context.set_tls13_ciphersuites`` in 25.2 (which needs cryptography 45);
  before that, OpenSSL's own ``SSL_CTX_set_ciphersuites`` is called through
  pyOpenSSL's bindings, exactly as 25.2 does.
- :func:`set_cipher_list`: pyOpenSSL before 25.2 checks a new cipher list on
  a throw-away ``Connection``, which marks the context as used, so every
  later setting of it draws "Attempting to mutate a Context after a
  Connection was created" (an error to come); ``SSL_CTX_set_cipher_list`` is
  called directly instead.
- :func:`freeze_heap`: ``gc.freeze`` is CPython's; PyPy's generational GC
  has no permanent generation to move objects into, nor the need.
- :func:`interpreter_advice`: PyPy's nursery is sized from the CPU's cache
  (a few hundred KiB), so the objects of 50 requests in flight outlive it
  and the major collections that follow set p99 latency (20 ms against 3 ms
  with ``PYPY_GC_NURSERY=16MB``, docs/performance.md). It is read once, at
  start, from the environment, so the gateway can only advise it.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping
from typing import Any

from OpenSSL import SSL

__all__ = ["SLOTS", "freeze_heap", "interpreter_advice", "set_cipher_list", "set_tls13_ciphersuites"]

#: The nursery docs/operations.md recommends under PyPy.
PYPY_NURSERY = "16MB"

#: Keyword arguments for ``@dataclass``: ``slots=True`` where Python has it.
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

#: pyOpenSSL 25.2 or later (the TLS 1.3 suite setter is what it added).
_PYOPENSSL_25_2 = hasattr(SSL.Context, "set_tls13_ciphersuites")


def _set_through_openssl(setter: str, context: SSL.Context, value: bytes, what: str) -> None:
    """Call OpenSSL's ``SSL_CTX_<setter>`` through pyOpenSSL's bindings, as pyOpenSSL 25.2 does."""
    from OpenSSL.SSL import _lib  # type: ignore[attr-defined]

    if getattr(_lib, setter)(context._context, value) != 1:  # type: ignore[attr-defined]
        raise SSL.Error(f"{what} refused: {value!r}")


def set_tls13_ciphersuites(context: SSL.Context, suites: bytes) -> None:
    """``context.set_tls13_ciphersuites(suites)``, also on pyOpenSSL before 25.2."""
    if _PYOPENSSL_25_2:
        context.set_tls13_ciphersuites(suites)
    else:
        _set_through_openssl("SSL_CTX_set_ciphersuites", context, suites, "TLS 1.3 cipher suites")


def set_cipher_list(context: SSL.Context, ciphers: bytes) -> None:
    """``context.set_cipher_list(ciphers)`` (TLS 1.2 and older), leaving the context unused on pyOpenSSL < 25.2."""
    if _PYOPENSSL_25_2:
        context.set_cipher_list(ciphers)
    else:
        _set_through_openssl("SSL_CTX_set_cipher_list", context, ciphers, "cipher list")


def freeze_heap() -> None:
    """Move every object alive now out of the collector's way (CPython only)."""
    freeze = getattr(gc, "freeze", None)
    if freeze is not None:
        freeze()


def interpreter_advice(implementation: str, environ: Mapping[str, str]) -> str | None:
    """A start-up warning for how this interpreter runs the gateway, or None.

    ``implementation`` is :func:`platform.python_implementation`; under PyPy
    without ``PYPY_GC_NURSERY`` in ``environ`` the nursery is too small for a
    proxy's requests in flight.
    """
    if implementation != "PyPy" or environ.get("PYPY_GC_NURSERY"):
        return None
    return (
        "PyPy's default GC nursery is too small for requests in flight: p99 latency "
        f"rises about sixfold; start with PYPY_GC_NURSERY={PYPY_NURSERY} in the environment "
        "(docs/operations.md, \"Running under PyPy\")"
    )
