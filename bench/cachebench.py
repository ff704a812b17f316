"""Cache hits beside nginx's proxy_cache (``bash bench/run --cache``): throughput and p99.

Both proxies cache in front of the same nginx origin, which serves the 1 KiB
and 100 KiB bodies under ``/cached/`` with ``Cache-Control: max-age=3600``
(bench/servers.py ``start_origin``) and logs every request under that prefix:

- ``nginx``: ``proxy_cache`` with a ``proxy_cache_path`` in the run's
  temporary directory; no ``proxy_cache_valid`` (the origin's max-age decides),
  ``add_header X-Cache-Status $upstream_cache_status``, and ``sendfile on``
  as Debian's packaged nginx.conf sets it: a cache hit is a file in the page
  cache, and that is how nginx serves files in production. Debian's
  ``tcp_nopush on`` is left out (nginx's default is off): with it, 100 KiB
  hits here stalled for tens of ms (p50 16-43 ms, 2,000-3,600 req/s,
  against 0.8-1.3 ms and 24,000-29,000 req/s without it, in a check while
  writing this; the cause was not chased, corking with loopback's 64 KiB MSS
  and delayed ACKs is the likely one), which would make nginx look slower than
  it is;
- ``gateway``: ``[gateway] cache_dir`` in the temporary directory and route
  ``cache = true`` (docs/cache.md); its ``Cache-Status`` (RFC 9211) says
  ``hit`` for an answer from the store.

Each proxy's cache is warmed with one request per URL, then a second request
must be a hit (read from the header), before any load. While the measured
runs go on, the origin's count of ``/cached/`` requests must not grow: a run
with origin requests was not all hits, and the report says so. After the runs
each URL is asked once more and must still be a hit.

Invariants: a proxy whose second request is not a hit stops the run before
any load (the numbers would not be about cache hits); every client request has
a timeout; the servers are stopped by the caller's :class:`servers.Processes`.
"""

from __future__ import annotations

import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import wrk
from servers import CACHED_PREFIX, Server, cached_log, listen_overflows, tail

#: The response field that tells a hit, by proxy.
STATUS_FIELDS = {"gateway": "Cache-Status", "nginx": "X-Cache-Status"}
TARGETS = ("gateway", "nginx")
#: How long a second request may keep missing after the first was answered
#: (an entry may land on disk just after its last byte went out).
HIT_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class CacheCell:
    """One load shape: a cached body, its size, and the keep-alive connections."""

    path: str
    size: int
    connections: int

    @property
    def label(self) -> str:
        """``1 KiB, 50 conn, cache hit``."""
        return f"{self.size // 1024} KiB, {self.connections} conn, cache hit"


CELLS = (
    CacheCell(f"{CACHED_PREFIX}1k", 1024, 50),
    CacheCell(f"{CACHED_PREFIX}100k", 100 * 1024, 50),
)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """How long each run lasts and how often gateway and nginx alternate."""

    duration_s: int = 5
    repeats: int = 3
    warmup_s: int = 1

    def estimate_s(self) -> float:
        """Seconds of load: the alternating runs and one wrk warm-up per proxy and cell."""
        return len(CELLS) * len(TARGETS) * (self.repeats * self.duration_s + self.warmup_s)

    def bound_s(self) -> int:
        """The run's time bound: under 3 minutes for the default plan."""
        return int(2 * self.estimate_s() + 30)


PLAN = CachePlan()


@dataclass(frozen=True, slots=True)
class CacheSample:
    """One wrk run: its result, the proxy's CPU seconds and RSS, the origin
    requests and listen-queue overflows during it."""

    result: wrk.WrkResult
    cpu_s: float
    rss_kib: int
    origin_requests: int
    overflows: int = 0

    @property
    def cpu_us_per_request(self) -> float:
        """The proxy's CPU time per request, in microseconds."""
        return self.cpu_s / self.result.requests * 1e6 if self.result.requests else 0.0

    def errors(self, size: int) -> list[str]:
        """What went wrong in the run: wrk errors, short answers, overflows, origin requests."""
        found = []
        result = self.result
        if result.requests and result.bytes_per_response < 0.99 * size:
            found.append(f"short answers: {result.bytes_per_response:.0f} B/response")
        if result.error_text():
            found.append(result.error_text())
        if self.overflows:
            found.append(f"{self.overflows} connections overflowed a listen queue "
                         "(kernel ListenOverflows, system-wide)")
        if self.origin_requests:
            found.append(f"{self.origin_requests} requests reached the origin (not all hits)")
        return found


@dataclass(slots=True)
class Check:
    """What a proxy's cache said about one URL: on the warming request, the
    check right after, and once more after the measured runs; and how many
    requests reached the origin while it was warmed."""

    warm: str = ""
    hit: str = ""
    after: str = ""
    warm_origin_requests: int = 0


