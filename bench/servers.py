"""The processes a benchmark runs: origins, nginx proxies, gateways, Twisted's proxy.

Invariants:
- Every process is started through :class:`Processes`, in a session (and so a
  process group) of its own; :meth:`Processes.stop_all` ends each group with
  SIGTERM, then SIGKILL after a grace period.  Nothing else is ever signalled.
- Everything listens on 127.0.0.1 only, on ports the kernel picked as free.
- Every file (configs, pid files, logs, nginx temp dirs, gateway spool
  directories, both proxies' caches, certificates, the static bodies) lives
  under one temporary directory.
- Every gateway runs with an explicit ``workers`` count (1 unless a cell is
  about workers), so a change of the default can't change what is measured.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
#: Response bodies the origin serves, by URL path.
BODIES = {"/1k": 1024, "/100k": 100 * 1024}
#: The origin serves the same bodies under this prefix with ``max-age=3600``.
CACHED_PREFIX = "/cached/"
STOP_GRACE_S = 5.0
START_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Server:
    """A started server: its name, port, and the process whose RSS is reported."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    scheme: str = "http"
    workers: int = 1

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/path`` (``https://`` for a TLS listener)."""
        return f"{self.scheme}://{HOST}:{self.port}{path}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process and its direct children so far.

        For nginx that is the master and its workers; for the gateway the
        process itself (and its workers, once it has any).
        """
        pids = [self.process.pid, *_children(self.process.pid)]
        return sum(cpu_seconds(pid) for pid in pids)

    def rss_kib(self) -> int:
        """VmRSS of the process that does the work, or of all processes (parent
        and workers) when the server runs more than one worker."""
        if self.workers > 1:
            pids = [self.process.pid, *_children(self.process.pid)]
            return sum(rss_kib(pid) for pid in pids)
        return rss_kib(self.measured_pid())

    def measured_pid(self) -> int:
        """The process that does the work: nginx's single worker, else the process itself."""
        pids = _children(self.process.pid)
        # An nginx master has exactly one worker here (worker_processes 1).
        return pids[0] if pids and self.name.startswith("nginx") else self.process.pid


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux's /proc/PID/task/PID/children)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat; 0 if it is gone."""
    try:
        # The command name (field 2) may hold spaces: split after its ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Every process the benchmark started; :meth:`stop_all` ends them all."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session with output to ``log``."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM every group, wait up to STOP_GRACE_S, then SIGKILL what is left."""
        for process in self._started:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self._started:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self._started:
            # The group may outlive its leader (an nginx worker), so always sweep it.
            _signal_group(process.pid, signal.SIGKILL)
            if process.poll() is None:
                process.wait(timeout=STOP_GRACE_S)
        self._started.clear()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until_listening(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once ``server`` accepts connections; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{tail(server.log)}")
        try:
            with socket.create_connection((HOST, server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} is not listening after {timeout_s:g} s:\n{tail(server.log)}")


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows counter: connections a full accept queue refused.

    The counter is system-wide, so another program's overflows count too.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def write_bodies(root: Path) -> Path:
    """Write the static bodies the origin serves; return the document root."""
    www = root / "www"
    www.mkdir()
    for path, size in BODIES.items():
        (www / path.lstrip("/")).write_bytes(bytes(ord("a") + i % 26 for i in range(size)))
    return www


def _nginx_conf(root: Path, name: str, server_block: str, workers: int = 1) -> Path:
    """An nginx.conf for one instance: ``workers`` workers (one unless a cell is
    about workers), no daemon, all files under ``root``."""
    state = root / name
    state.mkdir()
    # As root the worker would switch to "nobody", which can't use our temp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {state}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = f"""\
# {name}: written by bench/servers.py for one benchmark run.
{user}
daemon off;
master_process on;
worker_processes {workers};
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{temp}
{server_block}
}}
"""
    conf = state / "nginx.conf"
    conf.write_text(text)
    return conf


def _start_nginx(
    processes: Processes, nginx: str, root: Path, name: str, server_block: str,
    workers: int = 1,
) -> Server:
    conf = _nginx_conf(root, name, server_block, workers)
    log = root / f"{name}.log"
    # "listen 127.0.0.1:PORT;" or "listen 127.0.0.1:PORT ssl;"
    listen = server_block.split(f"listen {HOST}:", 1)[1].split(";", 1)[0].split()
    scheme = "https" if "ssl" in listen[1:] else "http"
    process = processes.start([nginx, "-p", str(conf.parent), "-c", str(conf)], log)
    server = Server(name, int(listen[0]), process, log, scheme, workers)
    wait_until_listening(server)
    return server


def start_origin(processes: Processes, nginx: str, root: Path, www: Path) -> Server:
    """nginx serving the static bodies from ``www`` with keep-alive: the fastest origin.

    Under ``/cached/`` (``/cached/1k``, ``/cached/100k``) it serves the same
    files with ``Cache-Control: max-age=3600``, and logs each of those requests
    to :func:`cached_log` (bench/cachebench.py counts them: a cache hit never
    reaches the origin). Nothing else is logged.
    """
    block = f"""\
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    server {{
        listen {HOST}:{free_port()};
        root {www};
        location {CACHED_PREFIX} {{
            alias {www}/;
            add_header Cache-Control "max-age=3600";
            access_log {cached_log(root)};
        }}
    }}"""
    return _start_nginx(processes, nginx, root, "origin", block)


def cached_log(root: Path) -> Path:
    """The origin's log of requests under ``/cached/``: one line per request."""
    return root / "origin" / "cached-access.log"


def start_nginx_proxy(
    processes: Processes, nginx: str, root: Path, origin: Server,
    name: str = "nginx", workers: int = 1, tls: str = "", http: str = "", location: str = "",
) -> Server:
    """The reference: nginx proxy_pass to an upstream with 64 idle keep-alive connections.

    ``tls`` holds ``ssl_*`` directives: the listener then speaks TLS
    (see bench/tlsbench.py). ``http`` and ``location`` are extra directives
    for the ``http`` block and the proxying ``location`` (``proxy_cache``:
    bench/cachebench.py). Everything else is nginx's default, response
    buffering (``proxy_buffering on``) included.
    """
    listen = f"{HOST}:{free_port()}" + (" ssl" if tls else "")
    block = f"""\
{http}
    upstream origin {{
        server {HOST}:{origin.port};
        keepalive 64;
    }}
    server {{
        listen {listen};
{tls}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{location}
        }}
    }}"""
    return _start_nginx(processes, nginx, root, name, block, workers)


def gateway_config(
    root: Path, name: str, port: int, origin: Server, *, access_log: bool = False,
    workers: int = 1, settings: str = "", listener: str = "", route: str = "",
    sections: str = "",
) -> Path:
    """An INI equal to quick mode (``--listen``/``--upstream``) plus settings.

    ``workers`` is always written (1 unless a cell is about workers: the
    default is becoming one worker per core). ``settings``, ``listener`` and
    ``route`` are extra key lines for ``[gateway]``, ``[listener:quick]`` and
    ``[route:quick]``; ``sections``
    is appended whole (TLS sites). Each gateway spools into a directory of its
    own under ``root``: every gateway sweeps its spool directory at start.
    """
    ini = root / f"{name}.ini"
    ini.write_text(
        f"""\
# {name}: quick mode's configuration written out, for one benchmark run.
[gateway]
access_log = {"true" if access_log else "false"}
workers = {workers}
spool_dir = {root / ("spool-" + name)}
{settings}
[listener:quick]
bind = tcp:{port}:interface={HOST}
{listener}
[backend:quick]

[server:quick1]
backend = quick
address = http://{HOST}:{origin.port}

[route:quick]
backend = quick
{route}
{sections}"""
    )
    return ini


def start_gateway(
    processes: Processes, twistd: str, root: Path, origin: Server, access_log: bool,
    *, name: str = "", workers: int = 1, settings: str = "", listener: str = "",
    route: str = "", sections: str = "",
) -> Server:
    """The gateway in front of ``origin``, from an INI file (:func:`gateway_config`).

    With ``access_log`` its access log is on (the default, as in quick mode).
    The log goes to stdout, redirected to a file, as ``twistd -n`` logs by
    default (and as systemd or a container would take it): that is the path
    with batched access lines (gateway.logbuffer). A listener with
    ``tls = true`` in ``listener`` is reached over https.
    """
    port = free_port()
    name = name or ("gateway+log" if access_log else "gateway")
    log = root / f"{name}.out"
    ini = gateway_config(root, name, port, origin, access_log=access_log, workers=workers,
                         settings=settings, listener=listener, route=route, sections=sections)
    argv = [twistd, "-n", "--pidfile=", "gateway", "--config", str(ini)]
    scheme = "https" if "tls = true" in listener else "http"
    server = Server(name, port, processes.start(argv, log), log, scheme, workers)
    wait_until_listening(server)
    return server


def wait_for_workers(server: Server, timeout_s: float = START_TIMEOUT_S) -> bool:
    """Whether ``server`` has ``server.workers`` child processes within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(_children(server.process.pid)) >= server.workers:
            return True
        time.sleep(0.1)
    return False


def start_twisted_proxy(processes: Processes, root: Path, origin: Server) -> Server:
    """Twisted's own ``ReverseProxyResource`` (bench/twisted_proxy.py) in front of ``origin``."""
    port = free_port()
    script = Path(__file__).with_name("twisted_proxy.py")
    log = root / "twisted.log"
    process = processes.start([sys.executable, str(script), str(port), str(origin.port)], log)
    server = Server("twisted", port, process, log)
    wait_until_listening(server)
    return server
