"""TLS termination beside nginx (``bash bench/run --tls``): handshakes and keep-alive.

Both proxies terminate TLS 1.3 only, with the same certificate (ECDSA P-256,
made at run time by bench/certs.py), the same suite order with the server's
preference (the gateway's, ``gateway/tls.py``), session tickets on (both
defaults), and proxy plain HTTP to the same nginx origin. Three cells:

- **full handshake per request**: ``openssl s_time -new`` never resumes a
  session, so every connection is a full handshake (X25519 key exchange and an
  ECDSA signature by the server), then one HTTP/1.0 request for 1 KiB, then the
  server closes. CLIENTS processes run side by side. wrk can't measure this:
  it keeps the session of its last connection and offers it again, so with
  ``Connection: close`` nearly all of its handshakes are resumptions (checked
  with nginx's ``$ssl_session_reused`` while writing this).
- **resumed handshake per request**: exactly that wrk behaviour, on purpose:
  ``wrk -c50 -H 'Connection: close'`` over https, a new connection per request
  that resumes with a TLS 1.3 ticket (PSK with a fresh X25519 exchange, no
  certificate, no signature), like a returning browser.
- **keep-alive**: ``wrk -c50`` over https, 1 KiB: the record layer's cost.

The client's handshake work is as large as the server's, and client and server
share two cores, so a fast server can be limited by its client: every run also
reads the CPU time the proxy used (user + system, /proc/PID/stat; nginx's
master and worker), and the tables show CPU per request beside the rates.

Invariants: the parameters each proxy negotiates are read with
``openssl s_client`` before any run and must be TLS 1.3 and equal for both, and
the certificate must verify against the run's CA; otherwise the run stops.
"""

from __future__ import annotations

import re
import ssl
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import wrk
from certs import KEY_TYPE, Certificate
from servers import BODIES, HOST, Server, tail

#: The gateway's TLS 1.3 suites in its order (gateway/tls.py SUITES_TLS13),
#: given to nginx too, with the server's preference like the gateway's.
SUITES_TLS13 = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: Side-by-side ``openssl s_time`` processes in the full-handshake cell.
CLIENTS = 4
#: ``s_time -www`` sends ``GET PATH HTTP/1.0`` and a blank line, with no Host
#: field. HTTP/1.0 doesn't require one, but the gateway (at 7afad49) forwards
#: such a request upstream as HTTP/1.1 still without Host, and the origin
#: answers 400 (RFC 9112 §3.2). So the path carries a Host line (and a dummy
#: field that swallows the " HTTP/1.0" s_time appends). Both proxies get the
#: same bytes.
S_TIME_REQUEST = "{path} HTTP/1.0\r\nHost: localhost\r\nX-Bench:"
PROBED = ("Protocol version", "Ciphersuite", "Signature type", "Server Temp Key", "Verification")


@dataclass(frozen=True, slots=True)
class TlsCell:
    """One TLS load shape, run with ``tool`` (``s_time`` or ``wrk``)."""

    label: str
    tool: str
    connections: int
    close: bool = False
    path: str = "/1k"


CELLS = (
    TlsCell(f"1 KiB, full handshake per request ({CLIENTS} × s_time -new)", "s_time", CLIENTS),
    TlsCell("1 KiB, 50 conn, resumed handshake per request (wrk, close)", "wrk", 50, close=True),
    TlsCell("1 KiB, 50 conn, keep-alive (wrk)", "wrk", 50),
)


@dataclass(frozen=True, slots=True)
class TlsPlan:
    """How long each run lasts and how often gateway and nginx alternate."""

    duration_s: int
    repeats: int
    warmup_s: int = 1

    def estimate_s(self) -> float:
        """Seconds of load (s_time runs may last up to 1 s longer: its clock ticks in seconds)."""
        per_cell = 2 * self.repeats * self.duration_s + 2 * self.warmup_s
        return len(CELLS) * per_cell + 2 * self.repeats + 2


PLAN = TlsPlan(duration_s=5, repeats=3)


@dataclass(frozen=True, slots=True)
class TlsSample:
    """One run: requests (= connections for s_time) per second, latency (wrk
    only), the proxy's CPU seconds during it, and any errors."""

    rate: float
    requests: int
    cpu_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: str = ""

    @property
    def cpu_us_per_request(self) -> float:
        """The proxy's CPU time per request, in microseconds."""
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0


@dataclass(slots=True)
class TlsResults:
    """Every sample by (cell, target), and what each target negotiated."""

    samples: dict[tuple[TlsCell, str], list[TlsSample]] = field(default_factory=dict)
    negotiated: dict[str, dict[str, str]] = field(default_factory=dict)


def gateway_settings(cert: Certificate) -> tuple[str, str]:
    """The listener lines and the site section that make the gateway's listener TLS 1.3."""
    listener = "tls = true\ntls_sites = bench\ntls_min_version = 1.3\n"
    site = f"""\
[site:bench]
names = localhost
cert = {cert.cert}
key = {cert.key}
"""
    return listener, site


