"""Running wrk once and reading its report into a value.

wrk runs with one thread (``-t1``): the machine the benchmark was written for
has two cores, so the load generator takes one and the proxy under test the
other (the origin shares them).  ``--latency`` makes wrk print the percentile
table that p50 and p99 are read from.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

#: wrk's own time units (``format_time`` in wrk's units.c) in milliseconds.
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
#: wrk's byte units (``format_binary``: powers of 1024).
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTALS = re.compile(r"(\d+) requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")


class WrkError(Exception):
    """wrk failed or printed something this module can't read."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles and every error wrk counted."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    bytes_read: int
    non_2xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0

    @property
    def socket_errors(self) -> int:
        """All four kinds of socket error together."""
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def bytes_per_response(self) -> float:
        """Mean bytes read per response (headers and body), 0 when nothing was read."""
        return self.bytes_read / self.requests if self.requests else 0.0

    def error_text(self) -> str:
        """``non-2xx 3, connect 0, read 1, write 0, timeout 0``, or "" when clean."""
        if not self.non_2xx and not self.socket_errors:
            return ""
        return (
            f"non-2xx {self.non_2xx}, connect {self.connect_errors}, read {self.read_errors}, "
            f"write {self.write_errors}, timeout {self.timeouts}"
        )


def parse(text: str) -> WrkResult:
    """Read wrk's report (printed with ``--latency``) into a :class:`WrkResult`."""
    percentiles = {
        float(share): float(value) * _TIME_UNITS_MS[unit]
        for share, value, unit in _PERCENTILE.findall(text)
    }
    totals = _TOTALS.search(text)
    rate = _RATE.search(text)
    if totals is None or rate is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkError(f"can't read wrk's report:\n{text}")
    errors = _SOCKET_ERRORS.search(text)
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0,) * 4
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(totals.group(1)),
        bytes_read=int(float(totals.group(2)) * _BYTE_UNITS[totals.group(3)]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
    )


def command(wrk: str, url: str, connections: int, duration_s: int, close: bool) -> list[str]:
    """The wrk command line for one run (one thread, latency table, 10 s timeout)."""
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "10s",
    ]
    if close:
        # wrk opens a new connection for every request when the answer closes it.
        argv += ["-H", "Connection: close"]
    return argv + [url]


def run(wrk: str, url: str, connections: int, duration_s: int, close: bool) -> WrkResult:
    """Run wrk once against ``url`` and return what it measured.

    The run is bounded: wrk gets its duration plus 30 seconds before it is
    killed (``subprocess.run`` kills it on any exception, Ctrl-C included).
    """
    argv = command(wrk, url, connections, duration_s, close)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr}{done.stdout}")
    return parse(done.stdout)
