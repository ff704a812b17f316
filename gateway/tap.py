"""``twistd gateway``: command-line options and the service they make.

This is the only module that imports the global reactor.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.logger import ILogObserver
from twisted.python import usage

from gateway import config as configuration
from gateway import workers
from gateway.compat import interpreter_advice
from gateway.logbuffer import BatchedLogObserver
from gateway.reload import ConfigSource


def worker_option(text: str) -> int:
    """``--workers``: an integer 0..64 (0: one per CPU core)."""
    value = int(text)
    if not 0 <= value <= workers.MAX_WORKERS:
        raise ValueError(f"expected 0..{workers.MAX_WORKERS}, got {value}")
    return value


class Options(usage.Options):
    """``twistd gateway [--config FILE | --listen ENDPOINT --upstream URL ...]``."""

    synopsis = "[--config FILE | --listen ENDPOINT --upstream URL [--upstream URL ...]]"
    optParameters = [
        ["config", "c", None, "INI configuration file (default: the packaged demo config)."],
        ["listen", "l", None, "Quick mode: a Twisted server endpoint, e.g. tcp:8080."],
        ["cache", None, None, "Quick mode: cache responses on disk in this directory."],
        ["workers", None, None,
         "Worker processes sharing the listening sockets; 0: one per CPU core "
         "(default: [gateway] workers).", worker_option],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["upstreams"] = []

    def opt_upstream(self, url: str) -> None:
        """Quick mode: an upstream URL (http://HOST:PORT); repeat for more."""
        self["upstreams"].append(url)

    opt_u = opt_upstream

    def postOptions(self) -> None:
        # Chosen here, before twistd imports the default reactor; an explicit
        # ``twistd --reactor`` has already installed one and wins.
        from gateway.reactor import install

        install()
        quick = self["listen"] is not None or self["upstreams"]
        if quick and self["config"] is not None:
            raise usage.UsageError("--config can't be combined with --listen/--upstream")
        if quick and (self["listen"] is None or not self["upstreams"]):
            raise usage.UsageError("quick mode needs --listen and at least one --upstream")
        if self["cache"] is not None and not quick:
            raise usage.UsageError("--cache is a quick-mode option; in a file, set cache_dir")
        twistd = getattr(self, "parent", None)
        self["log_to_stdout"] = twistd is not None and logs_to_stdout(twistd)
        if self["log_to_stdout"]:
            # twistd resolves its "logger" option after our postOptions.
            twistd["logger"] = f"{__name__}.{stdout_log_observer.__name__}"


def load(options: Options) -> configuration.Config:
    """The configuration the options ask for; ConfigError when it is wrong."""
    path = config_source(options).path
    if path is None:
        return configuration.quick(options["listen"], options["upstreams"], options["cache"])
    return configuration.load(path)


def makeService(options: Options) -> IService:
    """Load and validate the configuration, then build the service tree.

    A bad configuration refuses to start: each problem goes to stderr as
    ``FILE:LINE [section] key: ...`` and the process exits with status 1.

    One worker (``--workers``, else ``[gateway] workers``; 0 is one per core)
    gives today's single process, :class:`~gateway.service.GatewayService`.
    More give a :class:`~gateway.supervisor.Supervisor`, unless a listener's
    endpoint kind can't be shared (``unix:``, ``systemd:``): then one process
    runs, with a warning.  A process the supervisor started as a worker
    (:data:`gateway.workers.WORKER_ENV` set) builds the worker's service.
    """
    from twisted.internet import reactor

    from gateway.service import GatewayService

    if os.environ.get(workers.WORKER_ENV):
        return _worker_service(reactor, os.environ)
    try:
        config = load(options)
    except configuration.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    advice = interpreter_advice(platform.python_implementation(), os.environ)
    if advice is not None:
        print(f"warning: {advice}", file=sys.stderr)
    source = config_source(options)
    count = source.worker_count(config)
    blocked = workers.unshareable(config) if count > 1 else ()
    if blocked:
        names = ", ".join(f"{lst.name} ({lst.bind})" for lst in blocked)
        print(
            f"warning: {count} workers asked for, but listener {names} can't share its "
            "socket across processes; running a single process",
            file=sys.stderr,
        )
        count = 1
    if count == 1:
        return GatewayService(reactor, config, source=source)
    from gateway.supervisor import Supervisor, worker_command

    return Supervisor(
        reactor,  # type: ignore[arg-type]
        config,
        count,
        worker_command(sys.executable),
        relay_logs=not options["log_to_stdout"],
        source=source,
    )


def config_source(options: Options) -> ConfigSource:
    """Where SIGHUP reads the configuration again: the file loaded at start, if any."""
    path = None
    if options["listen"] is None:
        path = options["config"] or configuration.default_path()
    return ConfigSource(path, options["workers"])


def logs_to_stdout(twistd: Mapping[str, Any]) -> bool:
    """Whether twistd's options (the parent of ours) send its log to stdout.

    As ``twistd`` decides: not with ``--logger`` or ``--syslog``; yes with
    ``--logfile=-``, or in the foreground (``-n``) without ``--logfile``.
    Workers then write their lines there themselves; otherwise the
    supervisor relays them into its log.
    """
    if twistd.get("logger") or twistd.get("syslog"):
        return False
    logfile = twistd.get("logfile")
    return logfile == "-" or (bool(twistd.get("nodaemon")) and not logfile)


def stdout_log_observer() -> ILogObserver:
    """The log observer for ``twistd -n gateway`` logging to stdout.

    Twistd's own writes and flushes every event through its generic
    formatter; this one batches access lines (:mod:`gateway.logbuffer`).
    """
    from twisted.internet import reactor

    return BatchedLogObserver(sys.stdout, reactor)  # type: ignore[arg-type]


def worker_log_observer() -> ILogObserver:
    """twistd ``--logger`` for a worker (:func:`gateway.adoption.worker_log_observer`)."""
    from twisted.internet import reactor

    from gateway.adoption import worker_log_observer as observer

    return observer(reactor)


def _worker_service(reactor: Any, environ: Mapping[str, str]) -> IService:
    """A worker's service: the supervisor's configuration on the inherited sockets."""
    from gateway.adoption import SupervisorLink, read_config, worker_setup
    from gateway.service import GatewayService

    setup = worker_setup(environ)
    assert setup is not None
    config = read_config(workers.CONFIG_FD)
    service = GatewayService(reactor, config, sockets=setup.sockets)
    link = SupervisorLink(reactor, setup.number, workers.PARENT_FD, reactor.stop, workers.READY_FD)
    link.setServiceParent(service)
    return service
