"""
Peer TLS: a certificate bound to the peer's name.

A peer's certificate must carry the DNS name C{NAME.NAMESPACE} (lower case)
in its subjectAltName, and chain to the CA the client trusts. A client
verifies the certificate of the instance it is connecting to against that
instance's own name, so an impostor registering the name with a
certificate for another name, or from another CA, or with no
subjectAltName at all, is refused before the application sees a byte.

Servers advertise C{tls:host=H:port=P}; clients parse that themselves
(Twisted's own C{tls:} parser would verify the certificate against C{H},
not against the name) and connect with L{PeerTLSClientEndpoint}. On both
sides the application's protocol is connected only once the handshake is
done and the certificates accepted.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txmasse._tcp import tcpEndpoint
from txmasse.checks import isDigits
from txmasse.descriptions import parseDescription
from txmasse.errors import MasseError
from txmasse.pem import (
    OPTIONS,
    SigningKey,
    Spelling,
    loadCertificates,
    loadPrivateKey,
    publicBytes,
    readPEM,
)
from txmasse.records import PeerRecord
from txmasse.verify import VerifyingCreator, checkCertificateName

log = Logger()

SYSTEM_TRUST = "the system trust roots (give ca=)"


class PeerTLSError(MasseError):
    """
    A TLS peer was refused (its certificate does not name it, or no
    trusted CA signed it), or the TLS handshake with it failed.
    """


def certificateName(name: str, namespace: str) -> str:
    """
    The DNS name a peer's certificate must carry: C{NAME.NAMESPACE} in lower
    case, as DNS names compare without case.
    """
    return f"{name}.{namespace}".lower()


# The settings of one side


@attrs.define(eq=False)
class PeerTLS:
    """
    TLS settings for a peer or a client.

    A server needs C{certificate} and C{key}; with C{authorities} it also
    requires client certificates signed by them (mutual TLS). A client
    verifies servers against C{authorities} (default: the system trust
    roots) and presents C{certificate} if it has one.

    @ivar certificate: this side's certificate; a server's must list the
        DNS name C{NAME.NAMESPACE} (see L{certificateName}).
    @ivar chain: intermediate certificates sent along with it.
    @ivar authorities: the CA certificates to trust.
    @ivar trustSource: how error messages name C{authorities}.
    """

    certificate: x509.Certificate | None = None
    key: SigningKey | None = None
    chain: Sequence[x509.Certificate] = ()
    authorities: Sequence[x509.Certificate] = ()
    trustSource: str = "the given CA"
    _clientOptions: CertificateOptions | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.chain = tuple(self.chain)
        self.authorities = tuple(self.authorities)
        if (self.certificate is None) != (self.key is None):
            raise ValueError("TLS: give both a certificate and its key, or neither")
        if (
            self.certificate is not None
            and self.key is not None
            and publicBytes(self.key.public_key()) != publicBytes(self.certificate.public_key())
        ):
            raise ValueError("TLS: the key does not match the certificate")
        if not self.authorities:
            self.trustSource = SYSTEM_TRUST

    @classmethod
    def fromFiles(
        cls,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        spelling: Spelling = OPTIONS,
    ) -> PeerTLS:
        """
        Load PEM files: C{cert} (this side's certificate, then any
        intermediates, and its key unless C{key} is given) and C{ca} (CA
        certificates to trust).

        @param spelling: how messages name the options (C{cert=} or C{--cert}).
        @raise ValueError: naming the option and file at fault.
        """
        name, given = spelling.name, spelling.given
        certificates: list[x509.Certificate] = []
        privateKey = None
        if key is not None and cert is None:
            raise ValueError(f"{given('key', key)}: give {name('cert')} too")
        if cert is not None:
            data = readPEM("cert", cert, spelling)
            certificates = loadCertificates("cert", cert, data, spelling)
            if key is None:
                privateKey = loadPrivateKey("cert", cert, data, spelling)
                if privateKey is None:
                    why = f"no private key in it; give {name('key')}"
                    raise ValueError(f"{given('cert', cert)}: {why}")
            else:
                privateKey = loadPrivateKey("key", key, readPEM("key", key, spelling), spelling)
                if privateKey is None:
                    raise ValueError(f"{given('key', key)}: no PEM private key in it")
            if publicBytes(privateKey.public_key()) != publicBytes(certificates[0].public_key()):
                certificate = given("cert", cert)
                where = given("key", key) if key is not None else f"the key in {certificate}"
                raise ValueError(f"{where} does not match the certificate in {certificate}")
        authorities = (
            loadCertificates("ca", ca, readPEM("ca", ca, spelling), spelling)
            if ca is not None
            else []
        )
        return cls(
            certificate=certificates[0] if certificates else None,
            key=privateKey,
            chain=certificates[1:],
            authorities=authorities,
            trustSource=given("ca", ca) if ca is not None else SYSTEM_TRUST,
        )

    def _pair(self) -> dict[str, Any]:
        if self.certificate is None or self.key is None:
            return {}
        return {
            "privateKey": crypto.PKey.from_cryptography_key(self.key),
            "certificate": crypto.X509.from_cryptography(self.certificate),
            "extraCertChain": [crypto.X509.from_cryptography(c) for c in self.chain],
        }

    def checkServes(self, name: str, namespace: str, spelling: Spelling = OPTIONS) -> None:
        """
        Refuse to serve C{name} with a certificate every client would refuse.

        @raise ValueError: the certificate is missing or names another peer.
        """
        cert = spelling.name("cert")
        if self.certificate is None:
            raise ValueError(f"a TLS server needs {cert} (its certificate and key)")
        problem = checkCertificateName(self.certificate, certificateName(name, namespace))
        if problem is not None:
            raise ValueError(f"{cert.rstrip('=')}: clients of {name!r} would refuse it: {problem}")

    def serverFactory(self, factory: IProtocolFactory) -> IProtocolFactory:
        """
        C{factory} behind TLS with this certificate; with C{authorities},
        only clients with a certificate they signed get through.
        """
        if self.certificate is None:
            raise ValueError("a TLS server needs cert= (its certificate and key)")
        authorities = [crypto.X509.from_cryptography(c) for c in self.authorities]
        options = CertificateOptions(
            verify=bool(authorities),
            requireCertificate=bool(authorities),
            caCerts=authorities or None,
            **self._pair(),
        )
        return _TLSFactory(_prepared(options), False, _GateFactory(factory))

    @classmethod
    def system(cls) -> PeerTLS:
        """
        The settings of a client that trusts the system's roots and shows
        no certificate: what C{tls:} endpoints are verified with by default.
        """
        if not _SYSTEM:
            _SYSTEM.append(cls())
        return _SYSTEM[0]

    def clientEndpoint(
        self, reactor: Any, description: str, record: PeerRecord
    ) -> IStreamClientEndpoint:
        """
        The endpoint for C{record}'s C{tls:} C{description}, verified
        against the record's own name.

        @raise ValueError: a malformed C{tls:} description.
        """
        host, port = parseTLSDescription(description)
        expected = certificateName(record.name, record.namespace)
        return PeerTLSClientEndpoint(reactor, host, port, expected, self)

    def clientCreator(self, expected: str) -> IOpenSSLClientConnectionCreator:
        """
        Client connections that accept only a certificate for C{expected}
        (a L{certificateName}) signed by C{authorities}.
        """
        if self._clientOptions is None:
            trust: Any = platformTrust()
            if self.authorities:
                trust = trustRootFromCertificates(
                    [Certificate(crypto.X509.from_cryptography(c)) for c in self.authorities]
                )
            self._clientOptions = _prepared(CertificateOptions(trustRoot=trust, **self._pair()))
        return VerifyingCreator(
            self._clientOptions,
            lambda certificate: checkCertificateName(certificate, expected),
            lambda problem: PeerTLSError(f"TLS peer {expected!r} refused: {problem}"),
            self.trustSource,
            serverName=expected,
        )


_SYSTEM: list[PeerTLS] = []


class _TLSFactory(TLSMemoryBIOFactory):
    """
    TLS whose writes reach OpenSSL at once. Twisted's default transport
    holds small writes until the next reactor turn, and drops them if the
    peer's close_notify arrives first: a server answering a request that
    came with the client's close would lose the answer.
    """
    noisy = False  # one per connection: no "Starting factory" lines

    protocol = TLSMemoryBIOProtocol


def _prepared(options: CertificateOptions) -> CertificateOptions:
    """
    C{options} with its OpenSSL context made now, once, rather than at the
    first connection: without pyOpenSSL's warnings about the objects that
    Twisted's C{CertificateOptions} requires.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Passing pyOpenSSL", DeprecationWarning)
        options.getContext()
    return options


