"""Tests for multi-core: gateway.workers (pure), gateway.adoption (worker side),
gateway.supervisor (the parent), with fake reactors and no sockets."""

from __future__ import annotations

import json
import os
import pickle
import socket
import tempfile
from dataclasses import replace
from typing import Any

import trustme
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, eventAsJSON
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway import adoption, logrelay, supervisor, workers
from gateway.config import DemoConfig, ListenerConfig
from gateway.service import GatewayService
from gateway.tap import logs_to_stdout, worker_option
from gateway.testing import simple_config
from gateway.workers import (
    DEFAULT_BACKLOG,
    InheritedSocket,
    ListenSpec,
    RestartPolicy,
    Restarts,
    decode_sockets,
    encode_sockets,
    endpoint_options,
    listen_spec,
    worker_count,
)

# --- how many workers --------------------------------------------------------------


class WorkerCountTests(SynchronousTestCase):
    def test_configured_count_wins(self) -> None:
        """``workers = 3`` runs three, whatever the core count."""
        self.assertEqual(worker_count(3, 8), 3)

    def test_zero_is_one_per_core(self) -> None:
        """``workers = 0`` runs one per CPU core."""
        self.assertEqual(worker_count(0, 2), 2)

    def test_unknown_core_count_is_one(self) -> None:
        """``os.cpu_count()`` may be None: then one worker."""
        self.assertEqual(worker_count(0, None), 1)

    def test_core_count_capped(self) -> None:
        """A 128-core machine still runs at most MAX_WORKERS (64) by default."""
        self.assertEqual(worker_count(0, 128), workers.MAX_WORKERS)

    def test_option_accepts_range(self) -> None:
        """``--workers`` takes 0 and 64."""
        self.assertEqual((worker_option("0"), worker_option("64")), (0, 64))

    def test_option_rejects_outside_range(self) -> None:
        """``--workers 65`` and ``--workers -1`` are refused (ValueError: a usage error)."""
        self.assertRaises(ValueError, worker_option, "65")
        self.assertRaises(ValueError, worker_option, "-1")


# --- endpoint strings --------------------------------------------------------------


class EndpointOptionsTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """The ``key=value`` fields after the port are found by key."""
        self.assertEqual(
            endpoint_options("tcp:80:interface=127.0.0.1:backlog=5"), {"interface", "backlog"}
        )

    def test_escaped_colons(self) -> None:
        """An escaped colon doesn't split a field (``interface=\\:\\:1``)."""
        self.assertEqual(endpoint_options(r"tcp:80:interface=\:\:1"), {"interface"})

    def test_none(self) -> None:
        """A bare ``tcp:80`` has no options."""
        self.assertEqual(endpoint_options("tcp:80"), frozenset())


