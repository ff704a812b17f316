"""The HTTP cache (RFC 9111 shared cache): pure rules, an on-disk store, and its place on the request path.

Invariants:

- Decision modules (``fields``, ``directives``, ``policy``, ``validation``,
  ``keys``, ``ranges``, ``status``, ``route``) import no reactor, read no
  clock and do no I/O: times come in as ``now``, ``request_time`` and
  ``response_time`` arguments (seconds since the epoch, floats).
- I/O lives in ``entry`` (the on-disk entry format), ``writer`` (one entry
  written and renamed into place), ``store`` (the directory, index and
  bounds), ``journal`` (the change records the processes sharing a directory
  exchange), ``peers`` (the janitor lock and the ticks that keep each
  process's index current) and ``shared`` (the process-wide cache: store,
  peers, fills). Stored bodies are read through :mod:`gateway.bodystore`, the
  read path spooled bodies use (``answer``).
- The request path: ``flow`` (:class:`~gateway.cache.flow.CacheExchange`, what
  the front end holds for a caching route), ``intake`` (a response into the
  store), ``collapse`` (one origin request per key), ``background``
  (stale-while-revalidate), ``answer`` (answers from the store), ``purge``.
- No byte of a request ever becomes part of a filesystem path: entries are
  named by a hash of their keys.
"""