@dataclass(slots=True)
class CacheResults:
    """Every sample by (cell, target), and every check by (cell, target)."""

    samples: dict[tuple[CacheCell, str], list[CacheSample]] = field(default_factory=dict)
    checks: dict[tuple[CacheCell, str], Check] = field(default_factory=dict)


def nginx_directives(root: Path) -> tuple[str, str]:
    """The ``http``-block and ``location`` lines that turn nginx's proxy_cache on."""
    http = f"""\
    sendfile on;
    proxy_cache_path {root / "cache-nginx"} levels=1:2 keys_zone=bench:10m max_size=1g
                     inactive=60m use_temp_path=off;"""
    location = """\
            proxy_cache bench;
            add_header X-Cache-Status $upstream_cache_status;"""
    return http, location


def gateway_settings(root: Path) -> tuple[str, str]:
    """The ``[gateway]`` and ``[route:quick]`` lines that turn the gateway's cache on."""
    return f"cache_dir = {root / 'cache-gateway'}\n", "cache = true\n"


def origin_requests(root: Path) -> int:
    """How many ``/cached/`` requests the origin has answered (lines in its log)."""
    try:
        with open(cached_log(root), "rb") as log:
            return sum(1 for _ in log)
    except FileNotFoundError:
        return 0


def cache_field(server: Server, cell: CacheCell, name: str) -> str:
    """GET the cell's URL once through ``server``: its cache field, after checking
    that the answer is 200 with the whole body."""
    try:
        with urllib.request.urlopen(server.url(cell.path), timeout=10) as answer:
            status, body, headers = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    if status != 200 or len(body) != cell.size:
        raise SystemExit(f"bench: {name} {server.url(cell.path)} answered {status} with "
                         f"{len(body)} bytes, expected 200 with {cell.size}\n{tail(server.log)}")
    return ", ".join(headers.get_all(STATUS_FIELDS[name]) or [])


def is_hit(name: str, value: str) -> bool:
    """Whether the cache field says hit: nginx ``HIT``; for the gateway an RFC 9211
    member with a ``hit`` parameter (``gateway; hit; ttl=3599``)."""
    if name == "nginx":
        return value.strip() == "HIT"
    for member in value.split(","):
        params = [param.strip() for param in member.split(";")[1:]]
        if "hit" in params or "hit=?1" in params:
            return True
    return False


def warm(targets: dict[str, Server], root: Path, results: CacheResults) -> None:
    """One request per URL through each proxy, then one that must be a hit, or stop."""
    for cell in CELLS:
        for name, server in targets.items():
            before = origin_requests(root)
            check = Check(warm=cache_field(server, cell, name))
            deadline = time.monotonic() + HIT_WAIT_S
            check.hit = cache_field(server, cell, name)
            while not is_hit(name, check.hit) and time.monotonic() < deadline:
                time.sleep(0.1)
                check.hit = cache_field(server, cell, name)
            check.warm_origin_requests = origin_requests(root) - before
            results.checks[cell, name] = check
            if not is_hit(name, check.hit):
                raise SystemExit(
                    f"bench: {name} {cell.path} is not a cache hit after warming: "
                    f"{STATUS_FIELDS[name]}: {check.warm!r}, then {check.hit!r}\n{tail(server.log)}"
                )


def measure(
    wrk_path: str, server: Server, cell: CacheCell, duration_s: int, root: Path
) -> CacheSample:
    """One wrk run with the proxy's CPU time, the origin's request count and the
    listen-queue overflows around it, and the proxy's RSS after."""
    cpu, origin, overflows = server.cpu_seconds(), origin_requests(root), listen_overflows()
    result = wrk.run(wrk_path, server.url(cell.path), cell.connections, duration_s, False)
    return CacheSample(
        result, server.cpu_seconds() - cpu, server.rss_kib(), origin_requests(root) - origin,
        listen_overflows() - overflows,
    )