def tlsFromOptions(
    kwargs: Mapping[str, str], server: bool, spelling: Spelling = OPTIONS
) -> PeerTLS | None:
    """
    The L{PeerTLS} that endpoint-string options ask for: C{cert}, C{key},
    C{ca}, and on clients C{tls=true}; C{None} when they ask for none.

    @param spelling: how messages name the options: L{txmasse.pem.FLAGS}
        where they came from a command line.
    @raise ValueError: naming the bad option.
    """
    name = spelling.name
    cert, key, ca = kwargs.get("cert"), kwargs.get("key"), kwargs.get("ca")
    flag = kwargs.get("tls")
    if flag is not None:
        if flag.lower() not in ("true", "yes", "1", "false", "no", "0"):
            raise ValueError(f"tls={flag!r}: must be true or false")
        if flag.lower() in ("false", "no", "0"):
            if cert or key or ca:
                raise ValueError("tls=false contradicts cert=, key= and ca=")
            return None
    for option, value in (("cert", cert), ("key", key), ("ca", ca)):
        if value is not None and not value:
            raise ValueError(f"{name(option)} is empty: give a PEM file")
    if server and cert is None and (key is not None or ca is not None):
        raise ValueError(
            f"{name('key')} and {name('ca')} need {name('cert')}"
            " (a TLS server needs its own certificate)"
        )
    if flag is None and cert is None and key is None and ca is None:
        return None
    return PeerTLS.fromFiles(cert=cert, key=key, ca=ca, spelling=spelling)


