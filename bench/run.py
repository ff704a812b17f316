"""The gateway's benchmark beside nginx: ``bash bench/run [--quick | --tls | --slow | --cache]``.

The matrix (full or ``--quick``) starts, under one temporary directory and on
127.0.0.1 only: an nginx origin serving 1 KiB and 100 KiB files, nginx as the
reference reverse proxy, the gateway, the gateway again with its access log
on, and Twisted's ReverseProxyResource.  For each cell it alternates wrk runs
against the gateway and nginx, then measures the origin alone and Twisted's
proxy, and reports medians and ratios (see docs/performance.md for how to
read them).  ``--tls`` measures TLS termination beside nginx
(bench/tlsbench.py); ``--slow`` how long slow clients hold backends through
each proxy (bench/slowclients.py); ``--cache`` cache hits beside nginx's
proxy_cache (bench/cachebench.py).  Each mode writes its own generated section
of docs/performance.md.

Invariants:
- Every process started is stopped on the way out: normal end, error, Ctrl-C,
  SIGTERM, SIGHUP, or the overall time bound (SIGALRM).
- The generated part of docs/performance.md is replaced only after a complete
  run; a failed or interrupted run leaves the file alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

import cachebench
import certs
import report
import servers
import slowclients
import tlsbench
import wrk
from cells import ACCESS_LOG_CELL, FULL, QUICK, WORKERS_CELL, Cell, Plan, Sample, Series
from servers import BODIES, Processes, Server

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
PAUSE_S = 0.3


class Interrupted(Exception):
    """A signal or the overall time bound ended the run early."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``[--quick | --tls | --slow | --cache] [--duration S] [--repeats N] [--[no-]write-docs]``."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="a subset of cells, 2 s per run, no repeats (under 2 minutes)")
    mode.add_argument("--tls", action="store_true",
                      help="TLS 1.3 termination beside nginx: full and resumed handshakes, "
                      "keep-alive (about 2 minutes)")
    mode.add_argument("--slow", action="store_true",
                      help="slow clients: how long each proxy holds the backend (under 1 minute)")
    mode.add_argument("--cache", action="store_true",
                      help="cache hits beside nginx's proxy_cache: throughput and p99 "
                      "(under 3 minutes)")
    parser.add_argument("--duration", type=int, help="whole seconds per wrk/s_time run")
    parser.add_argument("--repeats", type=int,
                        help="gateway/nginx alternations per cell (--slow: rounds)")
    parser.add_argument("--write-docs", action=argparse.BooleanOptionalAction, default=None,
                        help="replace this mode's generated part of docs/performance.md "
                        "(default: yes, except for --quick)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The quick or full plan, with any duration or repeats given on the command line."""
    plan = QUICK if args.quick else FULL
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration_s=max(1, args.duration))
    if args.repeats is not None:
        plan = dataclasses.replace(plan, repeats=max(1, args.repeats))
    return plan