class ListenSpecTests(SynchronousTestCase):
    def test_tcp_default_backlog(self) -> None:
        """``tcp:8080``: IPv4, every interface, DEFAULT_BACKLOG (1024), not TLS."""
        self.assertEqual(
            listen_spec("tcp:8080"), ListenSpec(socket.AF_INET, "", 8080, DEFAULT_BACKLOG)
        )

    def test_tcp_interface_and_backlog(self) -> None:
        """An explicit interface and backlog are kept."""
        self.assertEqual(
            listen_spec("tcp:0:interface=127.0.0.1:backlog=7"),
            ListenSpec(socket.AF_INET, "127.0.0.1", 0, 7),
        )

    def test_explicit_backlog_of_fifty(self) -> None:
        """``backlog=50`` written out stays 50 (only an absent backlog becomes 1024)."""
        spec = listen_spec("tcp:80:backlog=50")
        assert spec is not None
        self.assertEqual(spec.backlog, 50)

    def test_tcp6(self) -> None:
        """``tcp6:8080`` listens on ``::`` (AF_INET6)."""
        self.assertEqual(
            listen_spec("tcp6:8080"), ListenSpec(socket.AF_INET6, "::", 8080, DEFAULT_BACKLOG)
        )

    def test_tcp_with_ipv6_interface(self) -> None:
        """``tcp:`` with an IPv6 interface is AF_INET6, as Twisted's tcp.Port decides."""
        spec = listen_spec(r"tcp:8080:interface=\:\:1")
        assert spec is not None
        self.assertEqual((spec.family, spec.host), (socket.AF_INET6, "::1"))

    def test_ssl(self) -> None:
        """``ssl:`` is TCP underneath, marked ``tls``: the worker wraps it as listenSSL would."""
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(directory, f))
                                 for f in os.listdir(directory)] and os.rmdir(directory))
        leaf = trustme.CA().issue_cert("localhost")
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        leaf.private_key_pem.write_to_path(key)
        leaf.cert_chain_pems[0].write_to_path(cert)
        spec = listen_spec(f"ssl:8443:privateKey={key}:certKey={cert}:interface=127.0.0.1")
        self.assertEqual(
            spec, ListenSpec(socket.AF_INET, "127.0.0.1", 8443, DEFAULT_BACKLOG, tls=True)
        )

    def test_unix_is_not_shareable(self) -> None:
        """``unix:`` can't be bound by the supervisor for its workers: None."""
        self.assertIsNone(listen_spec("unix:/tmp/gateway.sock"))

    def test_garbage_is_not_shareable(self) -> None:
        """A string Twisted can't parse gives None, not an exception."""
        self.assertIsNone(listen_spec("nonsense:1:2:3"))

    def test_unshareable_listeners(self) -> None:
        """unshareable() names the listeners a supervisor can't bind."""
        config = simple_config()
        unix = ListenerConfig("local", "unix:/tmp/gateway.sock")
        config = replace(config, listeners=config.listeners + (unix,))
        self.assertEqual(workers.unshareable(config), (unix,))


# --- the environment contract -----------------------------------------------------------


class SocketsEnvironmentTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """decode_sockets reads what encode_sockets wrote."""
        sockets = {"web": InheritedSocket(5, socket.AF_INET),
                   "v6": InheritedSocket(6, socket.AF_INET6)}
        self.assertEqual(decode_sockets(encode_sockets(sockets)), sockets)

    def test_empty(self) -> None:
        """No listeners: an empty string, an empty mapping."""
        self.assertEqual(decode_sockets(""), {})

    def test_malformed(self) -> None:
        """A malformed item is a ValueError naming the variable."""
        with self.assertRaises(ValueError) as caught:
            decode_sockets("web=five:inet")
        self.assertIn(workers.SOCKETS_ENV, str(caught.exception))

    def test_worker_setup(self) -> None:
        """worker_setup reads the number and the sockets; None without GATEWAY_WORKER."""
        environ = {workers.WORKER_ENV: "2", workers.SOCKETS_ENV: "web=5:inet"}
        setup = adoption.worker_setup(environ)
        assert setup is not None
        self.assertEqual(setup.number, 2)
        self.assertEqual(dict(setup.sockets), {"web": InheritedSocket(5, socket.AF_INET)})
        self.assertIsNone(adoption.worker_setup({}))

    def test_worker_number_must_be_positive(self) -> None:
        """GATEWAY_WORKER=0 is refused."""
        self.assertRaises(ValueError, adoption.worker_setup, {workers.WORKER_ENV: "0"})

    def test_config_through_file(self) -> None:
        """read_config unpickles from offset 0 whatever the shared offset is, and closes."""
        config = simple_config()
        with tempfile.TemporaryFile() as file:
            file.write(pickle.dumps(config))
            file.flush()  # offset now at the end, as the supervisor leaves it
            fd = os.dup(file.fileno())
            self.assertEqual(adoption.read_config(fd), config)
            self.assertRaises(OSError, os.fstat, fd)


# --- restarts ------------------------------------------------------------------------


