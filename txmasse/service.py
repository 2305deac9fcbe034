"""
Services for applications, C{.tac} files and C{twistd masse}: a registry
connection that owns the leases of the named peers below it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txmasse.checks import checkNumber
from txmasse.descriptions import serverEndpoint, transportOf
from txmasse.errors import MasseError
from txmasse.health import HealthCheck, parseCheck
from txmasse.metrics import metricsService
from txmasse.peertls import PeerTLS, tlsFromOptions
from txmasse.pem import FLAGS
from txmasse.records import validateName
from txmasse.registry import IRegistry, defaultNamespace, registryFromURL
from txmasse.registry.opening import checkRegistry
from txmasse.retry import retryPolicy

log = Logger()

LISTEN_RETRY = retryPolicy(1.0, 30.0)
"""Seconds before a service whose endpoint could not listen tries again, by failures so far."""


class ListeningService(Service):
    """
    Listens on a server endpoint while running; if listening fails (the
    port is taken, say), logs why and tries again (L{LISTEN_RETRY}) rather
    than run without it.
    """

    def __init__(self, endpoint: Any, factory: IProtocolFactory, reactor: Any):
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._reactor = reactor
        self._retry: IDelayedCall | None = None
        self._failures = 0
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        self._retry = None
        attempt = self._listening = self.endpoint.listen(self.factory)
        attempt.addCallbacks(
            self._listened, self._failed, callbackArgs=(attempt,), errbackArgs=(attempt,)
        )

    def _listened(
        self, port: IListeningPort, attempt: Deferred[IListeningPort]
    ) -> Deferred[None] | None:
        if attempt is not self._listening:  # stopped meanwhile; cancelling came too late
            return port.stopListening()
        self._listening = None
        self.port = port
        self._failures = 0
        log.info("{name} is listening on {address}", name=self.name, address=str(port.getHost()))
        return None

    def _failed(self, failure: Failure, attempt: Deferred[IListeningPort]) -> None:
        if attempt is not self._listening:  # stopped meanwhile
            return
        self._listening = None
        delay = LISTEN_RETRY(self._failures)
        self._failures += 1
        log.warn(
            "{name}: could not listen, retrying in {delay:.2f}s: {error}",
            name=self.name,
            delay=delay,
            error=failure.getErrorMessage(),
        )
        self._retry = self._reactor.callLater(delay, self._listen)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        attempt, self._listening = self._listening, None
        if attempt is not None:
            # Fires once the attempt closed its ports and started taking
            # back its record (RegistryService's close waits for that).
            attempt.cancel()
            return attempt.addCallback(lambda _: None)
        port, self.port = self.port, None
        if port is None:
            return None
        return port.stopListening()


class NamedPeerService(ListeningService):
    """
    Listens on a C{masse:} server endpoint, which keeps a name registered
    for it while running.

    Its endpoint listens even while the registry is unreachable, and
    registers as soon as it answers; if listening itself fails, the service
    tries again (L{ListeningService}). Stopping releases the name at once:
    peers see C{left}.
    """


class RegistryService(MultiService):
    """
    Owns a registry connection and the leases of its named peers.

    Add peers with L{addPeer}; stopping the service stops the peers (which
    releases their names) and then closes the registry connection.

    @param registry: an L{IRegistry}, or its URL (default C{$MASSE_REGISTRY}).
    """

    def __init__(self, registry: IRegistry | str | None = None, reactor: Any = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        if registry is None or isinstance(registry, str):
            registry = registryFromURL(reactor, registry)
        self.registry = registry

    def addPeer(
        self,
        name: str,
        factory: IProtocolFactory,
        namespace: str | None = None,
        listen: str = "tcp:0",
        advertise: str | None = None,
        ttl: float = 10.0,
        metadata: Mapping[str, str] | None = None,
        wrappers: Sequence[Any] = (),
        tls: PeerTLS | None = None,
        unix: str | None = None,
        provides: Sequence[type] | None = None,
        check: str | None = None,
        healthCheck: HealthCheck | None = None,
        drain: float = 0.0,
    ) -> NamedPeerService:
        """
        Serve C{factory} under C{name}: listen on C{listen} (a server endpoint
        description) and register the address while running; with C{tls},
        serve TLS with a certificate for C{NAME.NAMESPACE} (see
        L{txmasse.peertls}); with C{unix}, also on that UNIX socket,
        advertised first (clients on the same host prefer it); C{provides}:
        the AMP commands to publish when the factory's protocol class does
        not declare them (L{txmasse.rpc}). C{check}, C{healthCheck} and
        C{drain} are the server endpoint's (L{txmasse.health}): checks run
        at every heartbeat, and how long stopping waits, drained, for open
        connections to close.
        """
        from twisted.internet.endpoints import serverFromString

        from txmasse.endpoints import MasseServerEndpoint

        namespace = defaultNamespace() if namespace is None else namespace
        endpoint = MasseServerEndpoint(
            self.reactor,
            name,
            namespace=namespace,
            registry=self.registry,
            endpoint=serverFromString(self.reactor, listen),
            advertise=advertise,
            ttl=ttl,
            metadata=metadata,
            wrappers=wrappers,
            tls=tls,
            unixPath=unix,
            provides=provides,
            check=check,
            healthCheck=healthCheck,
            drain=drain,
        )
        peer = NamedPeerService(endpoint, factory, self.reactor)
        peer.setName(f"{namespace}/{name}")
        peer.setServiceParent(self)
        return peer

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[None] = super().stopService()
        return stopping.addCallback(lambda _: self.registry.close())


def loadFactory(spec: str) -> IProtocolFactory:
    """
    Load C{MODULE:ATTR}: a protocol factory, a callable that returns one, or
    a L{Protocol} subclass. The current directory is importable, as with
    C{python -m}.

    @raise ValueError: naming what is wrong with C{spec}.
    """
    module, sep, attribute = spec.partition(":")
    if not (sep and module and attribute):
        raise ValueError(f"--factory {spec!r}: must be MODULE:ATTRIBUTE, e.g. myapp.server:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        loaded: Any = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"--factory {spec!r}: cannot import {module!r}: {e}") from None
    except Exception as e:
        raise ValueError(f"--factory {spec!r}: importing {module!r} failed: {e!r}") from None
    for part in attribute.split("."):
        try:
            loaded = getattr(loaded, part)
        except AttributeError:
            raise ValueError(f"--factory {spec!r}: {module!r} has no {attribute!r}") from None
    if IProtocolFactory.providedBy(loaded):
        return loaded
    if isinstance(loaded, type) and issubclass(loaded, Protocol):
        return Factory.forProtocol(loaded)
    if callable(loaded):
        try:
            made = loaded()
        except Exception as e:
            raise ValueError(f"--factory {spec!r}: calling it failed: {e!r}") from None
        if IProtocolFactory.providedBy(made):
            return made
        raise ValueError(f"--factory {spec!r}: returned {made!r}, not a protocol factory")
    raise ValueError(f"--factory {spec!r}: {loaded!r} is not a protocol factory")


class Options(usage.Options):
    """
    Options of C{twistd masse}: the C{masse:} server endpoint's options, as
    flags.
    """

    synopsis = "--name NAME --factory MODULE:ATTR [options]"
    longdesc = (
        "Run any Twisted protocol factory as a peer reachable by name: it listens "
        "on --listen (and --unix), registers its address under --name in namespace "
        "--ns and keeps the lease alive; stopping twistd releases the name at once. "
        "While the registry is down it listens anyway, and registers as soon as it answers. "
        "Each option is the masse: server endpoint option of the same name "
        "(--meta KEY=VALUE is meta.KEY=VALUE). Example: twistd -n masse --name echo "
        "--factory twisted.protocols.wire:Echo --wrap log"
    )
    optParameters = [
        ["name", None, None, "Name to register under (required)."],
        [
            "factory",
            None,
            None,
            "MODULE:ATTR: a protocol factory, a callable returning one, or a Protocol "
            "class (required); the current directory is importable.",
        ],
        ["ns", None, None, "Namespace (default $MASSE_NAMESPACE, else 'default')."],
        [
            "registry",
            None,
            None,
            "Registry URL (default $MASSE_REGISTRY, else redis://127.0.0.1:6379/0).",
        ],
        ["listen", None, "tcp:0", "Server endpoint description to listen on."],
        [
            "unix",
            None,
            None,
            "Also listen on this UNIX socket, advertised first: clients on the same host "
            "use it (not with --cert).",
        ],
        ["advertise", None, None, "Host to publish (default: the address toward the registry)."],
        ["ttl", None, "10", "Lease seconds."],
        [
            "wrap",
            None,
            None,
            "Wrappers to stack, the first nearest the wire: NAME or NAME=ARG, "
            "comma-separated (e.g. log, idle=30).",
        ],
        ["cert", None, None, "Serve TLS with this PEM certificate (it must name NAME.NAMESPACE)."],
        ["key", None, None, "The certificate's PEM key (default: the key in the --cert file)."],
        ["ca", None, None, "With --cert: require client certificates signed by this CA."],
        ["provides", None, None, "AMP commands to publish: dotted names of Command classes."],
        ["check", None, None, "Health check at every heartbeat: tcp, or http:/PATH."],
        ["drain", None, "0", "Seconds stopping waits, drained, for open connections to close."],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics on this server endpoint."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["meta"] = {}

    def opt_meta(self, pair: str) -> None:
        """
        KEY=VALUE metadata to publish (repeatable).
        """
        key, sep, value = pair.partition("=")
        if not sep:
            raise usage.UsageError(f"--meta {pair!r}: must be KEY=VALUE")
        self["meta"][key] = value

    def postOptions(self) -> None:
        from twisted.internet import reactor

        from txmasse.wrappers import parseWrappers

        try:
            for option in ("name", "factory"):
                if self[option] is None:
                    raise ValueError(f"--{option} is required")
            validateName(self["name"], "name")
            self["ns"] = defaultNamespace() if self["ns"] is None else self["ns"]
            validateName(self["ns"], "namespace")
            checkRegistry(self["registry"])  # or $MASSE_REGISTRY, named as such
            if transportOf(self["listen"]) == "masse":
                raise ValueError(f"--listen {self['listen']!r}: twistd masse gives the name itself")
            serverEndpoint(reactor, self["listen"], "--listen")
            if self["metrics"] is not None:
                serverEndpoint(reactor, self["metrics"], "--metrics")
            self["ttl"] = _seconds("--ttl", self["ttl"])
            if self["check"] is not None:
                parseCheck(self["check"], flag=True)
            self["drain"] = checkNumber(self["drain"], f"--drain {self['drain']!r}:", low=0)
            if self["unix"] is not None:
                _checkSocketPath(self["unix"])
            self["wrappers"] = [] if self["wrap"] is None else parseWrappers(reactor, self["wrap"])
            self["tls"] = tlsFromOptions(
                {k: self[k] for k in ("cert", "key", "ca") if self[k] is not None},
                server=True,
                spelling=FLAGS,
            )
            if self["tls"] is not None:
                if self["unix"] is not None:
                    raise ValueError("--unix cannot be used with --cert: TLS peers listen on TCP")
                self["tls"].checkServes(self["name"], self["ns"], spelling=FLAGS)
            self["factory"] = loadFactory(self["factory"])
            if self["provides"] is not None:
                from txmasse.rpc.publish import loadProvides

                self["provides"] = loadProvides(self["provides"])
        except (ValueError, MasseError) as e:
            raise usage.UsageError(str(e)) from None


def _checkSocketPath(path: str) -> None:
    """
    A UNIX socket path whose directory is there: else listening on it
    would be retried for ever.
    """
    if not path:
        raise ValueError("--unix '': must be a socket path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"--unix {path!r}: no directory {directory!r} to make the socket in")


def _seconds(option: str, text: str) -> float:
    return checkNumber(text, f"{option} {text!r}:", low=0, above=True)


def makeService(options: Options) -> RegistryService:
    """
    The service C{twistd masse} runs.
    """
    try:
        service = RegistryService(options["registry"])  # a secrets file, say, is read here
        if options["metrics"] is not None:  # before the peer: stopped after it
            metricsService(service.reactor, options["metrics"]).setServiceParent(service)
        service.addPeer(
            options["name"],
            options["factory"],
            namespace=options["ns"],
            listen=options["listen"],
            advertise=options["advertise"],
            ttl=options["ttl"],
            metadata=options["meta"],
            tls=options["tls"],
            wrappers=options["wrappers"],
            unix=options["unix"],
            provides=options["provides"],
            check=options["check"],
            drain=options["drain"],
        )
    except (ValueError, MasseError) as e:
        # twistd shows a traceback for whatever makeService raises (usage
        # errors included): end with the message alone.
        raise SystemExit(f"twistd masse: {e}") from None
    return service
