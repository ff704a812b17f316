"""Slow clients against spooling (``bash bench/run --slow``): how long backends are held.

CLIENTS clients ask at once, through one proxy, for a 1 MiB response from
bench/slow_origin.py, and read it at RATE for SLOW_S seconds, then take the
rest as fast as they can (so every run is bounded and every body is checked
whole). Each client connects with a small receive buffer and an Ethernet MSS
(CLIENT_MSS explains why loopback's would hide everything). The origin records, per response, when it had read the request and
when the last byte left it (``sendall`` returned; its send buffer is capped at
ORIGIN_SNDBUF so that the kernel can't absorb the body for it). The difference
is the **hold time**: how long a synchronous backend worker would be busy.

Three proxies, each run in turn, RUNS rounds:

- ``gateway``: route ``buffering = true`` (the default): the gateway spools
  the response once the client pushes back and frees the backend;
- ``gateway-nobuf``: route ``buffering = false``: the response streams with
  end-to-end backpressure, so the backend is held while the client reads;
- ``nginx``: nginx's defaults, ``proxy_buffering on`` (memory buffers, then a
  temporary file up to 1 GiB).

Invariants: every client socket has a timeout and is closed; the client
threads are daemons joined against a deadline; the servers are stopped by the
caller's :class:`servers.Processes`.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from servers import HOST, Server

BODY = 1024 * 1024
CLIENTS = 50
RATE = 20 * 1024  # bytes per second per slow client
SLOW_S = 3.0
#: SO_SNDBUF of the origin's connections (the kernel doubles it): small, so
#: that "sent" means "the proxy took it", not "the kernel buffered it".
ORIGIN_SNDBUF = 32 * 1024
#: SO_RCVBUF of each client (doubled by the kernel), set before connecting:
#: a slow reader's window, so that the client's kernel doesn't read ahead for it.
CLIENT_RCVBUF = 16 * 1024
#: TCP_MAXSEG of each client, set before connecting: the MSS of an Ethernet
#: path, as Internet clients have. Loopback's own MSS is 64 KiB, with which the
#: kernel grows the proxy's send buffer towards tcp_wmem's maximum (4 MiB): it
#: then takes the whole 1 MiB body for the client, the proxy never sees
#: pushback, and spooling on and off look the same (seen while writing this:
#: 1 MiB in the gateway's Send-Q, the origin done in 44 ms with buffering off).
CLIENT_MSS = 1448
CLIENT_TIMEOUT_S = 30.0
TARGETS = ("gateway", "gateway-nobuf", "nginx")
LABELS = {
    "gateway": "gateway, spooling on (`buffering = true`, default)",
    "gateway-nobuf": "gateway, spooling off (`buffering = false`)",
    "nginx": "nginx, `proxy_buffering on` (default)",
}


@dataclass(frozen=True, slots=True)
class SlowPlan:
    """How many rounds of the three proxies, and the pause between runs."""

    runs: int = 3
    pause_s: float = 1.0

    def estimate_s(self) -> float:
        """Seconds the runs take: the slow phase, catching up, the pause."""
        return self.runs * len(TARGETS) * (SLOW_S + 2.0 + self.pause_s)


@dataclass(frozen=True, slots=True)
class ClientResult:
    """What one slow client got: status, body bytes, how long it took, or an error."""

    status: int = 0
    body: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def whole(self) -> bool:
        """200 and the full body."""
        return self.status == 200 and self.body == BODY and not self.error


@dataclass(slots=True)
class SlowRun:
    """One run through one proxy: per-response hold times and the clients' results."""

    holds_s: list[float] = field(default_factory=list)
    clients: list[ClientResult] = field(default_factory=list)
    missing: int = 0
    origin_failed: int = 0
    rss_kib: int = 0

    def hold_median(self) -> float:
        return statistics.median(self.holds_s) if self.holds_s else 0.0

    def hold_p90(self) -> float:
        if len(self.holds_s) < 2:
            return self.hold_median()
        return statistics.quantiles(self.holds_s, n=10, method="inclusive")[8]

    def client_median(self) -> float:
        return statistics.median(c.seconds for c in self.clients) if self.clients else 0.0

    def whole(self) -> int:
        return sum(c.whole for c in self.clients)


