"""Spoon feeding over real sockets: slow clients don't hold the origin, within bounds.

The origin is ``timing_origin.py``: it records, per request id, when it started
on a request and when the ``sendall`` of the response's last byte returned (or,
for an upload, when the last body byte arrived), on the system-wide monotonic
clock the test reads too. Its send buffer is capped (:data:`ORIGIN_SNDBUF`) so
that "done" means "the gateway took the bytes", not "the kernel queued them".

Slow clients are threads with a small receive buffer (:data:`CLIENT_RCVBUF`)
and an Ethernet MSS (:data:`CLIENT_MSS`), both set before connecting, that
read small pieces at a paced rate (see :class:`OriginReleaseTests` for why the
MSS matters over loopback). Every thread
is joined with a deadline, every socket closed, and the gateway's spool is
watched from outside through ``/proc/PID/fd``: spool files are unlinked when
opened, so an open spool is a descriptor whose target is
``SPOOL_DIR/gw-spool-... (deleted)``, and its size is the ``stat`` of that
descriptor. Every test ends by checking that the spool directory is empty and
that the gateway holds no spool descriptor.

Sizes and rates keep the whole module well under a minute on two cores.
"""

from __future__ import annotations

import platform

import hashlib
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from twisted.trial.unittest import SynchronousTestCase

from . import origin as origin_module
from .support import (
    IO_TIMEOUT,
    Gateway,
    Origin,
    new_tempdir,
    pattern_sha256,
    raw_connect,
    read_response,
    rss_bytes,
    simple_ini,
    split_response,
    wait_until,
)

KIB = 1024
MIB = 1024 * KIB

HERE = os.path.dirname(os.path.abspath(__file__))
TIMING_ORIGIN_SCRIPT = os.path.join(HERE, "timing_origin.py")

#: SO_SNDBUF of the origin's connections (the kernel doubles it).
ORIGIN_SNDBUF = 64 * KIB
#: SO_RCVBUF of a slow client's socket, set before connecting (the kernel doubles it).
CLIENT_RCVBUF = 4 * KIB
#: The MSS a client announces (TCP_MAXSEG before connecting): an Ethernet path's.
CLIENT_MSS = 1448
#: How fast a slow client reads, bytes per second, and in what pieces.
SLOW_RATE = 20 * KIB
SLOW_PIECE = 1 * KIB
#: How often the /proc sampler looks at the gateway.
SAMPLE_INTERVAL = 0.02
#: Longest wait for all clients to finish once they read fast.
FINISH_TIMEOUT = 40.0
#: Longest wait for spool descriptors to be closed after the last client left.
CLEANUP_TIMEOUT = 5.0


# --- processes -------------------------------------------------------------------------