def nginx_directives(cert: Certificate) -> str:
    """The ``ssl_*`` lines for nginx's server block: TLS 1.3 only, the gateway's suites."""
    return f"""\
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_protocols TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_conf_command Ciphersuites {SUITES_TLS13};"""


def probe(openssl: str, server: Server, cert: Certificate) -> dict[str, str]:
    """What ``server`` negotiates with a default OpenSSL client that verifies against the CA."""
    argv = [
        openssl, "s_client", "-connect", f"{HOST}:{server.port}", "-servername", "localhost",
        "-CAfile", str(cert.ca), "-verify_return_error", "-brief",
    ]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=20, check=False)
    found = {}
    for line in (done.stdout + done.stderr).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in PROBED:
            found[key.strip()] = value.strip()
    return found


def resumes(openssl: str, server: Server, directory: Path) -> bool:
    """Whether a session ticket from one connection resumes a second one.

    Each ``s_client`` sends one request with ``Connection: close`` and reads to
    the end, so that the TLS 1.3 tickets (sent after the handshake) arrive.
    """
    session = directory / f"{server.name}.session"
    request = "GET /1k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    outputs = []
    for option in ("-sess_out", "-sess_in"):
        argv = [openssl, "s_client", "-connect", f"{HOST}:{server.port}", "-servername",
                "localhost", "-ign_eof", option, str(session)]
        done = subprocess.run(argv, input=request, capture_output=True, timeout=20, check=False)
        outputs.append(done.stdout + done.stderr)
    return b"\nNew, TLSv1.3" in outputs[0] and b"\nReused, TLSv1.3" in outputs[1]


def check(openssl: str, targets: dict[str, Server], cert: Certificate) -> dict[str, dict[str, str]]:
    """Probe every target and fetch every body once over verified TLS; stop on any surprise."""
    context = ssl.create_default_context(cafile=str(cert.ca))
    negotiated = {}
    for name, server in targets.items():
        found = probe(openssl, server, cert)
        if found.get("Protocol version") != "TLSv1.3" or found.get("Verification") != "OK":
            raise SystemExit(f"bench: {name} negotiated {found or 'nothing'}\n{tail(server.log)}")
        found["Session resumption"] = "yes" if resumes(openssl, server, cert.ca.parent) else "no"
        negotiated[name] = found
        for path, size in BODIES.items():
            with urllib.request.urlopen(server.url(path), context=context, timeout=10) as answer:
                body = answer.read()
                if answer.status != 200 or len(body) != size:
                    raise SystemExit(f"bench: {name} {path}: {answer.status}, {len(body)} bytes")
    first, *others = negotiated.values()
    if any(other != first for other in others):
        raise SystemExit(f"bench: the proxies negotiate different TLS parameters: {negotiated}")
    return negotiated


_S_TIME_COUNT = re.compile(r"(\d+) connections in [\d.]+s;")
_S_TIME_BYTES = re.compile(r"(\d+) bytes read per connection")


def s_time(openssl: str, server: Server, clients: int, duration_s: int, path: str) -> TlsSample:
    """``clients`` side-by-side ``openssl s_time -new`` runs; their summed connection rate.

    Each process's rate is its connections over its own wall time (s_time's
    ``-time`` stops on a whole-second clock, so runs last up to 1 s longer).
    Every process is killed if it outlives ``duration_s`` + 30 s.
    """
    argv = [
        openssl, "s_time", "-connect", f"{HOST}:{server.port}", "-new", "-tls1_3",
        "-www", S_TIME_REQUEST.format(path=path), "-time", str(duration_s),
    ]
    cpu = server.cpu_seconds()
    began = time.monotonic()
    running = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(clients)
    ]
    rate, count, errors = 0.0, 0, []
    try:
        for process in running:
            output, _ = process.communicate(timeout=duration_s + 30)
            elapsed = time.monotonic() - began
            counted, per_connection = _S_TIME_COUNT.search(output), _S_TIME_BYTES.search(output)
            if process.returncode != 0 or counted is None or per_connection is None:
                errors.append(f"s_time exited {process.returncode}: {output[-300:]!r}")
                continue
            count += int(counted.group(1))
            rate += int(counted.group(1)) / elapsed
            if int(per_connection.group(1)) < BODIES[path]:
                errors.append(f"short answers: {per_connection.group(1)} B/connection")
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    return TlsSample(rate, count, server.cpu_seconds() - cpu, errors="; ".join(errors))


def wrk_run(wrk_path: str, server: Server, cell: TlsCell, duration_s: int) -> TlsSample:
    """One wrk run over https, with the proxy's CPU time around it."""
    cpu = server.cpu_seconds()
    result = wrk.run(wrk_path, server.url(cell.path), cell.connections, duration_s, cell.close)
    errors = result.error_text()
    if result.requests and result.bytes_per_response < 0.99 * BODIES[cell.path]:
        errors = "; ".join(filter(None, [errors, "short answers"]))
    return TlsSample(result.requests_per_s, result.requests, server.cpu_seconds() - cpu,
                     result.p50_ms, result.p99_ms, errors)