class RestartPolicyTests(SynchronousTestCase):
    policy = RestartPolicy(first_delay=0.1, max_delay=1.0, stable_after=10.0, cap=3,
                           window=60.0)

    def test_first_restart_is_quick(self) -> None:
        """A worker that dies is restarted after ``first_delay``."""
        self.assertEqual(Restarts(self.policy).next(100.0, 50.0).delay, 0.1)

    def test_backoff_doubles_up_to_max(self) -> None:
        """Deaths in a row (each soon after its start) wait 0.1, 0.2, 0.4, 0.8, then 1.0."""
        restarts = Restarts(replace(self.policy, cap=100))
        delays = [restarts.next(float(t), 0.5).delay for t in range(5)]
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0])

    def test_stable_run_resets_backoff(self) -> None:
        """A worker that ran ``stable_after`` seconds starts the count again."""
        restarts = Restarts(replace(self.policy, cap=100))
        restarts.next(0.0, 0.5)
        restarts.next(1.0, 0.5)
        decision = restarts.next(30.0, 10.0)
        self.assertEqual((decision.delay, decision.attempt), (0.1, 1))

    def test_cap_within_window(self) -> None:
        """The restart past ``cap`` in ``window`` waits until the oldest leaves the window."""
        restarts = Restarts(replace(self.policy, stable_after=0.0))  # no backoff growth
        for now in (0.0, 1.0, 2.0):
            self.assertFalse(restarts.next(now, 1.0).capped)
        decision = restarts.next(3.0, 1.0)
        self.assertTrue(decision.capped)
        self.assertAlmostEqual(decision.delay, 0.1 + 60.0 - 3.0)

    def test_cap_not_reached_after_window(self) -> None:
        """Restarts older than the window no longer count."""
        restarts = Restarts(replace(self.policy, stable_after=0.0))
        for now in (0.0, 1.0, 2.0):
            restarts.next(now, 1.0)
        self.assertFalse(restarts.next(70.0, 1.0).capped)


# --- logs ----------------------------------------------------------------------------


class LabelTests(SynchronousTestCase):
    def label(self, event: dict[str, Any]) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        adoption.label("2", seen.append)(event)
        return seen[0]

    def test_namespace_and_level(self) -> None:
        """An event without a system gets ``worker=N NAMESPACE#LEVEL``."""
        event = self.label({"log_namespace": "gateway.access", "log_level": LogLevel.info})
        self.assertEqual(event["log_system"], "worker=2 gateway.access#info")

    def test_twisted_dash(self) -> None:
        """Twisted's legacy system ``-`` becomes plain ``worker=N``."""
        self.assertEqual(self.label({"log_system": "-"})["log_system"], "worker=2")

    def test_original_untouched(self) -> None:
        """The event other observers see is not changed."""
        event = {"log_system": "-"}
        self.label(event)
        self.assertEqual(event, {"log_system": "-"})


class LogRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.relay = logrelay.LogRelay(1, self.published.append)

    def test_json_event_passes_whole(self) -> None:
        """A JSON event line is published with its own level, namespace and system."""
        event = {"log_format": "hello {who}", "who": "you", "log_level": LogLevel.error,
                 "log_namespace": "x", "log_system": "worker=1 x#error", "log_time": 5.0}
        self.relay.feed(1, b"\x1e" + eventAsJSON(event).encode() + b"\n")
        [got] = self.published
        self.assertEqual((got["log_level"], got["log_system"], got["log_time"]),
                         (LogLevel.error, "worker=1 x#error", 5.0))

    def test_partial_line_waits(self) -> None:
        """Bytes without a newline wait for the rest; flush passes them on at the end."""
        self.relay.feed(2, b"Traceback (most")
        self.assertEqual(self.published, [])
        self.relay.feed(2, b" recent call last):\n")
        self.assertEqual(self.published[0]["line"], "Traceback (most recent call last):")
        self.assertEqual(self.published[0]["log_system"], "worker=1 stderr")
        self.relay.feed(2, b"tail")
        self.relay.flush()
        self.assertEqual(self.published[1]["line"], "tail")

    def test_long_line_split(self) -> None:
        """A line past MAX_RELAY_LINE is passed on in pieces, never held whole."""
        self.relay.feed(1, b"x" * (logrelay.MAX_RELAY_LINE + 10))
        self.assertEqual(len(self.published[0]["line"]), logrelay.MAX_RELAY_LINE)

    def test_bad_json_is_text(self) -> None:
        """A record separator followed by garbage is relayed as text, not dropped."""
        self.relay.feed(1, b"\x1e{not json\n")
        self.assertEqual(self.published[0]["line"], "\x1e{not json")

    def test_stdout_choice(self) -> None:
        """Workers write to stdout themselves only when twistd's log is stdout."""
        self.assertTrue(logs_to_stdout({"nodaemon": True, "logfile": None}))
        self.assertTrue(logs_to_stdout({"nodaemon": True, "logfile": "-"}))
        self.assertFalse(logs_to_stdout({"nodaemon": True, "logfile": "gw.log"}))
        self.assertFalse(logs_to_stdout({"nodaemon": False, "logfile": None}))
        self.assertFalse(logs_to_stdout({"nodaemon": True, "syslog": True}))
        self.assertFalse(logs_to_stdout({"nodaemon": True, "logger": print}))


