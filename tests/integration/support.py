"""Shared helpers for the integration tests: real processes on 127.0.0.1.

- :class:`Origin` runs ``origin.py`` (a stdlib HTTP/1.1 server) and reads its
  port and its connection/request counters.
- :class:`Gateway` writes a configuration, runs ``twistd -n gateway`` from the
  interpreter's own environment, learns from its log which port it listens on,
  waits until that port accepts, and stops it.
- :func:`raw_exchange` and friends speak bytes over a plain socket, for input no
  well-behaved client library would send.

Invariants: every process is started with its stop registered through
``addCleanup`` (SIGTERM, then SIGKILL after :data:`STOP_GRACE`); every wait has a
deadline; every listener is on 127.0.0.1 and binds port 0, the kernel picking
the port, so parallel runs never clash (the packaged-default test, which must
use 8080-8082, checks they are free first).  A gateway whose log shows a
traceback fails the test that ran it, whatever the test itself checked.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from . import origin as _origin

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGIN_SCRIPT = os.path.join(HERE, "origin.py")
#: The twistd of the environment the tests run in, where the gateway is installed.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

START_TIMEOUT = 15.0
STOP_GRACE = 5.0
IO_TIMEOUT = 10.0
POLL = 0.02

pattern_sha256 = _origin.pattern_sha256

_STARTING_ON = re.compile(r"\] (\S+)(?: \(TLS\))? starting on ([0-9]+)$", re.MULTILINE)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL
) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> int:
    """SIGTERM, then SIGKILL if it is still there after ``grace``; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether 127.0.0.1:``port`` accepts a TCP connection now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on: picked by the kernel, bound, then released.

    Only for an address that must refuse connections (a dead upstream); never
    for something that must listen, which binds port 0 itself.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/PID/status), in bytes."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- the origin --------------------------------------------------------------------


