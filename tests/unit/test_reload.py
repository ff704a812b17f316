"""Configuration reload: the decisions (gateway.reload), the in-place swap (GatewayService)
and the new generation of workers (Supervisor), on memory reactors and fake processes."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import tempfile
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import supervisor, workers
from gateway.config import Config, DemoConfig, ListenerConfig, load
from gateway.reload import (
    ConfigSource,
    ListenerChanges,
    ReloadRefused,
    listener_changes,
    read_again,
    restart_notes,
)
from gateway.service import GatewayService
from gateway.testing import simple_config
from gateway.workers import ListenSpec, RestartPolicy

from test_workers import FakeSocket, ProcessReactor  # the fakes of the supervisor tests

#: CPython's gc.unfreeze (a started service freezes the heap); PyPy has none.
_unfreeze = getattr(gc, "unfreeze", lambda: None)


def with_listeners(config: Config, *listeners: ListenerConfig) -> Config:
    """``config`` with exactly ``listeners`` (each routed to its default backend ``app``)."""
    return replace(config, listeners=listeners)


def ini(server_port: int, *, extra: str = "", bind: str = "tcp:0:interface=127.0.0.1") -> str:
    """A small valid file: listener ``web``, backend ``app`` with one server on ``server_port``."""
    return (
        f"[listener:web]\nbind = {bind}\n\n"
        f"[backend:app]\n[server:a]\nbackend = app\naddress = http://127.0.0.1:{server_port}\n\n"
        f"[route:all]\nbackend = app\n{extra}"
    )


def messages(events: Any) -> list[str]:
    return [formatEvent(event) for event in events]


class ListenerChangesTests(SynchronousTestCase):
    """listener_changes sorts listeners by what a new configuration does to them."""

    def setUp(self) -> None:
        self.old = with_listeners(
            simple_config(),
            ListenerConfig("web", "tcp:8080"),
            ListenerConfig("admin", "tcp:8081"),
            ListenerConfig("secure", "tcp:8443", tls=True),
        )

    def test_same_listeners_no_change(self) -> None:
        """The same listeners (other keys changed) are no change at all."""
        new = with_listeners(self.old, ListenerConfig("web", "tcp:8080", max_connections=5),
                             *self.old.listeners[1:])
        self.assertEqual(listener_changes(self.old, new), ListenerChanges())

    def test_added_removed_rebound_retyped(self) -> None:
        """A new name is added, a missing one removed, a new bind rebound, a new kind retyped."""
        new = with_listeners(
            self.old,
            ListenerConfig("web", "tcp:9090"),
            ListenerConfig("secure", "tcp:8443", tls=False),
            ListenerConfig("extra", "tcp:8082"),
        )
        changes = listener_changes(self.old, new)
        self.assertEqual(changes, ListenerChanges(
            added=("extra",), removed=("admin",), rebound=("web",), retyped=("secure",),
        ))
        self.assertEqual(changes.opened, ("extra", "web"))

    def test_rebound_with_new_kind_is_rebound(self) -> None:
        """A listener on a new bind gets a new socket anyway, whatever its kind."""
        new = with_listeners(self.old, *self.old.listeners[:2],
                             ListenerConfig("secure", "tcp:9443", redirect_https=True))
        changes = listener_changes(self.old, new)
        self.assertEqual((changes.rebound, changes.retyped), (("secure",), ()))


class RestartNotesTests(SynchronousTestCase):
    """restart_notes names what a reload can't apply."""

    def test_nothing_to_say(self) -> None:
        """A reload that changes ordinary keys needs no restart."""
        old = simple_config()
        new = simple_config(servers=3, access_log=False)
        self.assertEqual(restart_notes(old, new, ConfigSource("x"), in_place=True), ())

    def test_demos_in_every_mode(self) -> None:
        """Changed [demo:*] sections need a restart, in place or with workers."""
        old = simple_config()
        new = replace(old, demos=(DemoConfig("d", "tcp:9999"),))
        for in_place in (True, False):
            (note,) = restart_notes(old, new, ConfigSource("x"), in_place=in_place)
            self.assertIn("[demo:*]", note)

    def test_retyped_in_place_only(self) -> None:
        """A listener's new kind on the same bind needs a restart in place, not with workers."""
        old = simple_config()
        new = with_listeners(old, ListenerConfig("web", "tcp:0", redirect_https=True))
        (note,) = restart_notes(old, new, ConfigSource("x"), in_place=True)
        self.assertIn("[listener:web]", note)
        self.assertEqual(restart_notes(old, new, ConfigSource("x"), in_place=False), ())

    def test_more_workers_in_place(self) -> None:
        """A single process asked for several workers says a restart is needed."""
        old, new = simple_config(workers=1), simple_config(workers=3)
        (note,) = restart_notes(old, new, ConfigSource("x"), in_place=True)
        self.assertIn("3 workers need a restart", note)

    def test_workers_option_wins(self) -> None:
        """With --workers given, the file's workers key changes nothing."""
        old, new = simple_config(workers=1), simple_config(workers=3)
        self.assertEqual(restart_notes(old, new, ConfigSource("x", 1), in_place=True), ())
        self.assertEqual(ConfigSource("x", 2).worker_count(new), 2)
        self.assertEqual(ConfigSource("x").worker_count(new), 3)