# Holding the application back until the handshake is done


@implementer(IHandshakeListener)
class _Gate(ProtocolWrapper):
    """
    Between TLS and the application: the application is connected only
    when the handshake is over and the peer's certificate accepted, so it
    never talks to an unverified peer (TLS itself connects it at once).
    """

    factory: _GateFactory
    _open = False

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        problem = self.factory.check(transport)
        if problem is not None:
            self.factory.refused(PeerTLSError(problem))
            transport.abortConnection()
            return
        self._open = True
        this: Any = self
        self.wrappedProtocol.makeConnection(this)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        self.factory.opened(self.wrappedProtocol)

    def dataReceived(self, data: bytes) -> None:
        if self._open:
            self.wrappedProtocol.dataReceived(data)

    def loseWriteConnection(self) -> None:
        """
        End this side only, as TCP's half-close does: send TLS's
        close_notify, and go on reading until the peer closes too.

        Twisted's TLS has no half-close: the TCP one underneath (which a
        wrapper would otherwise reach) cuts the TLS session short, and
        C{loseConnection} discards the peer's answer.
        """
        tls: Any = self.transport
        if tls.disconnecting or getattr(tls, "_appSendBuffer", None):
            tls.loseConnection()  # writes still queued: closes once they are out
            return
        connection = tls.getHandle()
        try:
            connection.shutdown()
            alert = connection.bio_read(2**15)
        except SSL.Error:
            tls.loseConnection()
            return
        tls.transport.write(alert)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._open:
            if isinstance(reason.value, SSL.Error):
                # TLS 1.3: a server refuses a client's certificate only
                # after the client's side of the handshake is done.
                reason = Failure(_tlsError(self.factory.peer, reason.value, "TLS"))
            super().connectionLost(reason)
            return
        self.factory.unregisterProtocol(self)
        error = reason.value if reason.value is not None else ConnectionClosed()
        self.factory.refused(error, self.getPeer())