class DescribeExitTests(SynchronousTestCase):
    def test_signal(self) -> None:
        self.assertEqual(logrelay.describe_exit(Failure(ProcessTerminated(signal=9))),
                         "was killed by signal 9")

    def test_status(self) -> None:
        self.assertEqual(logrelay.describe_exit(Failure(ProcessTerminated(exitCode=3))),
                         "exited with status 3")

    def test_done(self) -> None:
        self.assertEqual(logrelay.describe_exit(Failure(ProcessDone(0))), "exited normally")

    def test_reuseport_platforms(self) -> None:
        """SO_REUSEPORT balances on Linux only (BSD and macOS give all to one socket)."""
        self.assertFalse(supervisor.reuseport_balances("darwin"))
        self.assertEqual(supervisor.reuseport_balances("linux"), hasattr(socket, "SO_REUSEPORT"))


# --- the worker side ---------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class ServerCreator:
    """A TLS connection creator that is never asked for a connection here."""

    def serverConnectionForTLS(self, tlsProtocol: object) -> None:
        raise AssertionError("no handshake in this test")


def devnull_fd(case: SynchronousTestCase) -> int:
    """A descriptor the code under test may close (it stands for an inherited socket)."""
    return os.open(os.devnull, os.O_RDONLY)


class InheritedPortTests(SynchronousTestCase):
    def test_listen_tcp_adopts(self) -> None:
        """listenTCP adopts the inherited descriptor with its family, then closes it."""
        reactor = MemoryReactorClock()
        fd = devnull_fd(self)
        factory = object()
        adoption.InheritedPort(reactor, InheritedSocket(fd, socket.AF_INET6)).listenTCP(
            8080, factory, 50, "::"  # type: ignore[arg-type]
        )
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET6, factory)])
        self.assertRaises(OSError, os.fstat, fd)

    def test_listen_ssl_wraps_in_tls(self) -> None:
        """listenSSL adopts with the factory behind TLSMemoryBIOFactory, as listenSSL does."""
        reactor = MemoryReactorClock()
        factory = object()
        inherited = InheritedSocket(devnull_fd(self), socket.AF_INET)
        adoption.InheritedPort(reactor, inherited).listenSSL(
            443, factory, ServerCreator()  # type: ignore[arg-type]
        )
        [(_, _, wrapped)] = reactor.adoptedPorts
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.assertIs(wrapped.wrappedFactory, factory)

    def test_service_adopts_and_skips_demos(self) -> None:
        """A worker's GatewayService adopts each listener's socket and runs no demo origin."""
        reactor = MemoryReactorClock()
        config = replace(simple_config(), demos=(DemoConfig("d1", "tcp:0"),))
        fd = devnull_fd(self)
        service = GatewayService(reactor, config, sockets={"web": InheritedSocket(fd, socket.AF_INET)})
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(f, fam) for f, fam, _ in reactor.adoptedPorts], [(fd, socket.AF_INET)])
        self.assertEqual(reactor.tcpServers, [])

    def test_service_needs_every_socket(self) -> None:
        """A listener without an inherited socket refuses to build (ValueError naming it)."""
        with self.assertRaises(ValueError) as caught:
            GatewayService(MemoryReactorClock(), simple_config(), sockets={})
        self.assertIn("web", str(caught.exception))


