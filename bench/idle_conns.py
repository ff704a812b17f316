"""How much memory idle keep-alive client connections cost the gateway.

Starts an origin-less gateway (quick mode towards a closed port: idle clients
never reach an upstream), opens N client connections to it on 127.0.0.1, makes
each send one request whose answer keeps the connection open (a 404 from a
route-less host is not possible in quick mode, so each connection sends nothing
and simply stays open; the gateway holds it in its idle state with its idle
timer armed), and reports the gateway's VmRSS before and after, per connection.

Usage: ``bench/.venv/bin/python bench/idle_conns.py [--connections 10000]``
(``bash bench/run`` creates ``bench/.venv``). Needs ``ulimit -n`` above twice
the connection count (client and server ends live in one machine). Bounded:
connects at most ``--connections`` sockets, gives up after 60 s, and stops the
gateway it started.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gateway(port: int, workdir: str) -> subprocess.Popen[bytes]:
    """The gateway, one worker, access log off, long idle timeout."""
    config = os.path.join(workdir, "idle.ini")
    with open(config, "w", encoding="ascii") as file:
        file.write(
            "[gateway]\naccess_log = false\nworkers = 1\n"
            f"[listener:web]\nbind = tcp:{port}:interface=127.0.0.1:backlog=4096\n"
            "timeout_idle = 10m\nmax_connections = 100000\n"
            "[backend:none]\n[server:none1]\nbackend = none\naddress = http://127.0.0.1:9\n"
            "[route:all]\nbackend = none\n"
        )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "gateway", "--config", config],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gateway did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 2 * args.connections + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    port = free_port()
    sockets: list[socket.socket] = []
    with tempfile.TemporaryDirectory() as workdir:
        gateway = start_gateway(port, workdir)
        try:
            time.sleep(1.0)
            before = rss_kib(gateway.pid)
            deadline = time.monotonic() + 60
            while len(sockets) < args.connections and time.monotonic() < deadline:
                sock = socket.socket()
                sock.setblocking(True)
                sock.connect(("127.0.0.1", port))
                sockets.append(sock)
            time.sleep(2.0)  # let the gateway accept and set up every connection
            after = rss_kib(gateway.pid)
            count = len(sockets)
            total_mib = (after - before) / 1024
            print(f"idle connections: {count}")
            print(f"gateway RSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB")
            print(f"cost: {total_mib:.1f} MiB in total, {1024 * total_mib / max(count, 1):.2f} KiB each")
        finally:
            for sock in sockets:
                sock.close()
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
