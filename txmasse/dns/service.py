"""
The DNS interface as a service: C{masse dns}, C{twistd masse-dns}, or a
child of an application's own service tree. One implementation for all
three: L{DNSService}, with settings checked by L{Settings}.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from txmasse.checks import checkNumber
from txmasse.dns.authority import MasseAuthority
from txmasse.dns.labels import checkDomain
from txmasse.dns.server import MasseDNSFactory
from txmasse.dns.views import Views
from txmasse.registry import IRegistry, parseRegistryURL, registryFromURL

log = Logger()

DEFAULT_PORT = 8353


def checkPort(text: object) -> int:
    value = str(text)
    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
        raise ValueError(f"--listen {text!r}: must be a port number from 0 to 65535")
    return int(value)


def checkInterface(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"--interface {text!r}: must be an IP address") from None


def checkTTL(text: object) -> int:
    value = str(text)
    if not (value.isascii() and value.isdigit() and int(value) <= 86400):
        raise ValueError(f"--ttl {text!r}: must be whole seconds from 0 to 86400")
    return int(value)


def checkCount(option: str, text: object, high: int) -> int:
    value = str(text)
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= high):
        raise ValueError(f"{option} {text!r}: must be a whole number from 1 to {high}")
    return int(value)


def checkSeconds(option: str, text: object) -> float:
    return checkNumber(str(text), f"{option} {text!r}:", low=0, high=86400)


def _maxNamespaces(text: object) -> int:
    return checkCount("--max-namespaces", text, 10_000)


def _stale(text: object) -> float:
    return checkSeconds("--stale", text)


@attrs.frozen
class Settings:
    """
    How the DNS interface listens and answers; each value checked, with
    errors naming the option.

    @ivar stale: seconds a namespace is answered from its last view once
        the registry is unreachable; SERVFAIL after that.
    """

    port: int = attrs.field(default=DEFAULT_PORT, converter=checkPort)
    interface: str = attrs.field(default="127.0.0.1", converter=checkInterface)
    domain: str = attrs.field(default="masse", converter=checkDomain)
    ttl: int = attrs.field(default=1, converter=checkTTL)
    maxNamespaces: int = attrs.field(default=64, converter=_maxNamespaces)
    stale: float = attrs.field(default=30.0, converter=_stale)


class DNSService(Service):
    """
    Answers DNS for C{settings.domain} on UDP and TCP, same port, from the
    registry's live instances.

    @param registry: an L{IRegistry} (left open on stop), or its URL (a
        registry this service opens and closes).
    """

    def __init__(
        self,
        registry: IRegistry | str | None = None,
        settings: Settings | None = None,
        reactor: Any = None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.settings = settings if settings is not None else Settings()
        self._ownsRegistry = not IRegistry.providedBy(registry)
        if self._ownsRegistry:
            registry = registryFromURL(reactor, registry)  # type: ignore[arg-type]
        self.registry: IRegistry = registry  # type: ignore[assignment]
        self.views: Views | None = None
        self.factory: MasseDNSFactory | None = None
        self.udp: IListeningPort | None = None
        self.tcp: IListeningPort | None = None

    @property
    def port(self) -> int:
        """
        The port answered on (UDP and TCP), once started.
        """
        assert self.udp is not None
        return int(self.udp.getHost().port)  # type: ignore[attr-defined]

    def startService(self) -> None:
        """
        Listen at once: a port in use raises L{CannotListenError} here.
        """
        s = self.settings
        self.views = Views(self.registry, self.reactor, s.maxNamespaces, s.stale)
        authority = MasseAuthority(self.views, s.domain, s.ttl)
        self.factory = MasseDNSFactory(authority, self.reactor)
        for attempt in range(10):
            udp = self.reactor.listenUDP(s.port, self.factory.udpProtocol(), interface=s.interface)
            try:
                self.tcp = self.reactor.listenTCP(
                    udp.getHost().port, self.factory, interface=s.interface
                )
            except CannotListenError:
                udp.stopListening()
                if s.port != 0 or attempt == 9:
                    raise
                continue  # port 0: UDP's free port was taken for TCP; another
            self.udp = udp
            break
        super().startService()
        log.info(
            "masse dns: answering for {domain}. on {interface} port {port} (UDP and TCP), "
            "registry {url}",
            domain=s.domain,
            interface=s.interface,
            port=self.port,
            url=self.registry.url,
        )

    async def _stop(self) -> None:
        for port in (self.udp, self.tcp):
            stopping = None if port is None else port.stopListening()
            if stopping is not None:
                await stopping
        self.udp = self.tcp = None
        if self.views is not None:
            self.views.stop()
        if self._ownsRegistry:
            await self.registry.close()

    def stopService(self) -> Any:
        from twisted.internet.defer import Deferred

        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class Options(usage.Options):
    """
    Options of C{twistd masse-dns}.
    """

    synopsis = "[--listen PORT] [--interface ADDR] [--domain masse] [--ttl SECONDS]"
    longdesc = (
        "Answer DNS (UDP and TCP) for the live peers of a txmasse registry: "
        "NAME.NS.DOMAIN A/AAAA/TXT, _NAME._tcp.NS.DOMAIN SRV."
    )
    optParameters = [
        ["registry", None, None, "Registry URL (default $MASSE_REGISTRY, else local Redis)."],
        ["listen", None, str(DEFAULT_PORT), "Port for UDP and TCP."],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["domain", None, "masse", "The zone answered for."],
        ["ttl", None, "1", "Seconds on every record."],
        ["max-namespaces", None, "64", "Namespaces watched at most."],
        ["stale", None, "30", "Seconds to answer from the last view with the registry down."],
    ]

    def postOptions(self) -> None:
        try:
            if self["registry"] is not None:
                parseRegistryURL(self["registry"])
            self["settings"] = Settings(
                port=self["listen"],
                interface=self["interface"],
                domain=self["domain"],
                ttl=self["ttl"],
                maxNamespaces=self["max-namespaces"],
                stale=self["stale"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> DNSService:
    """
    The service C{twistd masse-dns} runs.
    """
    return DNSService(options["registry"], options["settings"])