def measure(
    cell: TlsCell, server: Server, duration_s: int, openssl: str, wrk_path: str
) -> TlsSample:
    """One run of ``cell`` against ``server``."""
    if cell.tool == "s_time":
        return s_time(openssl, server, cell.connections, duration_s, cell.path)
    return wrk_run(wrk_path, server, cell, duration_s)


def run(
    targets: dict[str, Server], plan: TlsPlan, openssl: str, wrk_path: str, pause_s: float
) -> TlsResults:
    """Warm each target, then alternate gateway and nginx ``plan.repeats`` times per cell."""
    results = TlsResults()
    total, done = len(CELLS) * 2 * plan.repeats, 0
    for cell in CELLS:
        for server in targets.values():
            measure(cell, server, plan.warmup_s, openssl, wrk_path)
            time.sleep(pause_s)
        for _ in range(plan.repeats):
            for name, server in targets.items():
                sample = measure(cell, server, plan.duration_s, openssl, wrk_path)
                results.samples.setdefault((cell, name), []).append(sample)
                done += 1
                latency = (f"p50 {sample.p50_ms:7.2f} ms  p99 {sample.p99_ms:7.2f} ms"
                           if sample.p50_ms is not None else " " * 33)
                print(f"[{done:3d}/{total}] {cell.label[:44]:<44} {name:<11} "
                      f"{sample.rate:>8,.0f} req/s  {latency}  "
                      f"CPU {sample.cpu_us_per_request:6.0f} µs/req"
                      + (f"  ! {sample.errors}" if sample.errors else ""), flush=True)
                time.sleep(pause_s)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator else "–"


def table(results: TlsResults, gateway: str = "gateway", nginx: str = "nginx") -> str:
    """Medians of the alternating runs: rates, latency, CPU per request, ratios."""
    lines = [
        "| cell | gateway req/s | nginx req/s | gateway/nginx | gateway p50 / p99 "
        "| nginx p50 / p99 | gateway CPU/req | nginx CPU/req | CPU gateway/nginx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in CELLS:
        ours, theirs = results.samples[cell, gateway], results.samples[cell, nginx]
        rate_g, rate_n = _median([s.rate for s in ours]), _median([s.rate for s in theirs])
        cpu_g = _median([s.cpu_us_per_request for s in ours])
        cpu_n = _median([s.cpu_us_per_request for s in theirs])

        def latency(samples: list[TlsSample]) -> str:
            if samples[0].p50_ms is None:
                return "–"
            return (f"{_median([s.p50_ms or 0.0 for s in samples]):.2f} / "
                    f"{_median([s.p99_ms or 0.0 for s in samples]):.2f} ms")

        lines.append(
            f"| {cell.label} | {rate_g:,.0f} | {rate_n:,.0f} | {_ratio(rate_g, rate_n)} "
            f"| {latency(ours)} | {latency(theirs)} | {cpu_g:,.0f} µs | {cpu_n:,.0f} µs "
            f"| {_ratio(cpu_g, cpu_n)} |"
        )
    return "\n".join(lines)


def error_lines(results: TlsResults) -> list[str]:
    """One line per run that saw errors or short answers."""
    found = [
        f"- {name}, {cell.label}: {sample.errors}"
        for (cell, name), samples in results.samples.items()
        for sample in samples
        if sample.errors
    ]
    return found or ["- none: every answer was whole and no client saw an error."]


def section(results: TlsResults, plan: TlsPlan, header: list[str]) -> str:
    """The generated Markdown of a --tls run (``header``: title, command, machine notes)."""
    negotiated = next(iter(results.negotiated.values()))
    return "\n".join([
        *header,
        "",
        f"Negotiated by both (read with `openssl s_client -brief`, verified against the "
        f"run's CA): {negotiated['Protocol version']}, {negotiated['Ciphersuite']}, key "
        f"exchange {negotiated['Server Temp Key']}, certificate {KEY_TYPE} (server "
        f"signature {negotiated['Signature type']}). Session tickets on in both (their "
        f"defaults); a ticket resumes a second `s_client` connection: "
        f"{negotiated['Session resumption']}.",
        "",
        f"Method: each cell alternates gateway and nginx {plan.repeats}× for "
        f"{plan.duration_s:g} s (after a {plan.warmup_s:g} s warm-up of each); the table "
        "shows medians. CPU/req is the proxy's user + system CPU time (nginx: master and "
        "worker) over the requests of the run: the cost that decides capacity when the "
        "client, which shares the two cores, is the bottleneck.",
        "",
        table(results),
        "",
        "Errors and short answers:",
        "",
        *error_lines(results),
    ])
