"""The gateway's benchmark beside nginx; start it with ``bash bench/run [--quick]``.

It starts, under one temporary directory and on 127.0.0.1 only: an nginx origin
serving 1 KiB and 100 KiB files, nginx as the reference reverse proxy, the
gateway, the gateway again in quick mode with its access log on, and Twisted's
ReverseProxyResource.  For each cell it alternates wrk runs against the gateway
and nginx, then measures the origin alone and Twisted's proxy, and reports
medians and ratios (see docs/performance.md for how to read them).

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

import report
import servers
import wrk
from cells import ACCESS_LOG_CELL, FULL, QUICK, Cell, Plan, Sample, Series
from servers import BODIES, Processes, Server

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
PAUSE_S = 0.3


class Interrupted(Exception):
    """A signal or the overall time bound ended the run early."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``[--quick] [--duration S] [--repeats N] [--write-docs | --no-write-docs]``."""
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a subset of cells, 2 s per run, no repeats (under 2 minutes)")
    parser.add_argument("--duration", type=int, help="whole seconds per wrk run")
    parser.add_argument("--repeats", type=int, help="gateway/nginx alternations per cell")
    parser.add_argument("--write-docs", action=argparse.BooleanOptionalAction, default=None,
                        help="replace the generated part of docs/performance.md "
                        "(default: yes for the full run, no for --quick)")
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
    """The twistd of the interpreter running this script (bench/.venv's, via bench/run)."""
    twistd = Path(sys.executable).parent / "twistd"
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


def start_servers(processes: Processes, root: Path, nginx: str, twistd: str) -> dict[str, Server]:
    """Start the origin, then every proxy in front of it; keyed by target name."""
    www = servers.write_bodies(root)
    origin = servers.start_origin(processes, nginx, root, www)
    started = [
        origin,
        servers.start_nginx_proxy(processes, nginx, root, origin),
        servers.start_gateway(processes, twistd, root, origin, access_log=False),
        servers.start_gateway(processes, twistd, root, origin, access_log=True),
        servers.start_twisted_proxy(processes, root, origin),
    ]
    return {server.name: server for server in started}


def check_answers(targets: dict[str, Server]) -> None:
    """Fetch each body through each target once: 200 and the full length, or stop."""
    for server in targets.values():
        for path, size in BODIES.items():
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
        rss = servers.rss_kib(server.measured_pid())
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


def run_count(plan: Plan) -> int:
    """How many recorded wrk runs the plan makes (for the progress counter)."""
    return len(plan.cells) * (2 * plan.repeats + 2) + 2 * plan.repeats


def entry_command(argv: list[str]) -> str:
    """The command as typed: ``bash bench/run --quick`` (bench/run sets BENCH_ENTRY)."""
    entry = os.environ.get("BENCH_ENTRY", "python bench/run.py")
    return " ".join([entry, *(shlex.quote(arg) for arg in argv)])


def main(argv: list[str]) -> int:
    """Run the plan, print the report, and write docs/performance.md if asked."""
    args = parse_args(argv)
    plan = make_plan(args)
    write_docs = args.write_docs if args.write_docs is not None else not args.quick
    nginx, wrk_path, twistd = find_tool("nginx"), find_tool("wrk"), find_twistd()
    raise_file_limit()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    limit_s = int(2 * plan.estimate_s() + 120)
    print(f"bench: {len(plan.cells)} cells, {plan.duration_s:g} s per run, {plan.repeats} "
          f"repeat(s); about {plan.estimate_s() / 60:.1f} min of load, stopped after "
          f"{limit_s / 60:.0f} min at most. wrk -t1 (one core for load, one for the proxy); "
          "nginx worker_processes 1 (like the gateway's single process).", flush=True)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx workers must reach the document root
        try:
            with bounded(limit_s):
                targets = start_servers(processes, root, nginx, twistd)
                check_answers(targets)
                bench = Bench(targets, plan, wrk_path, run_count(plan))
                for cell in plan.cells:
                    bench.run_cell(cell)
                bench.run_access_log()
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
    notes = report.machine_notes(nginx, wrk_path, source, os.environ.get("BENCH_REVISION"))
    block = report.generated_block(
        bench.results, plan, entry_command(argv), started_at, elapsed, notes
    )
    print("\n" + block)
    if write_docs:
        report.update_docs(DOCS, block)
        print(f"\nbench: wrote {DOCS.relative_to(REPO)}")
    print(f"bench: done in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