class Files:
    """A temporary directory with the configuration file a test reloads."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.dir = tempfile.mkdtemp(prefix="gateway-reload-")
        case.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, "gateway.ini")

    def write(self, text: str) -> str:
        with open(self.path, "w") as file:
            file.write(text)
        return self.path


class ReadAgainTests(SynchronousTestCase):
    """read_again checks the file as a start does, and logs every problem."""

    def test_good_file(self) -> None:
        """A valid file gives its configuration."""
        path = Files(self).write(ini(9001))
        self.assertEqual(read_again(ConfigSource(path)), load(path))

    def test_bad_file_logs_every_problem(self) -> None:
        """A bad file gives None; each problem is logged as FILE:LINE [section] key: ..."""
        path = Files(self).write(ini(9001, extra="balance = rr\nbogus = 1\n"))
        with capturedLogs() as events:
            self.assertIsNone(read_again(ConfigSource(path)))
        text = "\n".join(messages(events))
        self.assertRegex(text, rf"{path}:11 \[route:all\] balance: ")
        self.assertRegex(text, rf"{path}:12 \[route:all\] bogus: ")
        self.assertIn("reload refused", text)

    def test_missing_file(self) -> None:
        """A file that is gone is a problem at line 0."""
        path = os.path.join(Files(self).dir, "gone.ini")
        with capturedLogs() as events:
            self.assertIsNone(read_again(ConfigSource(path)))
        self.assertIn(f"{path}:0 [*] -: cannot read the file", "\n".join(messages(events)))


class ReadySocket:
    """What the service's injected ``bind`` returns: a socket that adopts as a real descriptor."""

    def __init__(self, spec: ListenSpec) -> None:
        self.spec = spec
        self.family = spec.family
        self.closed = False

    def detach(self) -> int:
        return os.dup(0)

    def close(self) -> None:
        self.closed = True


