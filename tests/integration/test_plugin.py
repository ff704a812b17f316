"""The installed command lines: ``twistd gateway`` and ``python -m gateway check``."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .support import TWISTD, Gateway, listener_ini, new_tempdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TIMEOUT = 30.0
#: A configuration error is found before anything listens: well under this.
REFUSAL_DEADLINE = 10.0
DEFAULT_PORTS = (8080, 8081, 8082)


def run(case: SynchronousTestCase, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded) in a fresh directory outside the tree."""
    return subprocess.run(
        args,
        cwd=new_tempdir(case),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


class PluginTests(SynchronousTestCase):
    """twistd finds the plugin."""

    def test_twistd_help_lists_gateway(self) -> None:
        """``twistd --help`` lists the ``gateway`` subcommand."""
        result = run(self, [TWISTD, "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = [line.split()[0] for line in result.stdout.splitlines() if line[:4] == "    "]
        self.assertIn("gateway", commands)


class CheckTests(SynchronousTestCase):
    """``python -m gateway check`` on the shipped configurations."""

    def test_shipped_configs_pass_check(self) -> None:
        """Every etc/*.ini loads: ``python -m gateway check`` exits 0 and says OK for each."""
        files = sorted(glob.glob(os.path.join(REPO, "etc", "*.ini")))
        self.assertTrue(files, "no etc/*.ini found")
        result = run(self, [sys.executable, "-m", "gateway", "check", *files])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        for path in files:
            self.assertIn(f"{path}: OK", result.stdout)


class BadConfigTests(SynchronousTestCase):
    """A wrong configuration refuses to start, quickly, naming file, line, section, key."""

    def refuse(self, ini: str) -> str:
        """Start twistd on ``ini``; assert it exits non-zero in time; its stderr."""
        gateway = Gateway(self, ini)
        started = time.monotonic()
        proc = gateway.spawn()
        try:
            status = proc.wait(REFUSAL_DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail(f"gateway still running after {REFUSAL_DEADLINE}s:\n{gateway.log()}")
        self.assertNotEqual(status, 0, gateway.log())
        self.assertLess(time.monotonic() - started, REFUSAL_DEADLINE)
        with open(gateway.err_path, encoding="utf-8") as file:
            stderr = file.read()
        self.assertNotIn("Traceback", stderr)
        return stderr.replace(gateway.config_path, "FILE")

    def test_unknown_key_refuses_start(self) -> None:
        """An unknown listener key: exit non-zero, ``FILE:3 [listener:web] colour: unknown key``."""
        ini = listener_ini(colour="blue") + (
            "\n[backend:app]\n\n[server:a]\nbackend = app\naddress = http://127.0.0.1:9\n"
            "\n[route:all]\nbackend = app\n"
        )
        stderr = self.refuse(ini)
        self.assertIn("FILE:3 [listener:web] colour: unknown key", stderr)

    def test_route_to_missing_backend_refuses_start(self) -> None:
        """A route naming no backend: exit non-zero, ``FILE:LINE [route:all] backend: ...``."""
        ini = listener_ini() + (
            "\n[backend:app]\n\n[server:a]\nbackend = app\naddress = http://127.0.0.1:9\n"
            "\n[route:all]\nbackend = nope\n"
        )
        line = ini.splitlines().index("backend = nope") + 1
        stderr = self.refuse(ini)
        self.assertIn(f"FILE:{line} [route:all] backend: no [backend:nope] section", stderr)


class PackagedDefaultTests(SynchronousTestCase):
    """``twistd -n gateway`` with no arguments runs the packaged demo."""

    def test_default_balances_over_demo_origins(self) -> None:
        """Two requests to 127.0.0.1:8080 are answered by demo1 and by demo2 (round robin)."""
        for port in DEFAULT_PORTS:
            with socket.socket() as sock:
                # As twistd binds: SO_REUSEADDR, so that TIME_WAIT left by an
                # earlier run doesn't count as taken, but a listener does.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                    sock.listen()
                except OSError:
                    raise SkipTest(f"port {port} is taken; the packaged default needs 8080-8082")
        gateway = Gateway(self, port=8080)
        try:
            gateway.start()
        except AssertionError:
            if "Address already in use" in gateway.log():
                raise SkipTest("port 8080-8082 was taken while the gateway started")
            raise
        served = []
        for _ in range(2):
            status, headers, body = gateway.get("/")
            self.assertEqual(status, 200, body)
            served.append(headers.get("X-Served-By"))
        self.assertEqual(sorted(served), ["demo1", "demo2"])
