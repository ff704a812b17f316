"""Live TLS material: certificates loaded at start, reloaded on SIGHUP or file change, rotated.

One :class:`Certificates` per service holds what every TLS listener serves:
each ``[site:NAME]``'s certificates and each listener's client CA bundle,
loaded from the files into memory (:mod:`gateway.tlsfiles`), and one
:class:`~gateway.tls.ServerTLS` per TLS listener built from them.

- **Start** is strict: material that fails to load refuses the start with
  ``FILE:0 [site:NAME] key: why`` (the check has already passed, so this is
  a file that changed in between).
- **Reload** (SIGHUP, a changed file when ``tls_reload_interval`` is set, or a
  configuration reload) is per item: a site or CA bundle that fails keeps
  what it had, and the log says why; the rest move on.  New handshakes use the
  new contexts; open connections keep theirs, so nothing is dropped.
- **Rotation**: every ``tls_ticket_rotate`` the contexts are rebuilt from the
  material in memory (no file is read), which gives them new session-ticket
  keys; tickets issued before then no longer resume (a full handshake
  follows), which bounds what a stolen ticket key can decrypt.

Invariants: the reactor is injected; timers start in :meth:`Certificates.start`
and stop in :meth:`Certificates.stop`; a failure here is logged and never
raised into the reactor.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import tlsupstream
from gateway.config import Config, ConfigError, ListenerConfig
from gateway.tls import ServerSettings, ServerTLS, TLSServerFactory, TLSSetupError
from gateway.tlsfiles import (
    SITE_SLOTS,
    MaterialError,
    SiteMaterial,
    load_ca_bundle,
    load_site,
    signature,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory, IReactorTime

log = Logger()


def served_sites(listener: ListenerConfig, config: Config) -> tuple[str, ...]:
    """The sites ``listener`` serves: ``tls_sites``, or every site when empty."""
    return listener.tls_sites or tuple(site.name for site in config.sites)


def default_site(listener: ListenerConfig, config: Config) -> str:
    """The site for clients without SNI or with an unknown name."""
    return listener.tls_default_site or served_sites(listener, config)[0]


def watched_files(config: Config) -> list[str]:
    """Every file whose change a reload should pick up."""
    paths = [
        getattr(site, key)
        for site in config.sites
        for slot in SITE_SLOTS
        for key in slot
    ]
    paths += [listener.tls_client_ca for listener in config.listeners if listener.tls]
    paths += tlsupstream.watched_files(config)
    return [path for path in paths if path]


class Certificates:
    """Every TLS listener's certificates and contexts, kept current."""

    def __init__(self, reactor: IReactorTime, config: Config) -> None:
        self.reactor = reactor
        self.config = config
        self.creators: dict[str, ServerTLS] = {}
        self._sites: dict[str, SiteMaterial] = {}
        self._cas: dict[str, tuple[x509.Certificate, ...]] = {}
        self._signature = signature(watched_files(config))
        self._rotation: LoopingCall | None = None
        self._polling: LoopingCall | None = None
        self._started = False
        self.reloads = 0

    @property
    def in_use(self) -> bool:
        """Whether any TLS is configured: a TLS listener, or a backend with https servers."""
        return bool(self.creators) or any(
            server.scheme == "https" for backend in self.config.backends for server in backend.servers
        )

    # -- start ----------------------------------------------------------------

    def wrap(self, listener: ListenerConfig, factory: IProtocolFactory) -> TLSServerFactory:
        """``factory`` behind TLS for ``listener``, its contexts built now.

        :raises ConfigError: when the listener's material can't be loaded, so
            that the start is refused with the reason.
        """
        problems: list[str] = []
        source = self.config.source
        for name in served_sites(listener, self.config):
            if name in self._sites:
                continue
            try:
                self._sites[name] = self._load_site(name)
            except MaterialError as exc:
                problems += [f"{source}:0 [site:{name}] {k}: {m}" for k, m in exc.problems]
        path = listener.tls_client_ca
        if path and path not in self._cas:
            try:
                self._cas[path] = load_ca_bundle("tls_client_ca", path)
            except MaterialError as exc:
                section = f"listener:{listener.name}"
                problems += [f"{source}:0 [{section}] {k}: {m}" for k, m in exc.problems]
        if problems:
            raise ConfigError(problems)
        creator = ServerTLS(listener.name)
        try:
            self._install(creator, listener)
        except TLSSetupError as exc:
            raise ConfigError([f"{source}:0 [listener:{listener.name}] tls: {exc}"]) from None
        self.creators[listener.name] = creator
        return TLSServerFactory(creator, factory, self.reactor)

    def _load_site(self, name: str) -> SiteMaterial:
        site = next(s for s in self.config.sites if s.name == name)
        files = {key: getattr(site, key) for slot in SITE_SLOTS for key in slot}
        material, _ = load_site(name, site.names, files, time.time())
        return material

    def _install(self, creator: ServerTLS, listener: ListenerConfig) -> None:
        cas = self._cas.get(listener.tls_client_ca, ()) if listener.tls_client_ca else ()
        settings = ServerSettings.of(listener, self.config.gateway.tls_ticket_rotate, cas)
        sites = [
            self._sites[name]
            for name in served_sites(listener, self.config)
            if name in self._sites
        ]
        creator.install(settings, sites, default_site(listener, self.config))

    def start(self) -> None:
        """Log what is unsafe on purpose; start ticket rotation and file polling."""
        for listener in self.config.listeners:
            if listener.tls and listener.tls_min_version in ("1.0", "1.1"):
                log.warn(
                    "listener {name}: tls_min_version = {version}: TLS 1.0/1.1 are "
                    "enabled, with weaker ciphers (RFC 8996 deprecates them)",
                    name=listener.name,
                    version=listener.tls_min_version,
                )
        for warning in tlsupstream.start_warnings(self.config):
            log.warn("{warning}", warning=warning)
        self._started = True
        self._restart_timers()

    def _restart_timers(self) -> None:
        self._stop_timers()
        settings = self.config.gateway
        if self.creators:
            self._rotation = LoopingCall(self.rotate)
            self._rotation.clock = self.reactor
            self._rotation.start(settings.tls_ticket_rotate, now=False)
        if settings.tls_reload_interval:
            self._polling = LoopingCall(self.poll)
            self._polling.clock = self.reactor
            self._polling.start(settings.tls_reload_interval, now=False)

    def _stop_timers(self) -> None:
        for timer in (self._rotation, self._polling):
            if timer is not None and timer.running:
                timer.stop()
        self._rotation = self._polling = None

    def stop(self) -> None:
        """Stop rotating and polling."""
        self._started = False
        self._stop_timers()

    # -- reload -----------------------------------------------------------------

    def rotate(self) -> None:
        """New contexts (so new ticket keys) from the material in memory."""
        self._install_all("ticket key rotation")

    def poll(self) -> None:
        """Reload when a watched file changed since the last load."""
        current = signature(watched_files(self.config))
        if current != self._signature:
            self.reload("files changed")

    def configure(self, config: Config, reason: str = "configuration reload") -> None:
        """A new configuration (the service's reload): new sites, settings and files.

        ``reason`` names the reload in the log lines (``SIGHUP`` when a signal asked).
        """
        old = self.config
        self.config = config
        # The service opens new TLS listeners (``wrap``) after this; a listener
        # that is gone no longer rotates its contexts.
        names = {listener.name for listener in config.listeners}
        for name in [name for name in self.creators if name not in names]:
            del self.creators[name]
        if self._started and (
            old.gateway.tls_reload_interval != config.gateway.tls_reload_interval
            or old.gateway.tls_ticket_rotate != config.gateway.tls_ticket_rotate
        ):
            self._restart_timers()
        self.reload(reason)

    def reload(self, reason: str = "SIGHUP") -> None:
        """Load every file again; what fails keeps what it had; then swap contexts."""
        self.reloads += 1
        self._signature = signature(watched_files(self.config))
        tlsupstream.clear_cache()
        kept = 0
        for site in self.config.sites:
            try:
                self._sites[site.name] = self._load_site(site.name)
            except MaterialError as exc:
                kept += 1
                what = "keeps the certificate in use" if site.name in self._sites else "is not served"
                log.warn(
                    "TLS reload ({reason}): [site:{site}] {what}: {problems}",
                    reason=reason,
                    site=site.name,
                    what=what,
                    problems=str(exc),
                )
        for name in set(self._sites) - {site.name for site in self.config.sites}:
            del self._sites[name]
        for path in {lst.tls_client_ca for lst in self.config.listeners if lst.tls_client_ca}:
            try:
                self._cas[path] = load_ca_bundle("tls_client_ca", path)
            except MaterialError as exc:
                kept += 1
                log.warn(
                    "TLS reload ({reason}): client CA bundle {path} keeps the one in use: "
                    "{problems}",
                    reason=reason,
                    path=path,
                    problems=str(exc),
                )
        self._install_all(reason)
        log.info(
            "TLS reload ({reason}): done, {kept} item(s) kept from before",
            reason=reason,
            kept=kept,
        )

    def _install_all(self, reason: str) -> None:
        listeners = {listener.name: listener for listener in self.config.listeners}
        for name, creator in self.creators.items():
            listener = listeners.get(name)
            if listener is None or not listener.tls:
                continue  # gone or turned off: keeps serving until restart
            try:
                self._install(creator, listener)
            except TLSSetupError as exc:
                log.warn(
                    "TLS {reason}: listener {name} keeps its contexts: {error}",
                    reason=reason,
                    name=name,
                    error=str(exc),
                )


def install_sighup(reactor: object, callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` in the reactor on SIGHUP; returns what restores the old handler.

    A no-op outside the main thread or on a reactor without ``callFromThread``
    (a test's memory reactor): signal handlers can only be set from the main
    thread, and ``callFromThread`` is the one reactor call that is safe from a
    signal handler (it wakes the reactor instead of running inside an
    interrupted callback).
    """
    call = getattr(reactor, "callFromThread", None)
    if call is None or threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        call(callback)

    previous = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