class TimingOrigin(Origin):
    """``timing_origin.py``: ``origin.py`` plus recorded timings, small send buffers."""

    script = TIMING_ORIGIN_SCRIPT
    extra_args = ("--sndbuf", str(ORIGIN_SNDBUF))

    def timings(self) -> tuple[float, dict[str, dict[str, object]]]:
        """(the origin's clock now, ``{ID: record}``) from ``/_timings``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
        try:
            conn.request("GET", "/_timings", headers={"Connection": "close"})
            answer = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return answer["now"], answer["requests"]


def spool_gateway(
    case: SynchronousTestCase,
    origin: Origin,
    settings: dict[str, object] | None = None,
    route: dict[str, object] | None = None,
    spool_dir: str = "",
) -> tuple[Gateway, str]:
    """A started gateway in front of ``origin`` with its own spool directory.

    ``settings`` go to ``[gateway]`` (``spool_dir`` is always set: a new empty
    directory unless given), ``route`` to the catch-all route, which
    :func:`simple_ini` writes last.
    """
    spool_dir = os.path.realpath(spool_dir or new_tempdir(case))
    lines = ["[gateway]", f"spool_dir = {spool_dir}"]
    lines += [f"{key} = {value}" for key, value in (settings or {}).items()]
    ini = "\n".join(lines) + "\n\n" + simple_ini([origin.url])
    ini += "".join(f"{key} = {value}\n" for key, value in (route or {}).items())
    return Gateway(case, ini).start(), spool_dir


# --- looking at the gateway from outside ----------------------------------------------------


def spool_fds(pid: int, spool_dir: str) -> dict[int, int]:
    """``{FD: SIZE}`` of the descriptors ``pid`` holds on files in ``spool_dir``.

    A descriptor closed between listing and reading is skipped.
    """
    prefix = spool_dir.rstrip("/") + "/"
    found = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        path = os.path.join(base, name)
        try:
            target = os.readlink(path)
            if target.startswith(prefix):
                found[int(name)] = os.stat(path).st_size
        except FileNotFoundError:
            continue
    return found


class Sampler:
    """Samples the gateway's VmRSS and its open spool files on a thread; keeps peaks.

    Reading the sizes of many files takes a while, during which a running
    gateway may shrink one spool and grow another with the budget it gave
    back: the sum would count those bytes twice. So each sample is taken with
    the gateway stopped (SIGSTOP, then SIGCONT in a ``finally``), which makes
    it a true snapshot: its disk writes are synchronous ``pwrite`` calls.
    """

    def __init__(self, pid: int, spool_dir: str, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.spool_dir = spool_dir
        self.interval = interval
        self.samples = 0
        self.peak_rss = 0
        self.peak_disk = 0
        self.peak_files = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                os.kill(self.pid, signal.SIGSTOP)
                try:
                    rss = rss_bytes(self.pid)
                    files = spool_fds(self.pid, self.spool_dir)
                finally:
                    os.kill(self.pid, signal.SIGCONT)
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_disk = max(self.peak_disk, sum(files.values()))
                self.peak_files = max(self.peak_files, len(files))
                self.samples += 1
                if self._stop.wait(self.interval):
                    return
        except BaseException as exc:  # reported by stop(); the process may be gone
            self.error = exc

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._thread.is_alive():
            raise AssertionError("the sampler thread did not stop")
        if self.error is not None:
            raise AssertionError(f"sampling the gateway failed: {self.error!r}")


def assert_spool_clean(case: SynchronousTestCase, gateway: Gateway, spool_dir: str) -> None:
    """Within :data:`CLEANUP_TIMEOUT`: no spool descriptor open, and ``spool_dir`` empty."""
    wait_until(
        lambda: not spool_fds(gateway.pid, spool_dir),
        CLEANUP_TIMEOUT,
        f"the gateway to close its spool files (open: {spool_fds(gateway.pid, spool_dir)})",
    )
    case.assertEqual(os.listdir(spool_dir), [])


# --- clients ----------------------------------------------------------------------------


@dataclass
class Client:
    """One GET on its own socket and thread, read slowly until told otherwise.

    Phases: it reads ``path`` at ``rate`` bytes/s in ``piece``-byte reads
    (``rate = 0``: it doesn't read at all) until ``release`` is set; then, if
    ``then == "finish"``, it raises its receive buffer and reads the rest as
    fast as it can, hashing everything; if ``then == "abort"``, it closes the
    socket (with an RST when ``reset``).
    """

    port: int
    path: str
    release: threading.Event
    rcvbuf: int = CLIENT_RCVBUF
    mss: int = CLIENT_MSS
    rate: float = SLOW_RATE
    piece: int = SLOW_PIECE
    then: str = "finish"
    reset: bool = False
    deadline: float = 0.0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    received: int = 0
    sha256: str = ""
    complete: bool = False
    error: str = ""
    thread: threading.Thread | None = None

    def start(self) -> Client:
        self.thread = threading.Thread(target=self._run, name=self.path, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.mss:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", self.port))
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
            conn.sock = sock
            conn.request("GET", self.path)
            response = conn.getresponse()
            self.status = response.status
            self.headers = {name.lower(): value for name, value in response.getheaders()}
            digest = hashlib.sha256()
            started = time.monotonic()
            while not self.release.is_set():
                ahead = self.received / self.rate - (time.monotonic() - started) if self.rate else 1
                if ahead > 0:
                    self.release.wait(min(ahead, 0.05))
                    continue
                data = response.read(self.piece)
                if not data:
                    break
                digest.update(data)
                self.received += len(data)
            if self.then == "abort" and not response.isclosed():
                # The response's file holds the socket open until it is closed
                # too (on PyPy, whose collector is not prompt, that is not "soon").
                response.close()
                self._abort(sock)
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
            while True:
                if self.deadline and time.monotonic() > self.deadline:
                    self.error = "deadline passed"
                    return
                data = response.read(256 * KIB)
                if not data:
                    break
                digest.update(data)
                self.received += len(data)
            self.sha256 = digest.hexdigest()
            self.complete = True
            response.close()
        except Exception as exc:  # recorded, asserted by the test
            self.error = repr(exc)
        finally:
            sock.close()

    def _abort(self, sock: socket.socket) -> None:
        if self.reset:
            # SO_LINGER 0: close sends an RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def join_all(case: SynchronousTestCase, clients: list[Client], timeout: float) -> None:
    """Join every client thread within ``timeout`` in all; fail if one is left."""
    deadline = time.monotonic() + timeout
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
    stuck = [client.path for client in clients if client.alive]
    case.assertEqual(stuck, [], "client threads still running")


def run_clients(case: SynchronousTestCase, clients: list[Client]) -> threading.Event:
    """Start ``clients`` (which share one release event); at cleanup, release and join."""
    release = clients[0].release

    def stop() -> None:
        # Released clients read to the end or time out on their sockets; the
        # threads are daemons, so one still stuck after this can't hang the run.
        release.set()
        deadline = time.monotonic() + IO_TIMEOUT
        for client in clients:
            if client.thread is not None:
                client.join(max(0.0, deadline - time.monotonic()))

    case.addCleanup(stop)
    for client in clients:
        client.start()
    return release


def held(now: float, record: dict[str, object]) -> float:
    """How long the origin was (or has been so far) on a request."""
    end = record["end"]
    return (now if end is None else float(end)) - float(record["start"])  # type: ignore[arg-type]


def report(text: str) -> None:
    """Measured figures go to stderr, where a CI log keeps them."""
    sys.stderr.write(f"\n[spooling] {text}\n")


def wait_for_records(origin: TimingOrigin, count: int) -> None:
    """Until the origin has a record for ``count`` requests."""
    wait_until(lambda: len(origin.timings()[1]) >= count, IO_TIMEOUT, f"{count} requests")


# --- 1. slow clients don't hold the origin ---------------------------------------------------


class OriginReleaseTests(SynchronousTestCase):
    """50 clients reading a 2 MiB body at 20 KiB/s: who holds the origin.

    The clients announce an Ethernet MSS (:data:`CLIENT_MSS`). Over loopback's
    64 KiB MSS the kernel grows the gateway's send buffer to ``tcp_wmem``'s
    maximum (4 MiB) whatever the client's window, and a 2 MiB body would sit
    there whole, spool or no spool; with a real path's MSS it stays near 200 KiB,
    as it would in production.
    """

    clients = 50
    size = 2 * MIB
    #: Seconds the clients read slowly before the origin's records are read.
    slow_phase = 3.0

    def start_slow_clients(
        self, then: str, route: dict[str, object] | None = None
    ) -> tuple[TimingOrigin, Gateway, str, list[Client], Sampler]:
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(self, origin, route=route)
        sampler = Sampler(gateway.pid, spool_dir).start()
        self.addCleanup(sampler.stop)
        release = threading.Event()
        clients = [
            Client(gateway.port, f"/timed/{self.size}?id=c{n}", release, then=then)
            for n in range(self.clients)
        ]
        run_clients(self, clients)
        wait_for_records(origin, self.clients)
        return origin, gateway, spool_dir, clients, sampler

    def test_spooling_releases_origin(self) -> None:
        """With spooling (the default), every origin response is done within 1 s
        of its start, while its client has read only a small part of it: the
        rest is in a spool file (one per response). Then every client gets the
        whole body, sha256 intact."""
        origin, gateway, spool_dir, clients, sampler = self.start_slow_clients("finish")
        time.sleep(self.slow_phase)
        now, records = origin.timings()
        read_so_far = max(client.received for client in clients)
        durations = sorted(held(now, record) for record in records.values())
        report(
            f"buffering on: {self.clients} origin responses of {self.size // MIB} MiB held "
            f"median {statistics.median(durations):.3f}s, max {durations[-1]:.3f}s; clients "
            f"had read at most {read_so_far // KIB} KiB after {self.slow_phase}s; "
            f"{sampler.peak_files} spool files open at once, {sampler.peak_disk / MIB:.1f} MiB"
        )
        self.assertEqual([name for name, r in records.items() if not r["ok"]], [])
        self.assertLess(durations[-1], 1.0)
        # Still slow: the origin was not released by its client finishing.
        self.assertLess(read_so_far, self.size // 4)
        self.assertEqual(sampler.peak_files, self.clients)
        clients[0].release.set()
        started = time.monotonic()
        join_all(self, clients, FINISH_TIMEOUT)
        report(f"buffering on: clients read the rest in {time.monotonic() - started:.1f}s")
        expected = pattern_sha256(self.size)
        for client in clients:
            self.assertEqual((client.error, client.status), ("", 200), client.path)
            self.assertEqual((client.received, client.sha256), (self.size, expected))
        assert_spool_clean(self, gateway, spool_dir)

    def test_without_buffering_origin_is_held(self) -> None:
        """With ``buffering = false`` the same slow clients hold the origin: after
        4 s of slow reading no origin response has finished, at least 90% have
        been held over 3 s, and no spool file was opened."""
        hold = self.slow_phase + 1.0
        origin, gateway, spool_dir, clients, sampler = self.start_slow_clients(
            "abort", route={"buffering": "false"}
        )
        time.sleep(hold)
        now, records = origin.timings()
        durations = sorted(held(now, record) for record in records.values())
        finished = [name for name, record in records.items() if record["end"] is not None]
        sent = sorted(int(record["sent"]) for record in records.values())  # type: ignore[arg-type]
        report(
            f"buffering off: {self.clients} origin responses held median "
            f"{statistics.median(durations):.3f}s, min {durations[0]:.3f}s after {hold}s; "
            f"{len(finished)} finished; the origin had sent median "
            f"{statistics.median(sent) // KIB} KiB of {self.size // KIB} KiB"
        )
        self.assertEqual(finished, [])
        self.assertGreaterEqual(sum(d > 3.0 for d in durations), 0.9 * self.clients)
        self.assertEqual(sampler.peak_files, 0)
        clients[0].release.set()
        join_all(self, clients, IO_TIMEOUT)
        assert_spool_clean(self, gateway, spool_dir)
        gateway.assert_serving()


# --- 2. memory and disk stay within the caps -------------------------------------------------


class BoundsTests(SynchronousTestCase):
    """200 clients stalled on 5 MiB bodies, with spool caps far below what they'd need."""

    clients = 200
    size = 5 * MIB
    spool_memory = 8 * MIB
    spool_disk = 64 * MIB
    #: Per-body memory before spilling: 8 MiB holds 32 of them, so the chunked
    #: half of the clients (100, unknown length) runs the memory budget out.
    spool_buffer = 256 * KIB
    #: What the gateway may use besides its spools: the interpreter and its
    #: modules (about 55 MiB idle) and per connection one socket read and one
    #: transport buffer (200 x (64 + 64) KiB = 25 MiB), with room to spare.
    #: PyPy idles at about 110 MiB (JIT code, GC arenas) and its collector
    #: hands memory back later (seen: 160 MiB peak), so it gets twice the room.
    overhead = (100 if platform.python_implementation() == "CPython" else 200) * MIB
    #: Seconds the clients don't read at all, so that every response backs up.
    stall = 2.0

    def test_caps_hold_and_bodies_are_complete(self) -> None:
        """Peak VmRSS < spool_memory + 100 MiB, the open spool files never hold
        more than spool_disk, the disk cap is reached (some responses stream
        with backpressure instead), and every client gets the whole body,
        sha256 intact."""
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(
            self,
            origin,
            settings={
                "spool_memory": self.spool_memory,
                "spool_disk": self.spool_disk,
                "spool_buffer": self.spool_buffer,
            },
        )
        baseline = rss_bytes(gateway.pid)
        sampler = Sampler(gateway.pid, spool_dir).start()
        self.addCleanup(sampler.stop)
        release = threading.Event()
        deadline = time.monotonic() + FINISH_TIMEOUT
        clients = [
            Client(
                gateway.port,
                f"/timed/{self.size}?id=m{n}" + ("&chunked=1" if n % 2 else ""),
                release,
                rate=0,
                deadline=deadline,
            )
            for n in range(self.clients)
        ]
        started = time.monotonic()
        run_clients(self, clients)
        wait_for_records(origin, self.clients)
        time.sleep(self.stall)
        release.set()
        join_all(self, clients, FINISH_TIMEOUT)
        elapsed = time.monotonic() - started
        sampler.stop()
        bound = self.spool_memory + self.overhead
        report(
            f"bounds: {self.clients} clients x {self.size // MIB} MiB in {elapsed:.1f}s; "
            f"gateway VmRSS baseline {baseline / MIB:.1f} MiB, peak {sampler.peak_rss / MIB:.1f} "
            f"MiB (bound {bound / MIB:.0f}); spool disk peak {sampler.peak_disk / MIB:.1f} MiB "
            f"(cap {self.spool_disk / MIB:.0f}) in at most {sampler.peak_files} files; "
            f"{sampler.samples} samples"
        )
        expected = pattern_sha256(self.size)
        failed = [
            (client.path, client.error, client.received)
            for client in clients
            if (client.status, client.received, client.sha256) != (200, self.size, expected)
        ]
        self.assertEqual(failed[:5], [], f"{len(failed)} clients failed")
        self.assertLess(sampler.peak_rss, bound)
        # The caps were hit: the disk filled to within one body of its cap, and
        # fewer responses were spooled at once than there were clients.
        self.assertGreater(sampler.peak_disk, self.spool_disk - self.size)
        self.assertLess(sampler.peak_files, self.clients)
        assert_spool_clean(self, gateway, spool_dir)
        # The disk cap holds exactly: a full spool keeps the read that filled
        # it in memory, not on disk (gateway/spool.py, Spool.write).
        self.assertLessEqual(sampler.peak_disk, self.spool_disk)


# --- 3. streaming responses are never spooled --------------------------------------------


#: Events per stream, and the origin's interval between them.
EVENTS = 10
EVENT_INTERVAL = 0.2
#: How late an event may reach a promptly reading client, end to end.
EVENT_TOLERANCE = 0.15


@dataclass
class Event:
    """One ``data: SEQ SENT_AT`` event, and when it reached the client."""

    seq: int
    sent_at: float
    arrived_at: float


def read_events(port: int, path: str) -> tuple[int, dict[str, str], list[Event]]:
    """GET ``path`` and read its events as they come: (status, headers, events).

    ``read1`` hands over what has arrived without waiting for more, so an
    event's arrival time is when its last byte reached this process (give or
    take a scheduler tick). Comment lines (``:``) are skipped.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        events = []
        buf = b""
        while True:
            data = response.read1(65536)
            arrived = time.monotonic()
            if not data:
                break
            buf += data
            *complete, buf = buf.split(b"\n\n")
            for text in complete:
                for line in text.split(b"\n"):
                    if line.startswith(b"data: "):
                        seq, sent_at = line[6:].split()
                        events.append(Event(int(seq), float(sent_at), arrived))
        return response.status, headers, events
    finally:
        conn.close()


class StreamingTests(SynchronousTestCase):
    """``text/event-stream`` and ``X-Accel-Buffering: no`` pass as they are produced."""

    def prompt_events(
        self, kind: str, route: dict[str, object] | None = None
    ) -> dict[str, str]:
        """Read a stream of :data:`EVENTS` ``kind`` events promptly through a
        gateway; assert each came within :data:`EVENT_TOLERANCE` of being sent,
        and nothing was left in the spool. The response's headers."""
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(self, origin, route=route)
        path = f"/events?id=e&n={EVENTS}&interval={EVENT_INTERVAL}&type={kind}"
        status, headers, events = read_events(gateway.port, path)
        self.assertEqual(status, 200)
        self.assertEqual([event.seq for event in events], list(range(EVENTS)))
        late = [event.arrived_at - event.sent_at for event in events]
        report(
            f"{kind} events{' (buffering off)' if route else ''}: late by median "
            f"{statistics.median(late) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms"
        )
        self.assertLess(max(late), EVENT_TOLERANCE)
        assert_spool_clean(self, gateway, spool_dir)
        return headers

    def test_event_stream_is_not_delayed(self) -> None:
        """SSE events, 200 ms apart, each reach the client within 150 ms."""
        headers = self.prompt_events("sse")
        self.assertEqual(headers["content-type"], "text/event-stream")

    def test_accel_buffering_no_is_not_delayed_and_is_removed(self) -> None:
        """``X-Accel-Buffering: no`` events each reach the client within 150 ms,
        and the header (an instruction to the proxy) does not reach it."""
        headers = self.prompt_events("accel")
        self.assertEqual(headers["content-type"], "text/plain")
        self.assertNotIn("x-accel-buffering", headers)

    def test_accel_buffering_removed_when_buffering_off(self) -> None:
        """On a ``buffering = false`` route, ``X-Accel-Buffering`` is removed too
        (docs/spooling.md: whatever its value)."""
        headers = self.prompt_events("accel", route={"buffering": "false"})
        self.assertNotIn("x-accel-buffering", headers)

    def stalled_stream(self, kind: str) -> None:
        """A client that doesn't read a ``kind`` stream with 4 MiB of padding
        first: after 1.5 s no spool file has been opened and the origin is
        still held (the stream has backpressure, not a spool); once the client
        reads, the whole stream arrives."""
        pad = 4 * MIB
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(self, origin)
        sampler = Sampler(gateway.pid, spool_dir).start()
        self.addCleanup(sampler.stop)
        release = threading.Event()
        client = Client(
            gateway.port, f"/events?id=s&n=3&interval=0.05&type={kind}&pad={pad}", release, rate=0
        )
        run_clients(self, [client])
        wait_for_records(origin, 1)
        time.sleep(1.5)
        now, records = origin.timings()
        record = records["s"]
        sampler.stop()
        report(
            f"{kind} stream, client stalled: the origin had sent {int(record['sent']) // KIB} "
            f"KiB of {pad // KIB} KiB padding after {held(now, record):.1f}s; "
            f"{sampler.peak_files} spool files"
        )
        self.assertIsNone(record["end"])
        self.assertLess(int(record["sent"]), pad)  # type: ignore[arg-type]
        self.assertEqual(sampler.peak_files, 0)
        release.set()
        join_all(self, [client], IO_TIMEOUT)
        self.assertEqual((client.error, client.complete), ("", True))
        self.assertGreater(client.received, pad)
        assert_spool_clean(self, gateway, spool_dir)

    def test_event_stream_is_never_spooled(self) -> None:
        """``text/event-stream`` to a stalled client: backpressure, no spool."""
        self.stalled_stream("sse")

    def test_accel_buffering_no_is_never_spooled(self) -> None:
        """``X-Accel-Buffering: no`` to a stalled client: backpressure, no spool."""
        self.stalled_stream("accel")


# --- 4. no spool outlives its response ---------------------------------------------------


class CleanupTests(SynchronousTestCase):
    """Every path closes the spool: client abort, upstream abort, shutdown; start sweeps."""

    size = 2 * MIB

    def spooled_clients(
        self, paths: list[str], then: str = "abort", resets: bool = True
    ) -> tuple[TimingOrigin, Gateway, str, list[Client]]:
        """Slow clients on ``paths`` (every other one aborting with an RST when
        ``resets``), once the gateway holds a spool file for each of them."""
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(self, origin)
        release = threading.Event()
        clients = [
            Client(gateway.port, path, release, then=then, reset=resets and n % 2 == 1)
            for n, path in enumerate(paths)
        ]
        run_clients(self, clients)
        wait_until(
            lambda: len(spool_fds(gateway.pid, spool_dir)) == len(paths),
            IO_TIMEOUT,
            f"{len(paths)} spool files",
        )
        return origin, gateway, spool_dir, clients

    def test_client_aborts_leave_no_spool(self) -> None:
        """Clients that close (FIN or RST) mid-body, some after the origin was
        done and some while it is still writing into the spool: every spool
        file is closed, the spool directory is empty, the upstreams still being
        read are dropped (the origin sees its connection go), and the gateway
        serves on."""
        done = [f"/timed/{self.size}?id=d{n}" for n in range(10)]
        # 32 pieces of 64 KiB, 0.15 s apart: nearly 5 s of writing into the spool.
        writing = [f"/timed/{self.size}?id=w{n}&pace=0.15" for n in range(10)]
        origin, gateway, spool_dir, clients = self.spooled_clients(done + writing)
        wait_until(
            lambda: all(origin.timings()[1][f"d{n}"]["ok"] for n in range(10)),
            IO_TIMEOUT,
            "the unpaced responses to be spooled whole",
        )
        records = origin.timings()[1]
        self.assertEqual([r["end"] for name, r in records.items() if name[0] == "w"], [None] * 10)
        clients[0].release.set()
        join_all(self, clients, IO_TIMEOUT)
        assert_spool_clean(self, gateway, spool_dir)
        # Client gone: the upstream still writing is not read to its end.
        wait_until(
            lambda: all(r["ok"] is False for n, r in origin.timings()[1].items() if n[0] == "w"),
            CLEANUP_TIMEOUT,
            "the origin to see the paced responses' connections dropped",
        )
        records = origin.timings()[1]
        self.assertTrue(all(int(records[f"w{n}"]["sent"]) < self.size for n in range(10)))
        gateway.assert_serving()

    def test_upstream_abort_leaves_no_spool(self) -> None:
        """Origins that reset their connection 1 MiB into a spooled body: the
        clients get a cut body (never a complete-looking one) and every spool
        file is closed."""
        paths = [f"/timed/{self.size}?id=x{n}&pace=0.05&cut={MIB}" for n in range(5)]
        origin, gateway, spool_dir, clients = self.spooled_clients(
            paths, then="finish", resets=False
        )
        wait_until(
            lambda: all(r["ok"] is False for r in origin.timings()[1].values()),
            IO_TIMEOUT,
            "the origin to cut every response",
        )
        clients[0].release.set()
        join_all(self, clients, IO_TIMEOUT)
        for client in clients:
            self.assertFalse(client.complete, client.path)
            self.assertLessEqual(client.received, MIB)
        assert_spool_clean(self, gateway, spool_dir)
        gateway.assert_serving()

    def test_shutdown_with_open_spools(self) -> None:
        """SIGTERM while responses are being fed from spools: the clients still
        get their whole bodies from the spools, then the gateway exits (no
        traceback) and the spool directory is empty. (The other end of the grace, 10 s
        hard-coded in gateway/service.py, would make this test slow.)"""
        paths = [f"/timed/{self.size}?id=t{n}" for n in range(5)]
        _, gateway, spool_dir, clients = self.spooled_clients(paths, then="finish", resets=False)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        clients[0].release.set()
        join_all(self, clients, IO_TIMEOUT)
        expected = pattern_sha256(self.size)
        for client in clients:
            self.assertEqual((client.error, client.sha256), ("", expected), client.path)
        # twistd ends a SIGTERM-ed run by re-raising the signal once stopped
        # (twisted.application.app._exitWithSignal): a clean exit reads -SIGTERM.
        self.assertEqual(gateway.proc.wait(IO_TIMEOUT), -signal.SIGTERM)
        self.assertEqual(os.listdir(spool_dir), [])

    def test_stale_spool_files_swept_at_start(self) -> None:
        """Spool files left in ``spool_dir`` (by a crash) are deleted when the
        gateway starts; other files there are left alone."""
        spool_dir = new_tempdir(self)
        for name in ("gw-spool-stale1", "gw-spool-stale2", "keep-me"):
            with open(os.path.join(spool_dir, name), "wb") as file:
                file.write(b"x" * 4096)
        origin = TimingOrigin(self).start()
        spool_gateway(self, origin, spool_dir=spool_dir)
        self.assertEqual(os.listdir(spool_dir), ["keep-me"])


# --- 5. request buffering -----------------------------------------------------------------


UPLOAD_SIZE = 1 * MIB
UPLOAD_PIECES = 16
UPLOAD_TIME = 2.0
#: How long the origin may take to receive a buffered upload.
BUFFERED_RECEIVE = 0.5


@dataclass
class Upload:
    """What a slow upload saw: when it began and sent its last piece, and the answer."""

    began: float
    last_piece: float
    ended: float
    status: int
    answer: dict[str, object]


def slow_upload(port: int, path: str, *, chunked: bool = False) -> Upload:
    """POST :data:`UPLOAD_SIZE` pattern bytes in :data:`UPLOAD_PIECES` pieces
    spread over :data:`UPLOAD_TIME` seconds; the JSON answer."""
    body = b"".join(origin_module.pattern(UPLOAD_SIZE))
    piece = UPLOAD_SIZE // UPLOAD_PIECES
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % UPLOAD_SIZE
    head = b"POST %s HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % (path.encode(), framing)
    with raw_connect(port) as sock:
        began = time.monotonic()
        sock.sendall(head)
        last = began
        for n in range(UPLOAD_PIECES):
            wake = began + n * UPLOAD_TIME / (UPLOAD_PIECES - 1)
            time.sleep(max(0.0, wake - time.monotonic()))
            data = body[n * piece : (n + 1) * piece]
            if chunked:
                data = b"%x\r\n%s\r\n" % (len(data), data)
                if n == UPLOAD_PIECES - 1:
                    data += b"0\r\n\r\n"
            last = time.monotonic()
            sock.sendall(data)
        response = read_response(sock)
    ended = time.monotonic()
    head_bytes, answer = split_response(response)
    status = int(head_bytes.split(b" ", 2)[1])
    return Upload(began, last, ended, status, json.loads(answer) if status == 200 else {})


class RequestBufferingTests(SynchronousTestCase):
    """A 1 MiB upload sent over 2 s: when the origin sees it, and for how long."""

    def upload(self, route: dict[str, object], chunked: bool = False) -> tuple[Upload, dict]:
        origin = TimingOrigin(self).start()
        gateway, spool_dir = spool_gateway(self, origin, route=route)
        sampler = Sampler(gateway.pid, spool_dir).start()
        self.addCleanup(sampler.stop)
        upload = slow_upload(gateway.port, "/upload?id=u", chunked=chunked)
        sampler.stop()
        record = origin.timings()[1]["u"]
        self.assertEqual(upload.status, 200)
        self.assertEqual(
            (upload.answer["body_length"], upload.answer["body_sha256"]),
            (UPLOAD_SIZE, pattern_sha256(UPLOAD_SIZE)),
        )
        self.assertEqual(
            (record["length"], record["sha256"]), (UPLOAD_SIZE, pattern_sha256(UPLOAD_SIZE))
        )
        report(
            f"upload {'chunked ' if chunked else ''}{route}: sent over "
            f"{upload.last_piece - upload.began:.2f}s; the origin saw it "
            f"{float(record['start']) - upload.began:.2f}s after it began and took "
            f"{held(0, record):.3f}s to receive it; {sampler.peak_files} spool files"
        )
        assert_spool_clean(self, gateway, spool_dir)
        record["spool_files"] = sampler.peak_files
        return upload, record

    def test_buffered_upload_reaches_origin_whole(self) -> None:
        """With ``request_buffering = true`` the origin sees the request only
        after its last byte was sent, and receives the body in under 0.5 s."""
        upload, record = self.upload({"request_buffering": "true"})
        self.assertGreater(float(record["start"]), upload.last_piece)
        self.assertLess(held(0, record), BUFFERED_RECEIVE)
        self.assertGreaterEqual(record["spool_files"], 1)

    def test_buffered_chunked_upload_gets_content_length(self) -> None:
        """A chunked upload, buffered, goes to the origin whole with a
        Content-Length and no Transfer-Encoding."""
        upload, record = self.upload({"request_buffering": "true"}, chunked=True)
        self.assertGreater(float(record["start"]), upload.last_piece)
        self.assertLess(held(0, record), BUFFERED_RECEIVE)
        headers = {name.lower(): value for name, value in upload.answer["headers"]}
        self.assertEqual(headers.get("content-length"), str(UPLOAD_SIZE))
        self.assertNotIn("transfer-encoding", headers)

    def test_unbuffered_upload_holds_origin(self) -> None:
        """Without request buffering the origin sees the request at once and is
        held for the whole upload (over 1.5 s), and no spool file is used."""
        upload, record = self.upload({})
        self.assertLess(float(record["start"]) - upload.began, 0.5)
        self.assertGreater(held(0, record), UPLOAD_TIME * 0.75)
        self.assertEqual(record["spool_files"], 0)