class SupervisorLinkTests(SynchronousTestCase):
    def test_eof_stops_worker(self) -> None:
        """When the supervisor's end of the pipe closes, the worker stops (once)."""
        reactor = MemoryReactorClock()
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        stops: list[int] = []
        link = adoption.SupervisorLink(reactor, 1, read, lambda: stops.append(1))
        link.startService()
        [reader] = reactor.readers
        os.close(write)
        reason = reader.doRead()
        self.assertIsNotNone(reason)
        reader.connectionLost(reason)
        self.assertEqual(stops, [1])

    def test_stop_unwatches(self) -> None:
        """stopService removes the pipe from the reactor."""
        reactor = MemoryReactorClock()
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        link = adoption.SupervisorLink(reactor, 1, read, lambda: None)
        link.startService()
        link.stopService()
        self.assertEqual(list(reactor.readers), [])


# --- the supervisor with a fake process reactor -----------------------------------------


class FakeProcess:
    """What spawnProcess returns: a pid and the signals sent."""

    def __init__(self, protocol: Any, pid: int, args: list[str], env: dict[str, str],
                 child_fds: dict[int, Any]) -> None:
        self.protocol = protocol
        self.pid = pid
        self.args = args
        self.env = env
        self.child_fds = child_fds
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def end(self, reason: Exception) -> None:
        self.ended = True
        self.protocol.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str],
                     childFDs: dict[int, Any]) -> FakeProcess:
        process = FakeProcess(protocol, 1000 + len(self.processes), args, env, childFDs)
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


class FakeSocket:
    """Stands for a bound socket: a family, a descriptor number, an address."""

    def __init__(self, spec: ListenSpec, reuse_port: bool, number: int) -> None:
        self.family = spec.family
        self.spec = spec
        self.reuse_port = reuse_port
        self.number = number
        self.closed = False

    def fileno(self) -> int:
        return 100 + self.number

    def getsockname(self) -> tuple[str, int]:
        return (self.spec.host, self.spec.port or 4321)

    def close(self) -> None:
        self.closed = True