class Origin:
    """``origin.py`` as a subprocess on 127.0.0.1, port chosen by the kernel.

    ``name`` makes it add ``X-Served-By: NAME`` to its responses; ``delay``
    makes it wait that many seconds before each answer. After :meth:`kill`,
    :meth:`start` brings it back on the same port.  A subclass may run another
    script that takes the same options (``script``) and pass it more
    (``extra_args``).
    """

    script = ORIGIN_SCRIPT
    extra_args: tuple[str, ...] = ()

    def __init__(self, case: SynchronousTestCase, name: str = "", delay: float = 0.0) -> None:
        self.case = case
        self.name = name
        self.delay = delay
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Origin:
        """Start it, register its stop, and read the port it reports.

        The first start binds port 0; a later one (after :meth:`kill`) binds the
        port it had, so the gateway's configuration still points at it.
        """
        args = [sys.executable, self.script, "--port", str(self.port), *self.extra_args]
        if self.name:
            args += ["--name", self.name]
        if self.delay:
            args += ["--delay", repr(self.delay)]
        logdir = new_tempdir(self.case)
        with open(os.path.join(logdir, "origin.err"), "wb") as err:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=logdir,
            )
        self.case.addCleanup(stop_process, self.proc)
        line = _read_line(self.proc, START_TIMEOUT, "the origin's port")
        if self.port and int(line) != self.port:
            raise AssertionError(f"origin came back on port {int(line)}, not {self.port}")
        self.port = int(line)
        return self

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone: its port refuses from then on."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_GRACE)

    def hits(self) -> dict[str, int]:
        """``{PATH: COUNT}`` of the requests it served, from ``/_hits``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
        try:
            conn.request("GET", "/_hits", headers={"Connection": "close"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict[str, int]:
        """``{"connections": C, "requests": R}`` from ``/_stats`` (not counted itself)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
        try:
            conn.request("GET", "/_stats", headers={"Connection": "close"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()


def _read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> bytes:
    """The first line ``proc`` writes on stdout, within ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if selector.select(left):
                data = os.read(fd, 4096)
                if not data:
                    raise AssertionError(f"process exited ({proc.wait(1)}) before {what}")
                buf += data
    return buf.split(b"\n", 1)[0]


# --- the gateway ---------------------------------------------------------------------


def listener_ini(**keys: object) -> str:
    """A ``[listener:web]`` section on 127.0.0.1 port 0, plus ``keys``."""
    lines = ["[listener:web]", "bind = tcp:0:interface=127.0.0.1"]
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def backend_ini(urls: Sequence[str], *, server_keys: Sequence[dict[str, object]] = (),
                **keys: object) -> str:
    """``[backend:app]`` with ``keys``, a server per URL and a catch-all route.

    The servers are ``app1``, ``app2``, ... in order; ``server_keys[i]`` holds
    extra keys for the i-th (``backup = yes``, ``weight = 2``).
    """
    lines = ["[backend:app]"] + [f"{key} = {value}" for key, value in keys.items()]
    for number, url in enumerate(urls, start=1):
        lines += ["", f"[server:app{number}]", "backend = app", f"address = {url}"]
        if number <= len(server_keys):
            lines += [f"{key} = {value}" for key, value in server_keys[number - 1].items()]
    lines += ["", "[route:all]", "backend = app"]
    return "\n".join(lines) + "\n"


def simple_ini(urls: Sequence[str], listener: dict[str, object] | None = None,
               backend: dict[str, object] | None = None) -> str:
    """One listener on port 0 in front of ``urls``; extra keys per section."""
    return listener_ini(**(listener or {})) + "\n" + backend_ini(urls, **(backend or {}))


class Gateway:
    """``twistd -n gateway`` as a subprocess, with its log captured in files.

    Give ``ini`` (the text of a configuration file) or ``args`` (what follows
    ``gateway`` on the command line).  With neither, the packaged default runs.
    ``port`` is the listener's port: read from the log when the configuration
    binds port 0, else given (and then checked against the log).
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        ini: str | None = None,
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.case = case
        self.ini = ini
        self.args = list(args)
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = new_tempdir(case)
        self.config_path = os.path.join(self.dir, "gateway.ini")
        self.out_path = os.path.join(self.dir, "gateway.out")
        self.err_path = os.path.join(self.dir, "gateway.err")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """The command line: ``twistd -n --pidfile= gateway ...``.

        One worker process unless the test chose (``--workers`` in ``args``, or
        a ``workers`` key in ``ini``): counts of connections and balancing
        orders are per process.  The packaged default runs as shipped.
        """
        args = list(self.args)
        if self.ini is not None:
            args = ["--config", self.config_path] + args
        chosen = "--workers" in self.args or re.search(
            r"^\s*workers\s*=", self.ini or "", re.MULTILINE
        )
        if args and not chosen:
            args += ["--workers", "1"]
        return [TWISTD, "-n", "--pidfile=", "gateway"] + args

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (its stop registered) without waiting for anything."""
        if self.ini is not None:
            with open(self.config_path, "w") as file:
                file.write(self.ini)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.dir
            )
        # Cleanups run last-in first-out: stop the process, then read its whole log.
        self.case.addCleanup(self.assert_no_traceback)
        self.case.addCleanup(stop_process, self.proc)
        return self.proc

    def assert_no_traceback(self) -> None:
        """The log shows no Python traceback: every error was handled as designed."""
        log = self.log()
        if "Traceback (most recent call last)" in log or "Unhandled error" in log:
            raise AssertionError(f"the gateway logged a traceback:\n{log[-4000:]}")

    def start(self) -> Gateway:
        """Start it and wait until its listener accepts connections."""
        proc = self.spawn()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {proc.returncode} before listening:\n{self.log()}"
                )
            ports = self.listening()
            if not self.port:
                if len(ports) > 1:
                    raise AssertionError(f"gateway listens on several ports: {ports}")
                if not ports:
                    return False
                self.port = ports.pop()
            elif self.port not in ports:
                return False  # whoever accepts there now, it is not this process yet
            return accepts(self.port)

        wait_until(ready, START_TIMEOUT, "the gateway to listen")
        return self

    def listening(self) -> set[int]:
        """Ports the gateway's listeners have bound, as its log reports them.

        Twisted logs ``FACTORY starting on PORT`` when a TCP port listens; that is
        how a listener bound to port 0 tells which port the kernel gave it.  (The
        alternative, matching socket inodes in /proc/net/tcp, costs 0.2 s a scan on
        a machine with many TIME_WAIT sockets.)  Demo origins are left out.
        """
        return {
            int(port)
            for factory, port in _STARTING_ON.findall(self.log())
            if factory != "DemoSite"
        }

    def stop(self) -> int:
        """SIGTERM (then SIGKILL); the exit status."""
        assert self.proc is not None
        return stop_process(self.proc)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        text = []
        for path in (self.out_path, self.err_path):
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as file:
                    text.append(file.read())
        return "\n".join(text)

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = IO_TIMEOUT) -> str:
        """The log once ``pattern`` (a regex) occurs ``count`` times in it."""
        regex = re.compile(pattern)

        def found() -> str:
            text = self.log()
            return text if len(regex.findall(text)) >= count else ""

        return wait_until(found, timeout, f"{count} log line(s) matching {pattern!r}")

    def connection(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPConnection:
        """A new http.client connection to the listener (closed at cleanup)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        self.case.addCleanup(conn.close)
        return conn

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def echo(self, path: str = "/echo", **kwargs: Any) -> dict[str, Any]:
        """What the origin saw of a request through the gateway (``/echo`` JSON)."""
        status, _, body = self.get(path, **kwargs)
        self.case.assertEqual(status, 200, body[:200])
        return json.loads(body)

    def assert_serving(self) -> None:
        """The process is alive and answers a plain GET through to the origin."""
        self.case.assertTrue(self.alive(), f"the gateway died:\n{self.log()}")
        seen = self.echo("/echo?alive")
        self.case.assertEqual(seen["target"], "/echo?alive")


def start_pair(case: SynchronousTestCase, listener: dict[str, object] | None = None,
               backend: dict[str, object] | None = None) -> tuple[Origin, Gateway]:
    """An origin and a gateway in front of it, both started."""
    origin = Origin(case).start()
    gateway = Gateway(case, simple_ini([origin.url], listener, backend)).start()
    return origin, gateway


# --- raw sockets ----------------------------------------------------------------------


@dataclass
class RawResult:
    """What came back on a raw connection: the bytes, and whether the peer closed."""

    data: bytes
    closed: bool
    reset: bool = False

    @property
    def status(self) -> int:
        """The status code of the first response (0 if none arrived)."""
        match = re.match(rb"HTTP/1\.[01] ([0-9]{3}) ", self.data)
        return int(match.group(1)) if match else 0


def raw_connect(port: int, timeout: float = IO_TIMEOUT) -> socket.socket:
    """A plain TCP connection to 127.0.0.1:``port``, Nagle off so writes go at once."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_close(sock: socket.socket, timeout: float = IO_TIMEOUT) -> RawResult:
    """Read until the peer closes, or until ``timeout`` passes (then ``closed`` is False)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return RawResult(b"".join(chunks), closed=False)
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return RawResult(b"".join(chunks), closed=False)
        except ConnectionResetError:
            return RawResult(b"".join(chunks), closed=True, reset=True)
        if not data:
            return RawResult(b"".join(chunks), closed=True)
        chunks.append(data)


def read_response(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bytes:
    """Read one response with a Content-Length body (error pages, echo JSON)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            match = re.search(rb"\r\ncontent-length: *([0-9]+)", buf[:end], re.IGNORECASE)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buf) >= total:
                return buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete response within {timeout}s: {buf[:300]!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed inside a response: {buf[:300]!r}")
        buf += data


def raw_exchange(port: int, data: bytes, timeout: float = IO_TIMEOUT) -> RawResult:
    """Send ``data`` in one write, then read everything until the gateway closes."""
    with raw_connect(port, timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def split_response(data: bytes) -> tuple[bytes, bytes]:
    """(head without its final CRLF CRLF, body) of one response."""
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def new_tempdir(case: SynchronousTestCase) -> str:
    """A fresh directory in the system's temporary space, removed at cleanup.

    Not ``case.mktemp()``: under pytest that would land in the working tree.
    """
    path = tempfile.mkdtemp(prefix="gateway-it-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


__all__ = [
    "Gateway",
    "IO_TIMEOUT",
    "Origin",
    "RawResult",
    "TWISTD",
    "accepts",
    "backend_ini",
    "free_port",
    "listener_ini",
    "new_tempdir",
    "pattern_sha256",
    "raw_connect",
    "raw_exchange",
    "read_response",
    "read_until_close",
    "rss_bytes",
    "simple_ini",
    "split_response",
    "start_pair",
    "stop_process",
    "wait_until",
]
