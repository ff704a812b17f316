"""The supervisor: the parent process of a multi-worker gateway.

It binds every listener's sockets (:func:`bind_socket`, from
:func:`gateway.workers.listen_spec`), runs the demo origins, and spawns N
workers with ``reactor.spawnProcess``; each worker is ``twistd gateway`` again
(:data:`WORKER_MAIN`) and adopts its sockets (:mod:`gateway.adoption`).  The
supervisor itself never accepts a connection.

On Linux each listener gets one socket per worker slot, all bound to the same
address with ``SO_REUSEPORT``: the kernel spreads new connections evenly over
them.  (One socket shared by every worker is what an idle worker woken first
drains alone: 55 of 56 connections went to one worker in a test.)  A slot's
sockets belong to the supervisor, so while its worker is dead and restarting,
connections hashed to it wait in its accept queue instead of being refused.
Elsewhere every worker shares one socket per listener.

- A worker that exits is started again in the same slot (same number), after
  the backoff of :class:`gateway.workers.Restarts`, each exit and restart logged.
- SIGTERM/SIGINT (twistd stops the reactor, which stops this service): close
  the supervisor's copies of the sockets, SIGTERM every worker (each drains
  for up to its ``shutdown_grace``), SIGKILL what is left after
  ``stop_timeout`` (``shutdown_grace`` plus a margin), and finish once every worker has been reaped.
- SIGHUP reloads (nginx's ``-s reload``): the file is read and checked again
  (:mod:`gateway.reload`); a bad one changes nothing.  A good one starts a new
  generation of workers on the new configuration (new listeners bound here
  first: one that can't be bound refuses the reload; unchanged listeners keep
  their sockets, so no connection waiting in an accept queue is lost); once
  every new worker says it serves (:data:`~gateway.workers.READY_FD`), the
  previous generation gets SIGTERM, and its workers drain and are not
  restarted.  A SIGHUP while they drain waits until they are gone (at most
  two generations at once).  Without a file (``--listen``/``--upstream``)
  SIGHUP is forwarded to every worker, which reloads its certificates.
- Worker logs: straight to the inherited stdout/stderr when the supervisor
  logs to stdout (one stream, no relay cost); otherwise through pipes, as JSON
  events the supervisor publishes into its own log
  (:class:`~gateway.logrelay.LogRelay`).

Invariants: nothing is bound in ``__init__``; the reactor is injected; an
unexpected failure is logged and never raised into the reactor.
"""

from __future__ import annotations

import enum
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from gateway.binding import bind_listeners, bind_socket
from gateway.logrelay import LogRelay, describe_exit
from gateway.demo import demo_site
from gateway.reload import ConfigSource, ReloadRefused, read_again, restart_notes
from gateway.service import listen_service
from gateway.tlsreload import install_sighup
from gateway.workers import (
    CONFIG_FD,
    FIRST_SOCKET_FD,
    LOG_ENV,
    PARENT_FD,
    READY_FD,
    SOCKETS_ENV,
    WORKER_ENV,
    InheritedSocket,
    ListenSpec,
    Restart,
    RestartPolicy,
    Restarts,
    encode_sockets,
    unshareable,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IDelayedCall,
        IProcessTransport,
        IReactorProcess,
        IReactorTCP,
        IReactorTime,
    )

    from gateway.config import Config

    class Reactor(IReactorProcess, IReactorTime, IReactorTCP):
        """The reactor interfaces the supervisor needs."""


log = Logger()

#: What a worker runs: twistd.  ``python -c`` puts the working directory
#: first on ``sys.path`` (``''``); it is taken off so that a source tree there
#: can't shadow the installed package (``-P`` would do it, but not on PyPy 3.9).
WORKER_MAIN = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)
#: twistd's arguments for a worker: foreground, no pid file, labelled log.
WORKER_ARGS = ("-n", "--pidfile=", "--logger=gateway.tap.worker_log_observer", "gateway")