def run(
    targets: dict[str, Server], root: Path, plan: CachePlan, wrk_path: str, pause_s: float
) -> CacheResults:
    """Warm and check both caches, then per cell a wrk warm-up of each proxy and
    ``plan.repeats`` alternations, then check every URL is still a hit."""
    results = CacheResults()
    warm(targets, root, results)
    total, done = len(CELLS) * len(targets) * plan.repeats, 0
    for cell in CELLS:
        for server in targets.values():
            wrk.run(wrk_path, server.url(cell.path), cell.connections, plan.warmup_s, False)
            time.sleep(pause_s)
        for _ in range(plan.repeats):
            for name, server in targets.items():
                sample = measure(wrk_path, server, cell, plan.duration_s, root)
                results.samples.setdefault((cell, name), []).append(sample)
                done += 1
                result, errors = sample.result, "; ".join(sample.errors(cell.size))
                print(f"[{done:3d}/{total}] {cell.label:<28} {name:<8} "
                      f"{result.requests_per_s:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                      f"p99 {result.p99_ms:7.2f} ms  CPU {sample.cpu_us_per_request:5.0f} µs/req  "
                      f"origin +{sample.origin_requests}"
                      + (f"  ! {errors}" if errors else ""), flush=True)
                time.sleep(pause_s)
    for (cell, name), check in results.checks.items():
        check.after = cache_field(targets[name], cell, name)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator else "–"


def table(results: CacheResults) -> str:
    """Medians of the alternating runs: rates, latency, CPU per request, ratios, RSS."""
    lines = [
        "| cell | gateway req/s | nginx req/s | gateway/nginx | gateway p50 / p99 "
        "| nginx p50 / p99 | p99 gateway/nginx | gateway CPU/req | nginx CPU/req "
        "| gateway RSS | nginx worker RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in CELLS:
        ours, theirs = results.samples[cell, "gateway"], results.samples[cell, "nginx"]

        def median(samples: list[CacheSample], what: str) -> float:
            if what == "cpu":
                return _median([s.cpu_us_per_request for s in samples])
            return _median([getattr(s.result, what) for s in samples])

        rate_g, rate_n = median(ours, "requests_per_s"), median(theirs, "requests_per_s")
        p99_g, p99_n = median(ours, "p99_ms"), median(theirs, "p99_ms")
        lines.append(
            f"| {cell.label} | {rate_g:,.0f} | {rate_n:,.0f} | {_ratio(rate_g, rate_n)} "
            f"| {median(ours, 'p50_ms'):.2f} / {p99_g:.2f} ms "
            f"| {median(theirs, 'p50_ms'):.2f} / {p99_n:.2f} ms | {_ratio(p99_g, p99_n)} "
            f"| {median(ours, 'cpu'):,.0f} µs | {median(theirs, 'cpu'):,.0f} µs "
            f"| {max(s.rss_kib for s in ours) / 1024:.0f} MiB "
            f"| {max(s.rss_kib for s in theirs) / 1024:.0f} MiB |"
        )
    return "\n".join(lines)


def checks_table(results: CacheResults) -> str:
    """Per proxy and URL: the cache field on the warming request, the check, after
    the runs; origin requests while warming and during the measured runs."""
    lines = [
        "| proxy | URL | warming request | second request | after the runs "
        "| origin requests: warming / measured runs | requests measured |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for cell in CELLS:
        for name in TARGETS:
            check, samples = results.checks[cell, name], results.samples[cell, name]
            measured = sum(s.origin_requests for s in samples)
            served = sum(s.result.requests for s in samples)
            lines.append(
                f"| {name} (`{STATUS_FIELDS[name]}`) | `{cell.path}` | `{check.warm}` "
                f"| `{check.hit}` | `{check.after}` | {check.warm_origin_requests} / {measured} "
                f"| {served:,} |"
            )
    return "\n".join(lines)


def error_lines(results: CacheResults) -> list[str]:
    """One line per run that saw errors, short answers, overflows or origin requests."""
    found = [
        f"- {name}, {cell.label}: {text}"
        for (cell, name), samples in results.samples.items()
        for sample in samples
        for text in sample.errors(cell.size)
    ]
    return found or [
        "- none: every response of every run was 2xx and whole, no socket errors, no "
        "listen-queue overflows, and no request reached the origin during a measured run."
    ]


def section(results: CacheResults, plan: CachePlan, header: list[str]) -> str:
    """The generated Markdown of a --cache run (``header``: title, command, machine notes)."""
    return "\n".join([
        *header,
        "",
        f"Method: both caches are warmed with one request per URL and checked with a "
        f"second; then each cell gets a {plan.warmup_s:g} s wrk warm-up of each proxy and "
        f"alternates gateway and nginx {plan.repeats}× for {plan.duration_s:g} s (wrk "
        "`-t1 --latency`, keep-alive); the table shows medians. CPU/req is the proxy's "
        "user + system CPU time (nginx: master and worker) over the requests of the run. "
        "nginx runs `worker_processes 1` and the gateway `workers = 1`.",
        "",
        table(results),
        "",
        "Hits, as each proxy reported them, and the origin's count of `/cached/` "
        "requests (one per URL while warming is the miss that fills the cache; during "
        "the measured runs it must stay 0):",
        "",
        checks_table(results),
        "",
        "Errors, overflows and origin requests during measured runs:",
        "",
        *error_lines(results),
    ])
