"""Health of one backend's servers: active checks, passive ejection and slow start.

:class:`HealthMonitor` writes three fields of each :class:`~gateway.balancer.ServerState`
and calls ``selector.update()`` after every change:

- ``up``: the active checks' verdict (``check = http | tcp``), with HAProxy's
  ``rise``/``fall`` hysteresis. Servers start up, as HAProxy's servers do
  unless told ``init-state down``: a freshly started gateway serves at once,
  and a dead server is marked down after ``check_fall`` failed checks.
  ``check = none`` runs no checks, and a server found down is put up.
- ``ejected``: passive ejection from what the proxy sees (:meth:`report`).
  ``eject_consecutive`` failures in a row eject a server for
  ``eject_time * 2**(k-1)`` seconds, capped at ``eject_time_max``, where k
  counts its ejections; k starts over once a server has stayed in service for
  ``eject_time_max`` since it last returned.
- ``weight``: during slow start, a server that comes back (down -> up, or its
  ejection ends) ramps from ``max(1, weight // 10)`` to its configured weight
  over ``slow_start`` seconds.

Invariants:

- Time is the injected reactor's; nothing here imports the global reactor.
- Between :meth:`HealthMonitor.start` and :meth:`HealthMonitor.stop` each
  server has at most one scheduled check or one running probe, at most one
  ejection timer and at most one ramp timer. After ``stop()`` there are none.
- Every transition (UP, DOWN, EJECTED, RETURNED, and an ejection withheld by
  ``eject_max_share``) is logged once, with its reason; repeated results that
  change nothing log nothing.
- The decisions (:class:`Hysteresis`, :func:`eject_limit`, :func:`cooldown`,
  :func:`ramp_steps`, :func:`ramp_weight`) are pure and tested on their own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.probe import Probe, ProbeResult, check_request

if TYPE_CHECKING:
    from gateway.balancer import ServerState
    from gateway.config import BackendConfig
    from gateway.upstream import Reactor

__all__ = [
    "OUTCOMES",
    "HealthMonitor",
    "Hysteresis",
    "Status",
    "cooldown",
    "eject_limit",
    "ramp_steps",
    "ramp_weight",
]

_log = Logger()

#: The outcomes :meth:`HealthMonitor.report` takes besides ``status:NNN``.
OUTCOMES = frozenset({"ok", "connect_failure", "reset", "timeout"})
_FAILURES = frozenset({"connect_failure", "reset", "timeout"})

#: A ramp starts at this fraction (1/N) of the configured weight.
RAMP_START_DIVISOR = 10
#: A ramp has at least this many steps ...
RAMP_MIN_STEPS = 10
#: ... and steps at most this many seconds apart.
RAMP_MAX_TICK = 1.0


class Updatable(TypingProtocol):
    """What the monitor needs of a selector: re-read the servers' state."""

    def update(self) -> None: ...


class Status(enum.Enum):
    """What :meth:`HealthMonitor.status` says of a server, first match wins.

    - DOWN: the active checks failed it (``up`` is False).
    - EJECTED: passive ejection holds it out (``ejected`` is True).
    - DRAINING: configured ``drain``: healthy, but takes no new requests.
    - UP: in service.
    """

    DOWN = "down"
    EJECTED = "ejected"
    DRAINING = "draining"
    UP = "up"


def server_status(server: ServerState) -> Status:
    """The :class:`Status` of one server."""
    if not server.up:
        return Status.DOWN
    if server.ejected:
        return Status.EJECTED
    if server.config.drain:
        return Status.DRAINING
    return Status.UP


# -- pure decisions ------------------------------------------------------------


class Hysteresis:
    """HAProxy's ``rise``/``fall`` for one server's active checks.

    ``up`` is the verdict; ``streak`` counts consecutive results that disagree
    with it. A result that agrees resets the streak, so an up server goes down
    after ``fall`` failures in a row and a down one comes up after ``rise``
    successes in a row.
    """

    __slots__ = ("up", "streak")

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.streak = 0

    def record(self, ok: bool, rise: int, fall: int) -> bool:
        """Count one check result; True when it flips the verdict."""
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (rise if ok else fall):
            return False
        self.up = ok
        self.streak = 0
        return True


def eject_limit(share: float, total: int) -> int:
    """How many of ``total`` servers may be ejected at once.

    ``floor(share * total)``, but at least one when ``share > 0`` and there are
    two or more servers: with ``eject_max_share = 0.2`` and three servers one
    bad server is still ejected (Envoy's outlier detection does the same). A
    lone server is never ejected unless ``share`` is 1: there is nobody to
    take its traffic, and ejecting it only turns its errors into 503s.
    """
    limit = math.floor(share * total + 1e-9)  # 0.3 * 10 must be 3, not 2
    if limit == 0 and share > 0 and total >= 2:
        return 1
    return limit