class ServiceReloadTests(SynchronousTestCase):
    """GatewayService.reload swaps the runtime in place and opens and closes listeners."""

    def start(self, config: Config, source: ConfigSource | None = None,
              fail_bind: bool = False) -> GatewayService:
        self.clock = MemoryReactorClock()
        self.bound: list[ReadySocket] = []

        def bind(spec: ListenSpec, reuse_port: bool) -> Any:
            if fail_bind and self.bound:
                raise CannotListenError(spec.host, spec.port, OSError("in use"))
            sock = ReadySocket(spec)
            self.bound.append(sock)
            return sock

        service = GatewayService(self.clock, config, source=source, bind=bind)
        service.startService()
        self.addCleanup(_unfreeze)
        self.addCleanup(service.stopService)
        return service

    def client(self, service: GatewayService, index: int = 0) -> tuple[Any, StringTransport]:
        protocol = service.factories[index].buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def answer_upstream(self) -> tuple[str, int]:
        """Answer the newest upstream connect with a 200; the address it went to."""
        host, port, factory, _, _ = self.clock.tcpClients[-1]
        upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
        upstream.makeConnection(StringTransport())
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return host, port

    def test_keep_alive_connection_sees_new_backend(self) -> None:
        """A connection open before the reload sends its next request to the new server."""
        old = simple_config(servers=1)
        service = self.start(old)
        protocol, transport = self.client(service)
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.answer_upstream(), ("127.0.0.1", 9001))
        self.assertIn(b"200 OK", transport.value())
        backend = replace(old.backends[0], servers=(
            replace(old.backends[0].servers[0], name="new", port=9100),
        ))
        service.reload(replace(old, backends=(backend,)))
        transport.clear()
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.answer_upstream(), ("127.0.0.1", 9100))
        self.assertIn(b"200 OK", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_added_listener_opens_on_a_socket_bound_first(self) -> None:
        """A new listener's socket is bound, then adopted with its own factory."""
        old = simple_config()
        service = self.start(old)
        service.reload(with_listeners(old, *old.listeners, ListenerConfig("more", "tcp:8181")))
        [sock] = self.bound
        self.assertEqual(sock.spec.port, 8181)
        [(_fd, family, factory)] = self.clock.adoptedPorts
        self.assertEqual((family, factory.listener_name), (socket.AF_INET, "more"))
        self.assertEqual(len(service.factories), 2)

    def test_removed_listener_stops_and_drains_on_old_runtime(self) -> None:
        """A removed listener stops accepting; its busy connection keeps the old runtime."""
        old = with_listeners(simple_config(), ListenerConfig("web", "tcp:0"),
                             ListenerConfig("gone", "tcp:0"))
        service = self.start(old)
        protocol, transport = self.client(service, 1)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        before = service.runtime()
        gone_factory = service.factories[1]
        service.reload(with_listeners(old, ListenerConfig("web", "tcp:0")))
        self.assertIsNot(service.runtime(), before)
        self.assertFalse(gone_factory.accepting)
        self.assertIs(gone_factory.runtime(), before)
        self.assertEqual(len(service.services), 1)
        self.answer_upstream()
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.disconnecting)  # closed after its answer
        protocol.connectionLost(None)
        service.reload(service.config)
        self.assertEqual(service.factories, [service.factories[0]])

    def test_rebound_listener_moves(self) -> None:
        """A listener with a new bind listens on the new socket; the old one closes."""
        old = simple_config()
        service = self.start(old)
        [first] = service.factories
        service.reload(with_listeners(old, ListenerConfig("web", "tcp:8282")))
        self.assertFalse(first.accepting)
        [(_fd, _family, factory)] = self.clock.adoptedPorts
        self.assertIsNot(factory, first)
        self.assertEqual(factory.listener_name, "web")

    def test_unbindable_listener_refuses_everything(self) -> None:
        """When one new socket can't be bound, those bound are closed and nothing changes."""
        old = simple_config()
        service = self.start(old, fail_bind=True)
        before = service.runtime()
        new = with_listeners(old, *old.listeners, ListenerConfig("a", "tcp:8181"),
                             ListenerConfig("b", "tcp:8182"))
        with self.assertRaises(ReloadRefused):
            service.reload(new)
        self.assertIs(service.runtime(), before)
        self.assertTrue(self.bound[0].closed)
        self.assertEqual(self.clock.adoptedPorts, [])

    def test_unix_listener_refused(self) -> None:
        """A new endpoint that can't be bound ahead (unix:) refuses the reload."""
        old = simple_config()
        service = self.start(old)
        with self.assertRaises(ReloadRefused) as caught:
            service.reload(with_listeners(old, *old.listeners, ListenerConfig("u", "unix:/tmp/x")))
        self.assertIn("[listener:u] bind", str(caught.exception))

    def test_sighup_applies_a_good_file(self) -> None:
        """SIGHUP reads the file again and swaps in what it says; one line says so."""
        files = Files(self)
        path = files.write(ini(9001))
        service = self.start(load(path), ConfigSource(path))
        files.write(ini(9002))
        with capturedLogs() as events:
            service.sighup()
        self.assertEqual(service.config.backends[0].servers[0].port, 9002)
        self.assertIn(f"reload: applied {path}", "\n".join(messages(events)))

    def test_sighup_bad_file_changes_nothing(self) -> None:
        """A bad file on SIGHUP keeps the runtime and reloads no certificate."""
        files = Files(self)
        path = files.write(ini(9001))
        service = self.start(load(path), ConfigSource(path))
        before = service.runtime()
        files.write(ini(9002, extra="nonsense = 1\n"))
        with capturedLogs() as events:
            service.sighup()
        self.assertIs(service.runtime(), before)
        self.assertEqual(service.certificates.reloads, 0)
        self.assertIn(f"{path}:11 [route:all] nonsense:", "\n".join(messages(events)))

    def test_sighup_without_file_reloads_certificates(self) -> None:
        """Quick mode has no file: SIGHUP reloads certificates only, and says so."""
        service = self.start(simple_config(), ConfigSource(None))
        with capturedLogs() as events:
            service.sighup()
        self.assertEqual(service.certificates.reloads, 1)
        self.assertIn("TLS certificates only", "\n".join(messages(events)))