#: How long a stopping worker gets beyond its own drain (``shutdown_grace``) before SIGKILL.
STOP_MARGIN = 5.0

#: How long a reload waits for every new worker to say it serves before it
#: stops the previous ones all the same.
READY_TIMEOUT = 30.0


def worker_command(executable: str) -> list[str]:
    """The argv of a worker process run by the interpreter ``executable``."""
    return [executable, "-c", WORKER_MAIN, *WORKER_ARGS]


def reuseport_balances(platform: str = sys.platform) -> bool:
    """Whether ``SO_REUSEPORT`` spreads connections over the sockets bound to one port.

    Linux (3.9+) hashes each new connection to one of them; the BSDs and
    macOS give every connection to the last one bound, which balances nothing.
    """
    return platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class SupervisorState(enum.Enum):
    """The states of :class:`Supervisor`.

    - ``IDLE``: built; nothing bound.
    - ``BOUND``: every listening socket is bound (``privilegedStartService``,
      before twistd drops privileges); no worker yet.
    - ``RUNNING``: workers run; one that exits is restarted after its backoff.
    - ``RELOADING``: a reload started a new generation of workers (running as
      in ``RUNNING``); once each says it serves (or after
      :data:`READY_TIMEOUT`), the previous generation gets SIGTERM and drains
      (SIGKILL at its deadline).  Its workers are never restarted.  Back to
      ``RUNNING`` once the last is reaped; a SIGHUP until then waits.
    - ``STOPPING``: every worker has been sent SIGTERM; waiting for each to be
      reaped (SIGKILL at the deadline); no restarts.
    - ``STOPPED``: every worker reaped, sockets and descriptors closed.
    """

    IDLE = "idle"
    BOUND = "bound"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Slot:
    """One worker number of one generation, and what runs in it now.

    ``retired``: a reload replaced its generation; its worker drains and is
    not restarted.
    """

    def __init__(self, number: int, policy: RestartPolicy, generation: int = 1) -> None:
        self.number = number
        self.generation = generation
        self.retired = False
        self.restarts = Restarts(policy)
        self.process: IProcessTransport | None = None
        self.pid = 0
        self.started = 0.0
        self.pending: IDelayedCall | None = None
        #: Whether the worker now in the slot said it serves (``READY_FD``).
        self.ready = False