def cooldown(eject_time: float, eject_time_max: float, ejections: int) -> float:
    """Seconds out for the ``ejections``-th ejection (1-based): doubling, capped."""
    exponent = min(max(ejections, 1) - 1, 64)  # 2**64 * 1ms is far past any cap
    return min(eject_time * float(2**exponent), eject_time_max)


def ramp_steps(window: float) -> int:
    """Steps of a slow-start ramp over ``window`` seconds.

    At least :data:`RAMP_MIN_STEPS`, and at most :data:`RAMP_MAX_TICK` apart,
    so a long window still moves every second.
    """
    return max(RAMP_MIN_STEPS, math.ceil(window / RAMP_MAX_TICK))


def ramp_weight(full: int, step: int, steps: int) -> int:
    """The weight at ``step`` of ``steps``: linear from ``max(1, full // 10)`` to ``full``.

    Integer arithmetic only, so step boundaries land exactly.
    """
    if step >= steps:
        return full
    start = max(1, full // RAMP_START_DIVISOR)
    return start + (full - start) * max(step, 0) // steps


# -- the monitor -----------------------------------------------------------------


class _Server:
    """The monitor's bookkeeping for one server."""

    __slots__ = (
        "state",
        "checks",
        "request",
        "probe",
        "check_timer",
        "check_started",
        "failures",
        "withheld",
        "ejections",
        "ejected_at",
        "returned_at",
        "eject_timer",
        "ramp_step",
        "ramp_steps",
        "ramp_started",
        "ramp_timer",
    )

    def __init__(self, state: ServerState, request: bytes | None) -> None:
        self.state = state
        self.checks = Hysteresis(state.up)
        self.request = request  # None: a TCP check
        self.probe: Probe | None = None
        self.check_timer: IDelayedCall | None = None
        self.check_started = 0.0
        self.failures = 0  # consecutive passive failures
        self.withheld = False  # this streak's ejection was refused by the share limit
        self.ejections = 0  # k in the cool-down formula
        self.ejected_at = 0.0
        self.returned_at: float | None = None
        self.eject_timer: IDelayedCall | None = None
        self.ramp_step = 0
        self.ramp_steps = 0
        self.ramp_started = 0.0
        self.ramp_timer: IDelayedCall | None = None

    @property
    def in_service(self) -> bool:
        """Up and not ejected: what "comes back" means for slow start."""
        return self.state.up and not self.state.ejected


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()


class HealthMonitor:
    """Active checks, passive ejection and slow start for one backend.

    Built with the backend's live ``servers`` and its ``selector``; nothing
    happens until :meth:`start`. The proxy calls :meth:`report` once per
    exchange with a server; reports count only while the monitor runs.
    ``log`` is where transitions go (a module Logger unless given).
    """

    def __init__(
        self,
        reactor: Reactor,
        backend: BackendConfig,
        servers: Sequence[ServerState],
        selector: Updatable,
        *,
        log: Logger | None = None,
    ) -> None:
        self.reactor = reactor
        self.backend = backend
        self.selector = selector
        self.log = log if log is not None else _log
        self.running = False
        http = backend.check == "http"
        # Keyed by name, so a report about a ServerState from another runtime
        # of the same configuration still finds its server.
        self._servers: dict[str, _Server] = {
            state.config.name: _Server(state, check_request(backend, state.config) if http else None)
            for state in servers
        }

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Schedule each server's first check, spread evenly over one interval.

        Server i of n is first checked ``i * check_interval / n`` seconds after
        start, so n servers never probe at once and all are checked within one
        interval. With ``check = none`` a server found down is put back up: no
        check would ever raise it. A server found ejected gets a cool-down of
        ``eject_time``.
        """
        if self.running:
            return
        self.running = True
        backend = self.backend
        now = self.reactor.seconds()
        changed = False
        records = list(self._servers.values())
        for index, record in enumerate(records):
            state = record.state
            if backend.check == "none":
                if not state.up:
                    state.up = True
                    changed = True
                    self._log_up(record, "active checks are off", count=0)
            else:
                record.checks = Hysteresis(state.up)
                delay = backend.check_interval * index / len(records)
                record.check_timer = self.reactor.callLater(delay, self._check, record)
            if state.ejected and record.eject_timer is None:
                record.ejections = max(record.ejections, 1)
                record.ejected_at = now
                record.eject_timer = self.reactor.callLater(backend.eject_time, self._return, record)
        if changed:
            self.selector.update()

    def stop(self) -> None:
        """Cancel every timer and abort every probe; hand every server back.

        Ejected servers return at once and ramping servers get their full
        weight, since no timer is left to do it later; ``up`` stays as the
        checks left it (a monitor started next over the same servers carries
        on from there).
        """
        if not self.running:
            return
        self.running = False
        changed = False
        for record in self._servers.values():
            state = record.state
            _cancel(record.check_timer)
            record.check_timer = None
            probe, record.probe = record.probe, None
            if probe is not None:
                probe.abort()
            _cancel(record.eject_timer)
            record.eject_timer = None
            _cancel(record.ramp_timer)
            record.ramp_timer = None
            record.failures = 0
            record.withheld = False
            if state.ejected:
                state.ejected = False
                changed = True
                self._log_returned(record, "as health monitoring stopped")
            if state.weight != state.config.weight:
                state.weight = state.config.weight
                changed = True
        if changed:
            self.selector.update()

    def status(self) -> dict[str, str]:
        """Server name -> ``up`` / ``down`` / ``ejected`` / ``draining``."""
        return {name: server_status(r.state).value for name, r in self._servers.items()}

    # -- active checks -------------------------------------------------------------

    def _check(self, record: _Server) -> None:
        record.check_timer = None
        record.check_started = self.reactor.seconds()

        def done(result: ProbeResult) -> None:
            if record.probe is probe:
                record.probe = None
                self._checked(record, result)

        probe = Probe.for_backend(self.reactor, self.backend, record.state.config, done, record.request)
        record.probe = probe
        probe.start()

    def _checked(self, record: _Server, result: ProbeResult) -> None:
        """One check is over: count it, then schedule the next.

        The next check is due ``check_interval`` after this one started, but
        never before this one ended, so checks don't overlap even when
        ``check_timeout`` exceeds ``check_interval``.
        """
        backend = self.backend
        if record.checks.record(result.ok, backend.check_rise, backend.check_fall):
            state = record.state
            was = record.in_service
            state.up = result.ok
            if result.ok:
                self._log_up(record, result.reason, count=backend.check_rise)
            else:
                self.log.warn(
                    "backend {backend} server {server} DOWN after {checks}: {reason}",
                    backend=backend.name,
                    server=state.config.name,
                    checks=_plural(backend.check_fall, "failed check"),
                    reason=result.reason,
                    transition="down",
                )
            self._changed(record, was)
        if self.running:
            now = self.reactor.seconds()
            delay = max(0.0, record.check_started + backend.check_interval - now)
            record.check_timer = self.reactor.callLater(delay, self._check, record)

    # -- passive checks --------------------------------------------------------------

    def report(self, server: ServerState, outcome: str, now: float | None = None) -> None:
        """Count the outcome of one exchange with ``server``.

        ``outcome`` is ``ok``, ``connect_failure``, ``reset``, ``timeout`` or
        ``status:NNN`` (the response status; a failure when NNN is in
        ``eject_statuses``, else a success). ``now`` is when it happened
        (default: the reactor's time). Ignored while the monitor is stopped,
        when ``eject_consecutive`` is 0, and while the server is ejected
        (late answers to requests sent before the ejection).
        """
        backend = self.backend
        if not self.running or backend.eject_consecutive == 0:
            return
        record = self._servers.get(server.config.name)
        if record is None:
            return
        failed = self._is_failure(outcome)
        if failed is None:
            return
        if not failed:
            record.failures = 0
            record.withheld = False
            return
        if record.state.ejected:
            return
        record.failures += 1
        if record.failures < backend.eject_consecutive:
            return
        when = self.reactor.seconds() if now is None else now
        ejected = sum(1 for r in self._servers.values() if r.state.ejected)
        limit = eject_limit(backend.eject_max_share, len(self._servers))
        if ejected >= limit:
            # The streak stays counted, so the next failure ejects the server
            # once another one has returned.
            if not record.withheld:
                record.withheld = True
                self.log.warn(
                    "backend {backend} server {server} not ejected after {failures}"
                    " ({outcome}): {ejected} of {total} servers already out"
                    " (eject_max_share {share:g})",
                    backend=backend.name,
                    server=record.state.config.name,
                    failures=_plural(record.failures, "consecutive failure"),
                    outcome=outcome,
                    ejected=ejected,
                    total=len(self._servers),
                    share=backend.eject_max_share,
                    transition="withheld",
                )
            return
        self._eject(record, outcome, when)

    def _is_failure(self, outcome: str) -> bool | None:
        """True for a failure, False for a success, None (logged) for nonsense."""
        if outcome == "ok":
            return False
        if outcome in _FAILURES:
            return True
        kind, _, code = outcome.partition(":")
        if kind == "status" and len(code) == 3 and code.isdigit():
            return int(code) in self.backend.eject_statuses
        self.log.error(
            "backend {backend}: unknown outcome {outcome!r} reported; allowed: {allowed}",
            backend=self.backend.name,
            outcome=outcome,
            allowed=", ".join(sorted(OUTCOMES)) + ", status:NNN",
        )
        return None

    def _eject(self, record: _Server, outcome: str, now: float) -> None:
        backend = self.backend
        if record.returned_at is not None and now - record.returned_at >= backend.eject_time_max:
            record.ejections = 0  # stayed healthy long enough: forgive the past
        record.ejections += 1
        seconds = cooldown(backend.eject_time, backend.eject_time_max, record.ejections)
        state = record.state
        was = record.in_service
        state.ejected = True
        failures, record.failures = record.failures, 0
        record.withheld = False
        record.ejected_at = now
        delay = max(0.0, now + seconds - self.reactor.seconds())
        record.eject_timer = self.reactor.callLater(delay, self._return, record)
        self.log.warn(
            "backend {backend} server {server} EJECTED for {seconds:g}s after {failures}: {outcome}",
            backend=backend.name,
            server=state.config.name,
            seconds=seconds,
            failures=_plural(failures, "consecutive failure"),
            outcome=outcome,
            ejection=record.ejections,
            transition="ejected",
        )
        self._changed(record, was)

    def _return(self, record: _Server) -> None:
        record.eject_timer = None
        state = record.state
        if not state.ejected:
            return  # someone else returned it (a monitor being stopped)
        now = self.reactor.seconds()
        state.ejected = False
        record.failures = 0
        record.returned_at = now
        self._log_returned(record, f"after {now - record.ejected_at:g}s out")
        self._changed(record, was=False)

    # -- slow start and bookkeeping ----------------------------------------------------

    def _changed(self, record: _Server, was: bool) -> None:
        """``up`` or ``ejected`` changed: start or stop the ramp, tell the selector."""
        now_in = record.in_service
        if now_in and not was:
            self._start_ramp(record)
        elif was and not now_in:
            _cancel(record.ramp_timer)
            record.ramp_timer = None
        self.selector.update()

    def _start_ramp(self, record: _Server) -> None:
        state = record.state
        full = state.config.weight
        _cancel(record.ramp_timer)
        record.ramp_timer = None
        window = self.backend.slow_start
        steps = ramp_steps(window) if window > 0 else 0
        if steps == 0 or ramp_weight(full, 0, steps) == full:
            state.weight = full
            return
        record.ramp_steps = steps
        record.ramp_step = 0
        record.ramp_started = self.reactor.seconds()
        state.weight = ramp_weight(full, 0, steps)
        record.ramp_timer = self.reactor.callLater(window / steps, self._ramp, record)

    def _ramp(self, record: _Server) -> None:
        """One ramp step, read off the clock so a late timer catches up."""
        record.ramp_timer = None
        window = self.backend.slow_start
        steps = record.ramp_steps
        tick = window / steps
        now = self.reactor.seconds()
        # The epsilon absorbs float error in the clock's sums (ten 0.1s ticks).
        due = math.floor((now - record.ramp_started) / tick + 1e-6)
        step = record.ramp_step = min(steps, max(record.ramp_step + 1, due))
        if step < steps:
            delay = max(0.0, record.ramp_started + (step + 1) * tick - now)
            record.ramp_timer = self.reactor.callLater(delay, self._ramp, record)
        state = record.state
        weight = ramp_weight(state.config.weight, step, steps)
        if weight != state.weight:
            state.weight = weight
            self.selector.update()

    def _log_up(self, record: _Server, reason: str, count: int) -> None:
        server = record.state.config.name
        if count:
            text = "backend {backend} server {server} UP after {checks}: {reason}"
        else:
            text = "backend {backend} server {server} UP: {reason}"
        self.log.info(
            text,
            backend=self.backend.name,
            server=server,
            checks=_plural(count, "successful check"),
            reason=reason,
            transition="up",
        )

    def _log_returned(self, record: _Server, reason: str) -> None:
        self.log.info(
            "backend {backend} server {server} RETURNED {reason}",
            backend=self.backend.name,
            server=record.state.config.name,
            reason=reason,
            transition="returned",
        )
