"""``twistd gateway``: command-line options and the service they make.

This is the only module that imports the global reactor.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from gateway import config as configuration


class Options(usage.Options):
    """``twistd gateway [--config FILE | --listen ENDPOINT --upstream URL ...]``."""

    synopsis = "[--config FILE | --listen ENDPOINT --upstream URL [--upstream URL ...]]"
    optParameters = [
        ["config", "c", None, "INI configuration file (default: the packaged demo config)."],
        ["listen", "l", None, "Quick mode: a Twisted server endpoint, e.g. tcp:8080."],
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


def load(options: Options) -> configuration.Config:
    """The configuration the options ask for; ConfigError when it is wrong."""
    if options["listen"] is not None:
        return configuration.quick(options["listen"], options["upstreams"])
    return configuration.load(options["config"] or configuration.default_path())


def makeService(options: Options) -> IService:
    """Load and validate the configuration, then build the service tree.

    A bad configuration refuses to start: each problem goes to stderr as
    ``FILE:LINE [section] key: ...`` and the process exits with status 1.
    """
    from twisted.internet import reactor

    from gateway.service import GatewayService

    try:
        config = load(options)
    except configuration.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return GatewayService(reactor, config)