def find_tool(name: str) -> str:
    """The path of ``name`` (nginx lives in /usr/sbin, often off a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit(f"bench: {name} not found; `bash bench/run` installs it with apt-get")
    return found


def find_twistd() -> str:
    """The twistd that runs the gateway: ``BENCH_TWISTD`` (bench/run sets it to a
    PyPy venv's with ``BENCH_PYTHON=pypy3``), else this interpreter's (bench/.venv)."""
    twistd = Path(os.environ.get("BENCH_TWISTD") or Path(sys.executable).parent / "twistd")
    if not twistd.exists():
        raise SystemExit(f"bench: no {twistd}; start the benchmark with `bash bench/run`")
    return str(twistd)


@contextmanager
def bounded(seconds: int) -> Iterator[None]:
    """Turn SIGTERM, SIGHUP and an alarm after ``seconds`` into :class:`Interrupted`,
    and SIGINT into KeyboardInterrupt."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)}
    # Ctrl-C even when started in the background, where a shell ignores SIGINT.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_file_limit() -> None:
    """Lift the soft open-files limit to the hard one: 500 connections need ~1000 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_servers(
    processes: Processes, root: Path, nginx: str, twistd: str, workers_row: bool
) -> dict[str, Server]:
    """Start the origin, then every proxy in front of it; keyed by target name.

    Both gateways run with ``workers = 1`` and nginx with ``worker_processes 1``.
    With ``workers_row``, also the gateway with ``workers = 2`` and nginx with
    ``worker_processes 2`` ("gateway-w2", "nginx-w2"), unless the gateway
    doesn't start two workers (then a note says so and the row is left out).
    """
    www = servers.write_bodies(root)
    origin = servers.start_origin(processes, nginx, root, www)
    started = [
        origin,
        servers.start_nginx_proxy(processes, nginx, root, origin),
        servers.start_gateway(processes, twistd, root, origin, access_log=False),
        servers.start_gateway(processes, twistd, root, origin, access_log=True),
        servers.start_twisted_proxy(processes, root, origin),
    ]
    if workers_row:
        gateway = servers.start_gateway(processes, twistd, root, origin, access_log=False,
                                        name="gateway-w2", workers=2)
        if servers.wait_for_workers(gateway):
            started += [gateway, servers.start_nginx_proxy(processes, nginx, root, origin,
                                                           name="nginx-w2", workers=2)]
        else:
            print("bench: the gateway with workers = 2 did not start two worker processes; "
                  "leaving the workers row out", flush=True)
    return {server.name: server for server in started}


def workers_supported(source: Path) -> bool:
    """Whether the gateway measured has worker processes (gateway/workers.py)."""
    return (source / "gateway" / "workers.py").exists()


def check_answers(targets: dict[str, Server], bodies: dict[str, int] = BODIES) -> None:
    """Fetch each body through each target once: 200 and the full length, or stop."""
    for server in targets.values():
        for path, size in bodies.items():
            try:
                with urllib.request.urlopen(server.url(path), timeout=10) as answer:
                    status, body = answer.status, answer.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            if status != 200 or len(body) != size:
                raise SystemExit(
                    f"bench: {server.name} {server.url(path)} answered {status} with "
                    f"{len(body)} bytes, expected 200 with {size}:\n{body[:500]!r}\n"
                    f"{servers.tail(server.log)}"
                )


class Bench:
    """Runs wrk against the targets and keeps every sample, keyed by (cell, target)."""

    def __init__(self, targets: dict[str, Server], plan: Plan, wrk_path: str, total: int) -> None:
        self.targets = targets
        self.plan = plan
        self.wrk_path = wrk_path
        self.results: dict[tuple[Cell, str], Series] = {}
        self._total = total
        self._done = 0

    def warm(self, cell: Cell, names: tuple[str, ...]) -> None:
        """A short unrecorded run per target, so pools and caches are filled first."""
        for name in names:
            wrk.run(self.wrk_path, self.targets[name].url(cell.path), cell.connections,
                    self.plan.warmup_s, cell.close)
            time.sleep(PAUSE_S)

    def measure(self, cell: Cell, name: str) -> None:
        """One recorded wrk run of ``name`` in ``cell``, with the RSS right after."""
        server = self.targets[name]
        overflows = servers.listen_overflows()
        result = wrk.run(self.wrk_path, server.url(cell.path), cell.connections,
                         self.plan.duration_s, cell.close)
        overflows = servers.listen_overflows() - overflows
        rss = server.rss_kib()
        sample = Sample(result, rss, overflows)
        self.results.setdefault((cell, name), Series()).samples.append(sample)
        self._done += 1
        errors = "; ".join(Series([sample]).errors(BODIES[cell.path]))
        print(
            f"[{self._done:3d}/{self._total}] {cell.label:<32} {name:<11} "
            f"{result.requests_per_s:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  RSS {rss / 1024:5.0f} MiB"
            + (f"  ! {errors}" if errors else ""),
            flush=True,
        )
        time.sleep(PAUSE_S)

    def run_cell(self, cell: Cell) -> None:
        """Alternate gateway and nginx ``repeats`` times, then the origin and Twisted once."""
        self.warm(cell, ("gateway", "nginx", "origin", "twisted"))
        for _ in range(self.plan.repeats):
            self.measure(cell, "gateway")
            self.measure(cell, "nginx")
        self.measure(cell, "origin")
        self.measure(cell, "twisted")

    def run_access_log(self) -> None:
        """Alternate the gateway with its access log off and on, in one cell."""
        cell = ACCESS_LOG_CELL
        self.warm(cell, ("gateway+log",))
        for _ in range(self.plan.repeats):
            self.measure(cell, "gateway")
            self.measure(cell, "gateway+log")

    def run_workers(self) -> None:
        """Alternate the gateway with two workers and nginx with two, in one cell."""
        cell = WORKERS_CELL
        self.warm(cell, ("gateway-w2", "nginx-w2"))
        for _ in range(self.plan.repeats):
            self.measure(cell, "gateway-w2")
            self.measure(cell, "nginx-w2")


def run_count(plan: Plan, workers_row: bool) -> int:
    """How many recorded wrk runs the plan makes (for the progress counter)."""
    pairs = 1 + int(workers_row)
    return len(plan.cells) * (2 * plan.repeats + 2) + pairs * 2 * plan.repeats


def entry_command(argv: list[str]) -> str:
    """The command as typed: ``bash bench/run --quick`` (bench/run sets BENCH_ENTRY),
    with the ``BENCH_PYTHON=`` it was given."""
    entry = os.environ.get("BENCH_ENTRY", "python bench/run.py")
    interpreter = os.environ.get("BENCH_PYTHON")
    prefix = [f"BENCH_PYTHON={shlex.quote(interpreter)}"] if interpreter else []
    return " ".join([*prefix, entry, *(shlex.quote(arg) for arg in argv)])


def run_matrix(
    processes: Processes, root: Path, plan: Plan, tools: dict[str, str], workers_row: bool
) -> dict[tuple[Cell, str], Series]:
    """The matrix: every cell of ``plan``, the access-log comparison, the workers row."""
    targets = start_servers(processes, root, tools["nginx"], tools["twistd"], workers_row)
    workers_row = "gateway-w2" in targets
    check_answers(targets)
    bench = Bench(targets, plan, tools["wrk"], run_count(plan, workers_row))
    for cell in plan.cells:
        bench.run_cell(cell)
    bench.run_access_log()
    if workers_row:
        bench.run_workers()
    return bench.results


def run_tls(
    processes: Processes, root: Path, plan: tlsbench.TlsPlan, tools: dict[str, str]
) -> tlsbench.TlsResults:
    """TLS 1.3 termination: the gateway and nginx with one certificate, one origin."""
    cert = certs.make_certificate(root / "tls")
    origin = servers.start_origin(processes, tools["nginx"], root, servers.write_bodies(root))
    listener, site = tlsbench.gateway_settings(cert)
    targets = {
        "gateway": servers.start_gateway(processes, tools["twistd"], root, origin, False,
                                         listener=listener, sections=site),
        "nginx": servers.start_nginx_proxy(processes, tools["nginx"], root, origin,
                                           tls=tlsbench.nginx_directives(cert)),
    }
    negotiated = tlsbench.check(tools["openssl"], targets, cert)
    print("bench: both negotiate " + ", ".join(next(iter(negotiated.values())).values()),
          flush=True)
    results = tlsbench.run(targets, plan, tools["openssl"], tools["wrk"], PAUSE_S)
    results.negotiated = negotiated
    return results


def run_slow(
    processes: Processes, root: Path, plan: slowclients.SlowPlan, tools: dict[str, str]
) -> dict[str, list[slowclients.SlowRun]]:
    """Slow clients through the gateway with spooling on and off, and through nginx."""
    port = servers.free_port()
    script = Path(__file__).with_name("slow_origin.py")
    log = root / "slow-origin.log"
    argv = [sys.executable, str(script), str(port), "--size", str(slowclients.BODY),
            "--sndbuf", str(slowclients.ORIGIN_SNDBUF)]
    origin = Server("slow-origin", port, processes.start(argv, log), log)
    servers.wait_until_listening(origin)
    twistd = tools["twistd"]
    targets = {
        "gateway": servers.start_gateway(processes, twistd, root, origin, False,
                                         route="buffering = true\n"),
        "gateway-nobuf": servers.start_gateway(processes, twistd, root, origin, False,
                                               name="gateway-nobuf",
                                               route="buffering = false\n"),
        "nginx": servers.start_nginx_proxy(processes, tools["nginx"], root, origin),
    }
    check_answers(targets, {"/body": slowclients.BODY})
    runs: dict[str, list[slowclients.SlowRun]] = {name: [] for name in targets}
    total, done = plan.runs * len(targets), 0
    for round_number in range(1, plan.runs + 1):
        for name, server in targets.items():
            run = slowclients.one_run(origin, server, f"{name}-{round_number}")
            run.rss_kib = servers.rss_kib(server.measured_pid())
            runs[name].append(run)
            done += 1
            print(f"[{done:3d}/{total}] {name:<14} origin hold p50 "
                  f"{run.hold_median() * 1000:8.0f} ms  p90 {run.hold_p90() * 1000:8.0f} ms  "
                  f"client p50 {run.client_median():5.2f} s  "
                  f"whole {run.whole()}/{len(run.clients)}", flush=True)
            time.sleep(plan.pause_s)
    return runs


def run_cache(
    processes: Processes, root: Path, plan: cachebench.CachePlan, tools: dict[str, str]
) -> cachebench.CacheResults:
    """Cache hits: the gateway's disk cache and nginx's proxy_cache, one origin."""
    nginx, twistd = tools["nginx"], tools["twistd"]
    origin = servers.start_origin(processes, nginx, root, servers.write_bodies(root))
    settings, route = cachebench.gateway_settings(root)
    http, location = cachebench.nginx_directives(root)
    targets = {
        "gateway": servers.start_gateway(processes, twistd, root, origin, False,
                                         settings=settings, route=route),
        "nginx": servers.start_nginx_proxy(processes, nginx, root, origin,
                                           http=http, location=location),
    }
    return cachebench.run(targets, root, plan, tools["wrk"], PAUSE_S)


def main(argv: list[str]) -> int:
    """Run the chosen mode, print its report, and write docs/performance.md if asked."""
    args = parse_args(argv)
    write_docs = args.write_docs if args.write_docs is not None else not args.quick
    tools = {"nginx": find_tool("nginx"), "wrk": find_tool("wrk"), "twistd": find_twistd()}
    if args.tls:
        tools["openssl"] = find_tool("openssl")
        tls_plan = tlsbench.PLAN
        if args.duration is not None:
            tls_plan = dataclasses.replace(tls_plan, duration_s=max(1, args.duration))
        if args.repeats is not None:
            tls_plan = dataclasses.replace(tls_plan, repeats=max(1, args.repeats))
        estimate = tls_plan.estimate_s()
        mode = "tls"
        intro = (f"bench --tls: {len(tlsbench.CELLS)} cells, {tls_plan.duration_s} s per run, "
                 f"{tls_plan.repeats} alternation(s), TLS 1.3, {certs.KEY_TYPE}")
    elif args.cache:
        cache_plan = cachebench.PLAN
        if args.duration is not None:
            cache_plan = dataclasses.replace(cache_plan, duration_s=max(1, args.duration))
        if args.repeats is not None:
            cache_plan = dataclasses.replace(cache_plan, repeats=max(1, args.repeats))
        estimate = cache_plan.estimate_s()
        mode = "cache"
        intro = (f"bench --cache: {len(cachebench.CELLS)} cells, {cache_plan.duration_s} s "
                 f"per run, {cache_plan.repeats} alternation(s), cache hits only")
    elif args.slow:
        slow_plan = slowclients.SlowPlan()
        if args.repeats is not None:
            slow_plan = dataclasses.replace(slow_plan, runs=max(1, args.repeats))
        estimate = slow_plan.estimate_s()
        mode = "slow"
        intro = (f"bench --slow: {slowclients.CLIENTS} clients at "
                 f"{slowclients.RATE // 1024} KiB/s for {slowclients.SLOW_S:g} s, "
                 f"{slowclients.BODY // 1024} KiB each, {slow_plan.runs} round(s) of "
                 f"{len(slowclients.TARGETS)} proxies")
    else:
        plan = make_plan(args)
        workers_row = workers_supported(Path(os.environ.get("BENCH_SOURCE", REPO)))
        estimate = plan.estimate_s(workers_row)
        mode = "matrix"
        intro = (f"bench: {len(plan.cells)} cells, {plan.duration_s:g} s per run, "
                 f"{plan.repeats} repeat(s). wrk -t1 (one core for load, one for the proxy); "
                 "nginx worker_processes 1 and gateway workers = 1"
                 + (", plus one cell with 2 of each" if workers_row else ""))
    raise_file_limit()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    limit_s = cache_plan.bound_s() if mode == "cache" else int(2 * estimate + 120)
    print(f"{intro}; about {estimate / 60:.1f} min of load, stopped after "
          f"{limit_s / 60:.0f} min at most.", flush=True)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers must reach the document root
        try:
            with bounded(limit_s):
                if mode == "tls":
                    tls_results = run_tls(processes, root, tls_plan, tools)
                elif mode == "slow":
                    slow_runs = run_slow(processes, root, slow_plan, tools)
                elif mode == "cache":
                    cache_results = run_cache(processes, root, cache_plan, tools)
                else:
                    results = run_matrix(processes, root, plan, tools, workers_row)
        except (Interrupted, KeyboardInterrupt) as exc:
            print(f"\nbench: interrupted ({str(exc) or 'Ctrl-C'}); stopping everything", file=sys.stderr)
            return 130
        finally:
            # A second Ctrl-C must not cut the clean-up short.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            processes.stop_all()
            signal.signal(signal.SIGINT, previous)
    elapsed = time.monotonic() - began
    source = Path(os.environ.get("BENCH_SOURCE", REPO))
    notes = report.machine_notes(tools["nginx"], tools["wrk"], source,
                                 os.environ.get("BENCH_REVISION"))
    command = entry_command(argv)
    interpreter = os.path.basename(os.environ.get("BENCH_PYTHON", "")) or None
    begin, end = report.markers(mode, interpreter)
    if mode == "tls":
        notes.append(f"- {report.first_line([tools['openssl'], 'version'])}")
        heading = report.heading(command, started_at, elapsed, notes)
        block = "\n".join([begin, tlsbench.section(tls_results, tls_plan, heading), end])
    elif mode == "slow":
        heading = report.heading(command, started_at, elapsed, notes)
        block = "\n".join([begin, slowclients.section(slow_runs, slow_plan, heading), end])
    elif mode == "cache":
        heading = report.heading(command, started_at, elapsed, notes)
        block = "\n".join([begin, cachebench.section(cache_results, cache_plan, heading), end])
    else:
        block = report.generated_block(results, plan, command, started_at, elapsed, notes, begin, end)
    print("\n" + block)
    if write_docs:
        report.update_docs(DOCS, block, begin, end)
        print(f"\nbench: wrote {DOCS.relative_to(REPO)}")
    print(f"bench: done in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