class _GateFactory(WrappingFactory):
    """
    Builds L{_Gate}s. C{check} returns why a finished handshake's peer is
    refused, or C{None}; C{ready} (clients) fires with the application's
    protocol, or fails with why it never got connected. C{peer} names the
    other side in errors.
    """
    noisy = False  # one per connection: no "Starting factory" lines

    protocol = _Gate

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        check: Callable[[Any], str | None] = lambda transport: None,
        ready: Deferred[IProtocol] | None = None,
        peer: str = "a client",
    ):
        super().__init__(wrappedFactory)
        self.check = check
        self.ready = ready
        self.peer = peer

    def opened(self, protocol: IProtocol) -> None:
        if self.ready is not None and not self.ready.called:
            self.ready.callback(protocol)

    def refused(self, error: BaseException, address: object = None) -> None:
        error = _handshakeError(self.peer, error)
        if self.ready is None:
            log.info(
                "TLS connection from {address} refused: {error}",
                address=str(address),
                error=str(error),
            )
        elif not self.ready.called:
            self.ready.errback(Failure(error))


# The client


def _tlsError(peer: str, error: SSL.Error, what: str) -> PeerTLSError:
    """
    OpenSSL's error list, as one line naming the peer.
    """
    parts = error.args[0] if error.args and isinstance(error.args[0], list) else []
    why = "; ".join(str(part[-1]) for part in parts if part and part[-1]) or "TLS error"
    return PeerTLSError(f"{what} with {peer} failed: {why}")


def _handshakeError(peer: str, error: BaseException) -> BaseException:
    """
    What to report when a TLS connection with C{peer} ended before it was
    usable.
    """
    if isinstance(error, PeerTLSError):
        return error
    if isinstance(error, SSL.Error):
        return _tlsError(peer, error, "TLS handshake")
    if isinstance(error, ConnectionClosed):
        return PeerTLSError(f"TLS handshake with {peer} failed: the connection closed ({error})")
    return error


def _checkPeer(expected: str) -> Callable[[Any], str | None]:
    def check(transport: Any) -> str | None:
        peer = transport.getPeerCertificate()
        if peer is None:
            return f"TLS peer {expected!r} refused: it sent no certificate"
        problem = checkCertificateName(peer.to_cryptography(), expected)
        return None if problem is None else f"TLS peer {expected!r} refused: {problem}"

    return check


@implementer(IStreamClientEndpoint)
@attrs.frozen
class PeerTLSClientEndpoint:
    """
    TLS over TCP to C{host}:C{port}, accepting only a certificate for the
    peer name C{expected} (a L{certificateName}); C{connect()} fires once
    the handshake is over and the certificate accepted.
    """

    reactor: Any
    host: str
    port: int
    expected: str
    tls: PeerTLS

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        gate: _GateFactory

        def abort(_: object) -> None:
            for protocol in list(gate.protocols):
                protocol.transport.abortConnection()

        ready: Deferred[IProtocol] = Deferred(abort)
        gate = _GateFactory(protocolFactory, _checkPeer(self.expected), ready, repr(self.expected))
        tls = _TLSFactory(self.tls.clientCreator(self.expected), True, gate)
        tcp = tcpEndpoint(self.reactor, self.host, self.port)
        return Deferred.fromCoroutine(self._connect(tcp, tls, ready))

    async def _connect(
        self, tcp: IStreamClientEndpoint, tls: TLSMemoryBIOFactory, ready: Deferred[IProtocol]
    ) -> IProtocol:
        await tcp.connect(tls)
        return await ready


# Descriptions in records

_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")


def parseTLSDescription(description: str) -> tuple[str, int]:
    """
    The host and port of C{tls:host=H:port=P} (or C{tls:H:P}).

    @raise ValueError: naming what is wrong with it.
    """
    try:
        prefix, positional, options = parseDescription(description)
    except ValueError as e:
        raise ValueError(f"{description!r}: give host= and port= once each ({e})") from None
    if prefix != "tls":
        raise ValueError(f"{description!r}: not a tls: description")
    unknown = set(options) - {"host", "port"}
    if unknown:
        raise ValueError(f"{description!r}: unknown option {sorted(unknown)[0]!r}")
    given = len(positional) + len(options)
    for key, value in zip(("host", "port"), positional, strict=False):
        options.setdefault(key, value)
    if len(positional) > 2 or given != len(options):
        raise ValueError(f"{description!r}: give host= and port= once each")
    host, port = options.get("host", ""), options.get("port", "")
    if not (isIPAddress(host) or isIPv6Address(host) or _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{description!r}: bad host {host!r}")
    if not isDigits(port) or not 0 < int(port) < 65536:
        raise ValueError(f"{description!r}: bad port {port!r}")
    return host, int(port)