class SupervisorTests(SynchronousTestCase):
    def make(self, count: int = 2, reuse_port: bool = True, **keys: Any) -> supervisor.Supervisor:
        self.reactor = ProcessReactor()
        self.bound: list[FakeSocket] = []

        def bind(spec: ListenSpec, reuse: bool) -> Any:
            sock = FakeSocket(spec, reuse, len(self.bound))
            self.bound.append(sock)
            return sock

        config = replace(simple_config(), listeners=(ListenerConfig("web", "tcp:0:interface=127.0.0.1"),))
        sup = supervisor.Supervisor(
            self.reactor, config, count, ["python", "-c", "worker"], reuse_port=reuse_port,
            environ={"PATH": "/bin"}, bind=bind,  # type: ignore[arg-type]
            policy=RestartPolicy(first_delay=0.5), stop_timeout=15.0, **keys,
        )
        sup.privilegedStartService()
        sup.startService()
        return sup

    def test_binds_a_socket_per_worker(self) -> None:
        """With SO_REUSEPORT each slot gets its own socket on the port the first was given."""
        self.make(count=3)
        self.assertEqual([s.spec.port for s in self.bound], [0, 4321, 4321])
        self.assertTrue(all(s.reuse_port for s in self.bound))
        self.assertEqual(self.bound[0].spec.backlog, DEFAULT_BACKLOG)

    def test_shared_socket_without_reuseport(self) -> None:
        """Without SO_REUSEPORT one socket is bound and every worker gets it."""
        self.make(count=2, reuse_port=False)
        self.assertEqual(len(self.bound), 1)
        fds = {p.child_fds[workers.FIRST_SOCKET_FD] for p in self.reactor.processes}
        self.assertEqual(fds, {100})

    def test_spawns_numbered_workers(self) -> None:
        """N workers, numbered 1..N, each told its socket, config file and parent pipe."""
        self.make(count=2)
        envs = [p.env for p in self.reactor.processes]
        self.assertEqual([e[workers.WORKER_ENV] for e in envs], ["1", "2"])
        self.assertEqual([e[workers.SOCKETS_ENV] for e in envs], ["web=6:inet", "web=6:inet"])
        first, second = self.reactor.processes
        self.assertEqual((first.child_fds[6], second.child_fds[6]), (100, 101))
        self.assertEqual((first.child_fds[1], first.child_fds[2]), (1, 2))
        self.assertIn(workers.CONFIG_FD, first.child_fds)
        self.assertIn(workers.PARENT_FD, first.child_fds)
        self.assertEqual(first.child_fds[workers.READY_FD], "r")
        self.assertEqual(envs[0]["PATH"], "/bin")

    def test_relay_uses_pipes(self) -> None:
        """When relaying logs, the workers' stdout and stderr are pipes and they log JSON."""
        self.make(count=1, relay_logs=True)
        [process] = self.reactor.processes
        self.assertEqual((process.child_fds[1], process.child_fds[2]), ("r", "r"))
        self.assertEqual(process.env[workers.LOG_ENV], "json")

    def test_config_file_holds_the_config(self) -> None:
        """The descriptor given as CONFIG_FD holds the pickled configuration."""
        sup = self.make(count=1)
        fd = self.reactor.processes[0].child_fds[workers.CONFIG_FD]
        self.assertEqual(adoption.read_config(os.dup(fd)), sup.config)

    def test_dead_worker_restarted_in_its_slot(self) -> None:
        """A worker that dies is started again, same number, after the policy's delay."""
        self.make(count=2)
        self.reactor.processes[0].end(ProcessTerminated(signal=9))
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual(self.reactor.processes[2].env[workers.WORKER_ENV], "1")
        self.assertEqual(self.reactor.processes[2].child_fds[6], 100)

    def test_sighup_forwarded(self) -> None:
        """SIGHUP to the supervisor reaches every live worker."""
        sup = self.make(count=2)
        sup.forward_sighup()
        self.assertEqual([p.signals for p in self.reactor.processes], [["HUP"], ["HUP"]])

    def test_stop_terms_then_waits(self) -> None:
        """stopService closes the sockets, sends SIGTERM, and fires once every worker ended."""
        sup = self.make(count=2)
        done = sup.stopService()
        self.assertTrue(all(s.closed for s in self.bound))
        self.assertEqual([p.signals for p in self.reactor.processes], [["TERM"], ["TERM"]])
        self.assertNoResult(done)
        for process in self.reactor.processes:
            process.end(ProcessTerminated(signal=15))
        self.successResultOf(done)
        self.assertIs(sup.state, supervisor.SupervisorState.STOPPED)

    def test_stop_kills_stragglers(self) -> None:
        """A worker still running after stop_timeout gets SIGKILL."""
        sup = self.make(count=1)
        done = sup.stopService()
        self.reactor.advance(15.0)
        [process] = self.reactor.processes
        self.assertEqual(process.signals, ["TERM", "KILL"])
        process.end(ProcessTerminated(signal=9))
        self.successResultOf(done)

    def test_no_restart_while_stopping(self) -> None:
        """A worker that exits during the stop is not restarted; a pending restart is cancelled."""
        sup = self.make(count=2)
        self.reactor.processes[0].end(ProcessTerminated(signal=9))
        done = sup.stopService()
        self.reactor.processes[1].end(ProcessTerminated(signal=15))
        self.reactor.advance(30.0)
        self.assertEqual(len(self.reactor.processes), 2)
        self.successResultOf(done)


class JSONLogTests(SynchronousTestCase):
    def test_worker_json_observer_round_trips(self) -> None:
        """In JSON mode a worker's event reaches the relay with its system labelled."""
        lines: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                lines.append(text)

            def flush(self) -> None:
                pass

        from twisted.logger import jsonFileLogObserver

        observer = adoption.label("3", jsonFileLogObserver(Out()))  # type: ignore[arg-type]
        observer({"log_format": "hi", "log_level": LogLevel.info, "log_namespace": "n",
                  "log_time": 1.0})
        published: list[dict[str, Any]] = []
        logrelay.LogRelay(3, published.append).feed(1, "".join(lines).encode())
        self.assertEqual(published[0]["log_system"], "worker=3 n#info")
        self.assertEqual(json.loads(lines[0][1:])["log_format"], "hi")
