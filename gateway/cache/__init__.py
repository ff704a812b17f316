"""The HTTP cache: pure RFC 9111 rules and an on-disk store, not yet on the request path.

Invariants:

- Decision modules (``fields``, ``directives``, ``policy``, ``validation``,
  ``keys``, ``ranges``, ``status``) import no reactor, read no clock and do no
  I/O: times come in as ``now``, ``request_time`` and ``response_time``
  arguments (seconds since the epoch, floats).
- I/O lives in ``entry`` (the on-disk entry format), ``store`` (the directory,
  index and bounds) and ``producer`` (streaming a stored body to a consumer).
- No byte of a request ever becomes part of a filesystem path: entries are
  named by a hash of their keys.
"""