class SupervisorReloadTests(SynchronousTestCase):
    """Supervisor.reload starts a new generation of workers and retires the old one."""

    def make(self, config: Config, count: int = 2, source: ConfigSource | None = None,
             fail_port: int = -1) -> supervisor.Supervisor:
        self.reactor = ProcessReactor()
        self.bound: list[FakeSocket] = []

        def bind(spec: ListenSpec, reuse: bool) -> Any:
            if spec.port == fail_port:
                raise CannotListenError(spec.host, spec.port, OSError("in use"))
            sock = FakeSocket(spec, reuse, len(self.bound))
            self.bound.append(sock)
            return sock

        sup = supervisor.Supervisor(
            self.reactor, config, count, ["python", "-c", "worker"], reuse_port=True,
            environ={"PATH": "/bin"}, bind=bind,  # type: ignore[arg-type]
            policy=RestartPolicy(first_delay=0.5), stop_timeout=15.0,
            source=source or ConfigSource("unused", count),
        )
        sup.startService()
        self.addCleanup(self.finish, sup)
        return sup

    def finish(self, sup: supervisor.Supervisor) -> None:
        if sup.state is not supervisor.SupervisorState.STOPPED:
            done = sup.stopService()
            for process in self.reactor.processes:
                if not process.ended:
                    process.end(ProcessTerminated(signal=15))
            self.successResultOf(done)

    def ready(self, first: int = 2) -> None:
        """Every process from index ``first`` on says it serves."""
        for process in self.reactor.processes[first:]:
            process.protocol.childDataReceived(workers.READY_FD, b"R")

    def config(self, bind: str = "tcp:8080", port: int = 9001) -> Config:
        base = simple_config(servers=1)
        backend = replace(base.backends[0], servers=(
            replace(base.backends[0].servers[0], port=port),
        ))
        return replace(base, listeners=(ListenerConfig("web", bind),), backends=(backend,))

    def test_new_generation_then_old_terminated(self) -> None:
        """Reload spawns as many new workers on the new config; once they serve, the old get SIGTERM."""
        sup = self.make(self.config())
        old = list(self.reactor.processes)
        sup.reload(self.config(port=9100))
        new = self.reactor.processes[2:]
        self.assertEqual([p.env[workers.WORKER_ENV] for p in new], ["1", "2"])
        self.assertEqual([p.signals for p in old], [[], []])
        new[0].protocol.childDataReceived(workers.READY_FD, b"R")
        self.assertEqual([p.signals for p in old], [[], []])
        new[1].protocol.childDataReceived(workers.READY_FD, b"R")
        self.assertEqual([p.signals for p in old], [["TERM"], ["TERM"]])
        self.assertEqual([p.signals for p in new], [[], []])
        fd = new[0].child_fds[workers.CONFIG_FD]
        from gateway.adoption import read_config
        self.assertEqual(read_config(os.dup(fd)).backends[0].servers[0].port, 9100)
        # Same bind: the same sockets, so nothing waiting in an accept queue is lost.
        first = workers.FIRST_SOCKET_FD
        self.assertEqual(new[0].child_fds[first], old[0].child_fds[first])
        self.assertEqual(len(self.bound), 2)
        self.assertIs(sup.state, supervisor.SupervisorState.RELOADING)

    def test_old_generation_not_restarted(self) -> None:
        """A worker of the old generation that exits stays gone; the reload ends with the last."""
        sup = self.make(self.config())
        sup.reload(self.config(port=9100))
        self.ready()
        for process in self.reactor.processes[:2]:
            process.end(ProcessTerminated(exitCode=0))
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 4)
        self.assertIs(sup.state, supervisor.SupervisorState.RUNNING)

    def test_new_generation_restarted(self) -> None:
        """A worker of the new generation that dies is restarted as before."""
        sup = self.make(self.config())
        sup.reload(self.config(port=9100))
        self.reactor.processes[2].end(ProcessTerminated(signal=9))
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.processes), 5)
        self.assertEqual(self.reactor.processes[4].env[workers.WORKER_ENV], "1")
        self.assertIs(sup.state, supervisor.SupervisorState.RELOADING)

    def test_old_generation_killed_at_deadline(self) -> None:
        """An old worker still draining after stop_timeout gets SIGKILL."""
        self.make(self.config()).reload(self.config(port=9100))
        self.ready()
        self.reactor.advance(15.0)
        self.assertEqual([p.signals for p in self.reactor.processes[:2]],
                         [["TERM", "KILL"], ["TERM", "KILL"]])

    def test_old_stopped_after_ready_timeout_if_one_new_serves(self) -> None:
        """Only some new workers serve by READY_TIMEOUT: the old ones get SIGTERM then."""
        self.make(self.config()).reload(self.config(port=9100))
        self.reactor.processes[2].protocol.childDataReceived(workers.READY_FD, b"R")
        self.reactor.advance(supervisor.READY_TIMEOUT - 0.1)
        self.assertEqual(self.reactor.processes[0].signals, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.processes[0].signals, ["TERM"])

    def test_no_new_worker_serves_old_keep_serving(self) -> None:
        """No new worker serves by READY_TIMEOUT: the old keep serving, and the next SIGHUP runs at once."""
        files = Files(self)
        path = files.write(ini(9001, bind="tcp:8080"))
        sup = self.make(load(path), source=ConfigSource(path, 2))
        files.write(ini(9100, bind="tcp:8080"))
        sup.sighup()
        with capturedLogs() as events:
            self.reactor.advance(supervisor.READY_TIMEOUT + 60)
        self.assertEqual([p.signals for p in self.reactor.processes[:2]], [[], []])
        self.assertIs(sup.state, supervisor.SupervisorState.RELOADING)
        self.assertTrue(any("keep serving" in formatEvent(e) for e in events))
        files.write(ini(9200, bind="tcp:8080"))
        sup.sighup()  # not held until the stalled generation drains
        self.assertEqual(sup.generation, 3)
        newest = self.reactor.processes[-2:]
        for process in newest:
            process.protocol.childDataReceived(workers.READY_FD, b"R")
        self.assertEqual([p.signals for p in self.reactor.processes[:4]], [["TERM"]] * 4)
        for process in self.reactor.processes[:4]:
            process.end(ProcessTerminated(signal=15))
        self.assertIs(sup.state, supervisor.SupervisorState.RUNNING)
        self.assertEqual(sup.config.backends[0].servers[0].port, 9200)

    def test_stop_while_stalled_kills_old_at_deadline(self) -> None:
        """SIGTERM while the old generation serves after a stalled reload: SIGKILL still comes for it."""
        sup = self.make(self.config())
        sup.reload(self.config(port=9100))
        for process in self.reactor.processes[2:]:
            process.end(ProcessTerminated(exitCode=1))  # the new workers fail at start
        sup.stopService()
        self.reactor.advance(15.0)
        self.assertEqual([p.signals for p in self.reactor.processes[:2]], [["TERM", "KILL"]] * 2)

    def test_sighup_while_draining_waits(self) -> None:
        """A SIGHUP during a reload runs once the old generation is gone: two generations at most."""
        files = Files(self)
        path = files.write(ini(9001, bind="tcp:8080"))
        sup = self.make(load(path), source=ConfigSource(path, 2))
        files.write(ini(9100, bind="tcp:8080"))
        sup.sighup()
        files.write(ini(9200, bind="tcp:8080"))
        sup.sighup()
        sup.sighup()
        self.assertEqual(len(self.reactor.processes), 4)
        self.ready()
        for process in self.reactor.processes[:2]:
            process.end(ProcessTerminated(exitCode=0))
        self.assertEqual(len(self.reactor.processes), 6)
        self.assertEqual(sup.config.backends[0].servers[0].port, 9200)
        self.assertEqual(sup.generation, 3)

    def test_bad_file_changes_nothing(self) -> None:
        """SIGHUP with a bad file spawns nothing and signals no one."""
        files = Files(self)
        path = files.write(ini(9001, bind="tcp:8080"))
        sup = self.make(load(path), source=ConfigSource(path, 2))
        files.write("[listener:web]\nbind = nowhere\n")
        sup.sighup()
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual([p.signals for p in self.reactor.processes], [[], []])
        self.assertIs(sup.state, supervisor.SupervisorState.RUNNING)

    def test_more_workers_bind_more_sockets(self) -> None:
        """Three workers instead of two: a third socket joins the port; each new worker gets one."""
        sup = self.make(self.config(), source=ConfigSource("unused"))
        sup.reload(replace(self.config(), gateway=replace(self.config().gateway, workers=3)))
        self.assertEqual(len(self.bound), 3)
        fds = [p.child_fds[workers.FIRST_SOCKET_FD] for p in self.reactor.processes[2:]]
        self.assertEqual(fds, [100, 101, 102])

    def test_fewer_workers_close_surplus(self) -> None:
        """One worker instead of two: the second socket is closed after the new worker starts."""
        sup = self.make(self.config(), source=ConfigSource("unused"))
        sup.reload(replace(self.config(), gateway=replace(self.config().gateway, workers=1)))
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual([s.closed for s in self.bound], [False, True])

    def test_rebound_listener_gets_new_sockets(self) -> None:
        """A new bind gets new sockets; the old ones close once the new workers are spawned."""
        sup = self.make(self.config())
        sup.reload(self.config(bind="tcp:8181"))
        self.assertEqual([s.spec.port for s in self.bound[2:]], [8181, 8181])
        self.assertEqual([s.closed for s in self.bound], [True, True, False, False])

    def test_unbindable_refuses(self) -> None:
        """A new socket that can't be bound refuses the reload: no worker, no signal, no socket."""
        sup = self.make(self.config(), fail_port=8181)
        with self.assertRaises(ReloadRefused):
            sup.reload(self.config(bind="tcp:8181"))
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertFalse(any(s.closed for s in self.bound))
        self.assertEqual(sup.config.listeners[0].bind, "tcp:8080")

    def test_stop_while_draining_waits_for_both(self) -> None:
        """SIGTERM during a reload stops the new generation and waits for the old one too."""
        sup = self.make(self.config())
        sup.reload(self.config(port=9100))
        done = sup.stopService()
        self.assertEqual([p.signals for p in self.reactor.processes], [["TERM"]] * 4)
        for process in self.reactor.processes[2:]:
            process.end(ProcessTerminated(signal=15))
        self.assertNoResult(done)
        for process in self.reactor.processes[:2]:
            process.end(ProcessTerminated(signal=15))
        self.successResultOf(done)
        self.assertEqual(len(self.reactor.processes), 4)


class ReadySignalTests(SynchronousTestCase):
    """A worker tells the supervisor it serves: one byte on its ready descriptor."""

    def test_link_writes_ready_then_closes(self) -> None:
        """SupervisorLink writes to the ready pipe once the reactor runs (SIGTERM handled), and closes its end."""
        from gateway.adoption import SupervisorLink

        parent_read, parent_write = os.pipe()
        ready_read, ready_write = os.pipe()
        for fd in (parent_read, parent_write, ready_read):
            self.addCleanup(os.close, fd)
        reactor = MemoryReactorClock()
        link = SupervisorLink(reactor, 1, parent_read, lambda: None, ready_write)
        link.startService()
        self.addCleanup(link.stopService)
        os.set_blocking(ready_read, False)
        self.assertRaises(BlockingIOError, os.read, ready_read, 10)  # not before the reactor runs
        reactor.run()
        self.assertEqual(os.read(ready_read, 10), b"R")
        self.assertEqual(os.read(ready_read, 10), b"")  # the worker's end is closed