class _WorkerProtocol(ProcessProtocol):
    """One worker process as seen from the supervisor."""

    def __init__(self, supervisor: Supervisor, slot: _Slot, relay: LogRelay | None) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.relay = relay

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD:
            self.supervisor.worker_ready(self.slot)
        elif self.relay is not None:
            self.relay.feed(childFD, data)

    def processEnded(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.flush()
        self.supervisor.worker_ended(self.slot, reason)


class Supervisor(MultiService):
    """Binds the sockets, runs ``count`` workers on them, restarts them, reloads, stops them.

    ``command`` is a worker's argv (:func:`worker_command`); ``relay_logs``
    says whether the workers' output comes through pipes into this process's
    log (else they share its stdout and stderr).  ``environ`` is the
    environment workers start from (the worker variables are added).
    ``source`` is where SIGHUP reads the configuration again; without a file
    there, SIGHUP is forwarded to the workers (certificates only).
    """

    def __init__(
        self,
        reactor: Reactor,
        config: Config,
        count: int,
        command: Sequence[str],
        *,
        relay_logs: bool = False,
        reuse_port: bool | None = None,
        policy: RestartPolicy = RestartPolicy(),
        stop_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
        bind: Callable[[ListenSpec, bool], socket.socket] = bind_socket,
        publish: Callable[[dict[str, Any]], None] = globalLogPublisher,
        source: ConfigSource | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.count = count
        self.command = list(command)
        self.relay_logs = relay_logs
        self.reuse_port = reuseport_balances() if reuse_port is None else reuse_port
        self._stop_timeout = stop_timeout
        self.stop_timeout = self._stop_timeout_for(config)
        self._environ = dict(os.environ if environ is None else environ)
        self._bind = bind
        self._publish = publish
        self._source = source
        self._policy = policy
        self._state = SupervisorState.IDLE
        self.generation = 1
        self.slots = [_Slot(number, policy) for number in range(1, count + 1)]
        #: Workers of the previous generation still draining after a reload.
        self.retiring: list[_Slot] = []
        self._retire_timeout = self.stop_timeout
        self._retire_sent = False
        #: While reloading: the wait for the new workers, then the SIGKILL deadline of the old.
        self._retire_call: IDelayedCall | None = None
        self._reload_waiting = False
        #: No new worker served within READY_TIMEOUT: the previous ones keep serving,
        #: and the next SIGHUP runs at once instead of waiting.
        self._stalled = False
        #: listener name -> its sockets: one per slot with ``reuse_port``, else one.
        self.sockets: dict[str, list[socket.socket]] = {}
        self._config_file: IO[bytes] | None = None
        self._devnull = -1
        self._alive: tuple[int, int] | None = None
        self._stopped: Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None
        self._restore_sighup: Callable[[], None] | None = None
        for demo in config.demos:
            # Demo origins run here, once, not in every worker: each keeps
            # its fixed port and stays up while workers come and go.
            listen_service(reactor, demo.bind, demo_site(demo.name)).setServiceParent(self)

    @property
    def state(self) -> SupervisorState:
        """Where the supervisor is in its life (see :class:`SupervisorState`)."""
        return self._state

    def _stop_timeout_for(self, config: Config) -> float:
        """How long a stopping worker of ``config`` gets before SIGKILL."""
        if self._stop_timeout is not None:
            return self._stop_timeout
        return config.gateway.shutdown_grace + STOP_MARGIN

    # -- start ------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind every listener's socket (still privileged: ports below 1024 work)."""
        self.sockets = self._bind_listeners(self.config, self.count)
        self._config_file = _config_file(self.config)
        self._devnull = os.open(os.devnull, os.O_RDONLY)
        self._alive = os.pipe()
        self._state = SupervisorState.BOUND
        super().privilegedStartService()

    def _bind_listeners(self, config: Config, count: int) -> dict[str, list[socket.socket]]:
        """The sockets ``count`` workers of ``config`` accept on (:func:`~gateway.binding.bind_listeners`)."""
        before = {listener.name: listener.bind for listener in self.config.listeners}
        return bind_listeners(config, count, self.reuse_port, before, self.sockets, self._bind)

    def startService(self) -> None:
        """Start the demo origins, every worker, and SIGHUP handling."""
        if self._state is SupervisorState.IDLE:
            self.privilegedStartService()
        super().startService()
        self._state = SupervisorState.RUNNING
        self._restore_sighup = install_sighup(self.reactor, self.sighup)
        for slot in self.slots:
            self._spawn(slot)

    def _slot_sockets(self, slot: _Slot) -> list[socket.socket]:
        """The socket of each listener that ``slot``'s worker accepts on."""
        return [socks[(slot.number - 1) % len(socks)] for socks in self.sockets.values()]

    def _child_fds(self, slot: _Slot) -> dict[int, int | str]:
        assert self._config_file is not None and self._alive is not None
        fds: dict[int, int | str] = {
            0: self._devnull,
            1: "r" if self.relay_logs else 1,
            2: "r" if self.relay_logs else 2,
            CONFIG_FD: self._config_file.fileno(),
            PARENT_FD: self._alive[0],
            READY_FD: "r",
        }
        for number, sock in enumerate(self._slot_sockets(slot)):
            fds[FIRST_SOCKET_FD + number] = sock.fileno()
        return fds

    def _worker_environ(self, slot: _Slot) -> dict[str, str]:
        inherited = {
            name: InheritedSocket(FIRST_SOCKET_FD + number, sock.family)
            for number, (name, sock) in enumerate(zip(self.sockets, self._slot_sockets(slot)))
        }
        return {
            **self._environ,
            WORKER_ENV: str(slot.number),
            SOCKETS_ENV: encode_sockets(inherited),
            LOG_ENV: "json" if self.relay_logs else "text",
        }

    def _spawn(self, slot: _Slot) -> None:
        slot.pending = None
        if slot.retired or self._state not in _SPAWNING:
            return
        relay = LogRelay(slot.number, self._publish) if self.relay_logs else None
        protocol = _WorkerProtocol(self, slot, relay)
        slot.started = self.reactor.seconds()
        slot.ready = False
        try:
            slot.process = self.reactor.spawnProcess(
                protocol,
                self.command[0],
                self.command,
                env=self._worker_environ(slot),
                childFDs=self._child_fds(slot),
            )
        except OSError as exc:
            log.error("worker {number}: can't start: {error}", number=slot.number, error=exc)
            self._schedule_restart(slot, slot.restarts.next(slot.started, 0.0))
            return
        slot.pid = slot.process.pid or 0
        log.info("worker {number} spawned (pid {pid}, generation {generation})",
                 number=slot.number, pid=slot.pid, generation=slot.generation)

    # -- while running ----------------------------------------------------------

    def worker_ended(self, slot: _Slot, reason: Failure) -> None:
        """A worker was reaped: restart it while running, count it down when retired or stopping."""
        pid, slot.process = slot.pid, None
        how = describe_exit(reason)
        if slot.retired:
            log.info("worker {number} (pid {pid}) of generation {generation} stopped: {how}",
                     number=slot.number, pid=pid, generation=slot.generation, how=how)
            self.retiring.remove(slot)
            self._maybe_reloaded()
            self._maybe_stopped()
            return
        if self._state not in _SPAWNING:
            log.info("worker {number} (pid {pid}) stopped: {how}",
                     number=slot.number, pid=pid, how=how)
            self._maybe_stopped()
            return
        now = self.reactor.seconds()
        uptime = now - slot.started
        decision = slot.restarts.next(now, uptime)
        log.warn(
            "worker {number} (pid {pid}) {how} after {uptime:.1f}s; "
            "restarting it in {delay:.1f}s (attempt {attempt})",
            number=slot.number, pid=pid, how=how, uptime=uptime,
            delay=decision.delay, attempt=decision.attempt,
        )
        self._schedule_restart(slot, decision)

    def _schedule_restart(self, slot: _Slot, decision: Restart) -> None:
        if decision.capped:
            policy = slot.restarts.policy
            log.error(
                "worker {number} was restarted {cap} times within {window:.0f}s; "
                "the next restart waits {delay:.1f}s",
                number=slot.number, cap=policy.cap, window=policy.window, delay=decision.delay,
            )
        slot.pending = self.reactor.callLater(decision.delay, self._spawn, slot)

    # -- reload -----------------------------------------------------------------

    def sighup(self) -> None:
        """SIGHUP: reload the configuration file (one reload at a time), else forward it."""
        source = self._source
        if source is None or source.path is None:
            log.info("SIGHUP: started with --listen/--upstream, there is no configuration "
                     "file; the workers reload their TLS certificates only")
            self.forward_sighup()
            return
        if self._state is SupervisorState.RELOADING and not self._stalled:
            if not self._reload_waiting:
                log.info("SIGHUP: the previous workers are still draining after a reload; "
                         "reloading again once they are gone")
            self._reload_waiting = True
            return
        if self._state not in _SPAWNING:
            return
        config = read_again(source)
        if config is None:
            return
        try:
            self.reload(config)
        except ReloadRefused as exc:
            log.error("reload refused: {why}; the configuration in use stays in force", why=exc)

    def reload(self, config: Config) -> None:
        """Start a generation of workers on ``config``, then retire the current one.

        The new workers' sockets are bound first; when one can't be (or a
        listener can't be shared by workers) :class:`ReloadRefused` is raised
        and nothing has changed.  Sockets no new worker uses are closed here
        once the new workers are spawned (the old workers hold their own
        copies until they stop listening).  The current workers get SIGTERM
        once every new one says it serves (:meth:`worker_ready`), so some
        worker accepts on each socket all along.
        """
        source = self._source or ConfigSource(None)
        count = source.worker_count(config)
        blocked = unshareable(config)
        if blocked:
            raise ReloadRefused(
                f"[listener:{blocked[0].name}] bind: {blocked[0].bind!r} can't be shared by "
                "worker processes; restart to apply it"
            )
        try:
            sockets = self._bind_listeners(config, count)
        except CannotListenError as exc:
            raise ReloadRefused(f"a listener can't listen: {exc}") from exc
        for note in restart_notes(self.config, config, source, in_place=False):
            log.warn("reload: {note}", note=note)
        old_sockets, self.sockets = self.sockets, sockets
        old_file, self._config_file = self._config_file, _config_file(config)
        old_timeout = self.stop_timeout
        self.config, self.count = config, count
        self.stop_timeout = self._stop_timeout_for(config)
        self.generation += 1
        retiring = self.slots
        self.slots = [_Slot(number, self._policy, self.generation)
                      for number in range(1, count + 1)]
        for slot in retiring:
            slot.retired = True
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
        self.retiring += [slot for slot in retiring if slot.process is not None]
        self._state = SupervisorState.RELOADING
        for slot in self.slots:
            self._spawn(slot)
        kept = {id(sock) for socks in sockets.values() for sock in socks}
        for socks in old_sockets.values():
            for sock in socks:
                if id(sock) not in kept:
                    sock.close()
        if old_file is not None:
            old_file.close()
        self._retire_timeout = old_timeout
        self._retire_sent = False
        self._stalled = False
        log.info(
            "reload: applied {path}: generation {generation}, {count} workers starting; "
            "the {old} previous workers stop once they serve",
            path=source.path, generation=self.generation, count=count, old=len(self.retiring),
        )
        self._retire_call = self.reactor.callLater(READY_TIMEOUT, self._retire, True)

    def worker_ready(self, slot: _Slot) -> None:
        """A worker says it serves; once every new one has, the previous generation stops."""
        slot.ready = True
        if (self._state is SupervisorState.RELOADING and not self._retire_sent
                and all(new.ready for new in self.slots)):
            self._retire(late=False)

    def _retire(self, late: bool) -> None:
        """SIGTERM the previous generation (each drains), SIGKILL what is left at its deadline.

        ``late``: READY_TIMEOUT passed. If no new worker serves by then, the
        previous ones are left serving (a file that checks out but whose
        workers can't start must not take the gateway down); the new ones
        keep being restarted, and the next SIGHUP replaces them at once.
        """
        if self._retire_call is not None and self._retire_call.active():
            self._retire_call.cancel()
        self._retire_call = None
        if late and not any(slot.ready for slot in self.slots):
            self._stalled = True
            log.error("reload: no worker of generation {generation} serves after {timeout:.0f}s; "
                      "the previous workers keep serving (fix the configuration and send SIGHUP "
                      "again)", generation=self.generation, timeout=READY_TIMEOUT)
            return
        self._retire_sent = True
        self._stalled = False
        if late:
            log.warn("reload: not every new worker serves after {timeout:.0f}s; stopping the "
                     "previous ones all the same", timeout=READY_TIMEOUT)
        sent = self._signal(self.retiring, "TERM")
        log.info("reload: generation {generation} serves; {sent} previous workers draining",
                 generation=self.generation, sent=sent)
        self._retire_call = self.reactor.callLater(self._retire_timeout, self._kill_retiring)
        self._maybe_reloaded()

    def _kill_retiring(self) -> None:
        self._retire_call = None
        count = self._signal(self.retiring, "KILL")
        if count:
            log.warn("{count} previous workers still running after a reload: killed", count=count)

    def _maybe_reloaded(self) -> None:
        """Once the new workers serve and the old are gone: RUNNING again; a waiting SIGHUP runs."""
        if self._state is not SupervisorState.RELOADING or self.retiring or not self._retire_sent:
            return
        if self._retire_call is not None and self._retire_call.active():
            self._retire_call.cancel()
        self._retire_call = None
        self._state = SupervisorState.RUNNING
        log.info("reload: every worker of the previous generation has stopped")
        if self._reload_waiting:
            self._reload_waiting = False
            self.sighup()

    def forward_sighup(self) -> None:
        """SIGHUP without a file: pass it to every worker, which reloads its certificates."""
        sent = self._signal(self.slots, "HUP")
        log.info("SIGHUP: forwarded to {count} workers", count=sent)

    def _signal(self, slots: Sequence[_Slot], name: str) -> int:
        sent = 0
        for slot in slots:
            if slot.process is None:
                continue
            try:
                slot.process.signalProcess(name)
            except ProcessExitedAlready:
                continue
            except OSError as exc:
                log.warn("worker {number}: can't send SIG{name}: {error}",
                         number=slot.number, name=name, error=exc)
                continue
            sent += 1
        return sent

    # -- stop -------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop accepting, SIGTERM every worker, SIGKILL after ``stop_timeout``, wait for all.

        Workers of a reload's previous generation stop too (SIGTERM unless
        they had it, SIGKILL with the rest).
        """
        demos = super().stopService()
        self._state = SupervisorState.STOPPING
        self._reload_waiting = False
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        for slot in self.slots:
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
        # The workers hold their own copies; the sockets go when the last closes.
        self._close_sockets()
        self._stopped = Deferred()
        if self._retire_call is not None and self._retire_call.active():
            self._retire_call.cancel()
        self._retire_call = None
        # A reload's previous workers that are still serving stop now too.
        if not self._retire_sent:
            self._signal(self.retiring, "TERM")
            self._retire_sent = True
        count = self._signal(self.slots, "TERM")
        if count:
            log.info("stopping {count} workers", count=count)
        if count or self.retiring:
            # The previous generation's SIGKILL deadline was cancelled above: this one covers it.
            self._kill_call = self.reactor.callLater(self.stop_timeout, self._kill_remaining)
        stopped = self._stopped
        self._maybe_stopped()
        both = DeferredList([demos, stopped], consumeErrors=True)
        return both.addCallback(lambda _: None)

    def _kill_remaining(self) -> None:
        self._kill_call = None
        count = self._signal(self.slots + self.retiring, "KILL")
        if count:
            log.warn("{count} workers still running after {timeout:.0f}s: killed",
                     count=count, timeout=self.stop_timeout)

    def _maybe_stopped(self) -> None:
        if self._stopped is None or self.retiring or any(
            slot.process is not None for slot in self.slots
        ):
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        self._close_descriptors()
        self._state = SupervisorState.STOPPED
        stopped, self._stopped = self._stopped, None
        log.info("every worker has stopped")
        stopped.callback(None)

    def _close_sockets(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()

    def _close_descriptors(self) -> None:
        if self._config_file is not None:
            self._config_file.close()
            self._config_file = None
        for fd in ((self._devnull,) + (self._alive or ())):
            if fd >= 0:
                os.close(fd)
        self._devnull = -1
        self._alive = None


#: The states in which a worker that exits is started again.
_SPAWNING = (SupervisorState.RUNNING, SupervisorState.RELOADING)


def _config_file(config: Config) -> IO[bytes]:
    """An unlinked file holding ``config`` pickled, for workers to read (:func:`gateway.adoption.read_config`)."""
    file = tempfile.TemporaryFile()
    file.write(pickle.dumps(config))
    file.flush()
    return file


__all__ = [
    "STOP_MARGIN",
    "Supervisor",
    "SupervisorState",
    "bind_socket",
    "reuseport_balances",
    "worker_command",
]
