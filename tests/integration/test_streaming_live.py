"""Large bodies stream through the gateway in bounded memory (backpressure, not buffering)."""

from __future__ import annotations

import platform
import re
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from .support import raw_connect, rss_bytes, start_pair

MIB = 1024 * 1024
BODY_SIZE = 200 * MIB
#: The gateway's whole VmRSS while 200 MiB pass through. PyPy idles at about
#: 110 MiB (JIT code, GC arenas; seen peaking at 134 MiB here), so it gets more.
RSS_LIMIT = (100 if platform.python_implementation() == "CPython" else 160) * MIB
SAMPLE_INTERVAL = 0.05
TRANSFER_TIMEOUT = 60.0


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1
            except OSError:
                return  # the process is gone; the test will say so
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class StreamingTests(SynchronousTestCase):
    """A response far larger than the memory bound passes through whole."""

    def stream(self, stall: float) -> None:
        """GET 200 MB through a fresh gateway, stalling ``stall`` s after the head.

        The body is counted in a reused 4 MiB buffer, never kept, while the
        gateway's VmRSS is sampled; asserts the count is exact and the peak < 100 MB.
        """
        origin, gateway = start_pair(self)
        baseline = rss_bytes(gateway.pid)
        view = memoryview(bytearray(4 * MIB))
        started = time.monotonic()
        deadline = started + TRANSFER_TIMEOUT
        with RssSampler(gateway.pid) as sampler, raw_connect(gateway.port) as sock:
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % BODY_SIZE)
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                self.assertTrue(data, f"closed before the response head: {head!r}")
                head += data
            head, _, early = head.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            match = re.search(rb"\r\nContent-Length: ([0-9]+)", head, re.IGNORECASE)
            self.assertIsNotNone(match, head)
            self.assertEqual(int(match.group(1)), BODY_SIZE)
            received = len(early)
            time.sleep(stall)
            while received < BODY_SIZE:
                self.assertLess(time.monotonic(), deadline, f"only {received} bytes in time")
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                n = sock.recv_into(view)
                if not n:
                    break
                received += n
        elapsed = time.monotonic() - started
        self.assertEqual(received, BODY_SIZE)
        self.assertGreater(sampler.samples, 0)
        report = (
            f"streamed {BODY_SIZE // MIB} MiB in {elapsed:.2f}s (stall {stall}s); gateway "
            f"VmRSS baseline {baseline / MIB:.1f} MiB, peak {sampler.peak / MIB:.1f} MiB "
            f"over {sampler.samples} samples"
        )
        sys.stderr.write(report + "\n")
        self.assertLess(sampler.peak, RSS_LIMIT, report)
        gateway.assert_serving()

    def test_200mb_response_in_bounded_memory(self) -> None:
        """200 MB to a client reading fast: every byte arrives, peak VmRSS < 100 MB."""
        self.stream(stall=0.0)

    def test_stalled_client_applies_backpressure(self) -> None:
        """A client that stops reading for 1 s: the gateway stops reading the origin,
        rather than buffering what it sends (peak VmRSS < 100 MB), then resumes."""
        self.stream(stall=1.0)