def _head_end(data: bytes) -> tuple[int, int, int] | None:
    """(end of head, status, Content-Length or -1) once the head is complete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = -1
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return end + 4, status, length


def slow_client(port: int, name: str, began: float) -> ClientResult:
    """Ask for the body, read it at RATE until SLOW_S has passed, then read the rest fast."""
    head = b""
    parsed: tuple[int, int, int] | None = None
    body = 0
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, CLIENT_MSS)
            sock.settimeout(CLIENT_TIMEOUT_S)
            sock.connect((HOST, port))
            sock.sendall(
                f"GET /body?id={name} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
            )
            received = 0
            while True:
                elapsed = time.monotonic() - began
                if elapsed < SLOW_S:
                    allowed = int(RATE * elapsed) - received
                    if allowed < 1024:
                        time.sleep(0.05)
                        continue
                    data = sock.recv(min(allowed, 4096))
                else:
                    data = sock.recv(65536)
                if not data:
                    break
                received += len(data)
                if parsed is None:
                    head += data
                    parsed = _head_end(head)
                    if parsed is not None:
                        body = len(head) - parsed[0]
                        head = b""
                else:
                    body += len(data)
                if parsed is not None and parsed[2] >= 0 and body >= parsed[2]:
                    break
    except (OSError, ValueError, IndexError) as exc:
        return ClientResult(parsed[1] if parsed else 0, body, time.monotonic() - began,
                            f"{type(exc).__name__}: {exc}")
    status = parsed[1] if parsed else 0
    return ClientResult(status, body, time.monotonic() - began)


def timings(origin: Server, reset: bool) -> dict[str, dict[str, float]]:
    """The origin's records (and clear them when ``reset``)."""
    url = origin.url("/_timings" + ("?reset=1" if reset else ""))
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def one_run(origin: Server, proxy: Server, tag: str) -> SlowRun:
    """CLIENTS slow clients at once through ``proxy``; the origin's hold times."""
    timings(origin, reset=True)
    results: list[ClientResult | None] = [None] * CLIENTS
    began = time.monotonic()

    def work(index: int) -> None:
        results[index] = slow_client(proxy.port, f"{tag}-{index}", began)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = began + SLOW_S + CLIENT_TIMEOUT_S + 5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # A response's record lands when the origin's last sendall returns, which
    # may be a moment after the client has its last byte.
    time.sleep(0.2)
    records = timings(origin, reset=True)
    run = SlowRun()
    for index, result in enumerate(results):
        run.clients.append(result or ClientResult(error="client did not finish"))
        record = records.get(f"{tag}-{index}")
        if record is None:
            run.missing += 1
            continue
        run.holds_s.append(record["end"] - record["start"])
        if not record["ok"]:
            run.origin_failed += 1
    return run


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:.1f} s"


def table(runs: dict[str, list[SlowRun]]) -> str:
    """Per proxy: medians over the runs of each run's median and p90 hold time."""
    lines = [
        "| proxy | origin hold p50 | origin hold p90 | hold p50 / nginx | client time p50 "
        "| whole answers | RSS after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    reference = _median([r.hold_median() for r in runs["nginx"]])
    for name in TARGETS:
        done = runs[name]
        median = _median([r.hold_median() for r in done])
        p90 = _median([r.hold_p90() for r in done])
        whole = sum(r.whole() for r in done)
        count = sum(len(r.clients) for r in done)
        rss = max(r.rss_kib for r in done)
        ratio = f"{median / reference:.1f}" if reference else "–"
        lines.append(
            f"| {LABELS[name]} | {_seconds(median)} | {_seconds(p90)} | {ratio} "
            f"| {_seconds(_median([r.client_median() for r in done]))} | {whole}/{count} "
            f"| {rss / 1024:.0f} MiB |"
        )
    return "\n".join(lines)


def problem_lines(runs: dict[str, list[SlowRun]]) -> list[str]:
    """Clients that didn't get a whole answer, records the origin lacks, failed sends."""
    found = []
    for name, done in runs.items():
        for number, run in enumerate(done, start=1):
            errors = sorted({c.error or f"status {c.status}, {c.body} B" for c in run.clients
                             if not c.whole})
            if errors:
                found.append(f"- {name}, run {number}: {len(run.clients) - run.whole()} "
                             f"clients without a whole answer: {'; '.join(errors)[:300]}")
            if run.missing:
                found.append(f"- {name}, run {number}: {run.missing} responses not recorded "
                             "by the origin")
            if run.origin_failed:
                found.append(f"- {name}, run {number}: the origin's send failed "
                             f"{run.origin_failed} times")
    return found or ["- none: every client got 200 and the whole body, and the origin "
                     "recorded every response as sent."]


def section(runs: dict[str, list[SlowRun]], plan: SlowPlan, header: list[str]) -> str:
    """The generated Markdown of a --slow run (``header``: title, command, machine notes)."""
    return "\n".join([
        *header,
        "",
        f"Method: {CLIENTS} clients at once ask for {BODY // 1024} KiB, read it at "
        f"{RATE // 1024} KiB/s each for {SLOW_S:g} s, then read the rest as fast as they "
        f"can (receive buffer {CLIENT_RCVBUF // 1024} KiB, doubled by the kernel; MSS "
        f"{CLIENT_MSS} B, an Ethernet path's, not loopback's 64 KiB). The "
        f"origin (bench/slow_origin.py, a thread per connection, send buffer "
        f"{ORIGIN_SNDBUF // 1024} KiB) records per response when it had read the request "
        "and when its last `sendall` returned: the hold time. The three proxies run in "
        f"turn, {plan.runs} round(s); the table shows, per proxy, the median over the runs "
        "of each run's median and p90 hold time, and of the clients' median time to the "
        "last byte.",
        "",
        table(runs),
        "",
        "Problems:",
        "",
        *problem_lines(runs),
    ])
