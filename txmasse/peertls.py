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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
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
from txmasse.errors import MasseError
from txmasse.records import PeerRecord

log = Logger()

SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)

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


# Reading PEM files


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}={path}: cannot read it ({e.strerror or e})") from None


def _certificates(option: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{option}={path}: no PEM certificate in it") from None


_KEY_BLOCK = re.compile(rb"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def _privateKey(option: str, path: str, data: bytes) -> SigningKey | None:
    """
    The first PEM private key in C{data}, or L{None} if it has none.
    """
    block = _KEY_BLOCK.search(data)
    if block is None:
        return None
    try:
        key = serialization.load_pem_private_key(block.group(0), password=None)
    except TypeError:
        raise ValueError(f"{option}={path}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{option}={path}: the PEM private key in it is unreadable") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise ValueError(f"{option}={path}: a {type(key).__name__} cannot sign for TLS")
    return key


def _publicBytes(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# What a certificate is for


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "an empty subject"


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def describeCertificate(certificate: x509.Certificate) -> str:
    """
    Whom C{certificate} names, for error messages: its subjectAltNames, or
    its subject when it has none.
    """
    try:
        sans = _sans(certificate)
    except ValueError as e:
        return f"{_subject(certificate)!r} (unreadable extensions: {e})"
    if sans is None:
        return f"{_subject(certificate)!r} (no subjectAltName)"
    names = [str(name) for name in sans.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    return ", ".join(repr(name) for name in names) if names else "no DNS name"


def checkCertificateName(certificate: x509.Certificate, expected: str) -> str | None:
    """
    Why C{certificate} is not for the peer C{expected} (a
    L{certificateName}), or L{None} if it is.

    Only subjectAltName DNS names count, compared without case; the common
    name never does, and wildcards are not honoured: one certificate
    vouches for exactly the peer names it lists.
    """
    try:
        sans = _sans(certificate)
    except ValueError as e:
        return f"its certificate's extensions are unreadable ({e})"
    if sans is None:
        return (
            f"its certificate ({_subject(certificate)!r}) has no subjectAltName; "
            f"it must list the DNS name {expected!r}"
        )
    for name in sans.get_values_for_type(x509.DNSName):
        if name.lower() == expected:
            return None
    return f"its certificate is for {describeCertificate(certificate)}, not {expected!r}"


# OpenSSL verification errors worth a word (X509_V_ERR_*)

_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _verifyError(code: int) -> str:
    return _VERIFY_ERRORS.get(code, f"OpenSSL verify error {code}")


_SNI_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _sniName(expected: str) -> bytes | None:
    """
    C{expected} as a server name to send, if it is a valid host name.
    """
    labels = expected.split(".")
    if len(expected) > 253 or not all(_SNI_LABEL.fullmatch(label) for label in labels):
        return None
    return expected.encode("ascii")


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
            and _publicBytes(self.key.public_key()) != _publicBytes(self.certificate.public_key())
        ):
            raise ValueError("TLS: the key does not match the certificate")
        if not self.authorities:
            self.trustSource = SYSTEM_TRUST

    @classmethod
    def fromFiles(
        cls, cert: str | None = None, key: str | None = None, ca: str | None = None
    ) -> PeerTLS:
        """
        Load PEM files: C{cert} (this side's certificate, then any
        intermediates, and its key unless C{key} is given) and C{ca} (CA
        certificates to trust).

        @raise ValueError: naming the option and file at fault.
        """
        certificates: list[x509.Certificate] = []
        privateKey = None
        if key is not None and cert is None:
            raise ValueError(f"key={key}: give cert= too")
        if cert is not None:
            data = _read("cert", cert)
            certificates = _certificates("cert", cert, data)
            if key is None:
                privateKey = _privateKey("cert", cert, data)
                if privateKey is None:
                    raise ValueError(f"cert={cert}: no private key in it; give key=")
            else:
                privateKey = _privateKey("key", key, _read("key", key))
                if privateKey is None:
                    raise ValueError(f"key={key}: no PEM private key in it")
            if _publicBytes(privateKey.public_key()) != _publicBytes(certificates[0].public_key()):
                where = f"key={key}" if key is not None else f"the key in cert={cert}"
                raise ValueError(f"{where} does not match the certificate in cert={cert}")
        authorities = _certificates("ca", ca, _read("ca", ca)) if ca is not None else []
        return cls(
            certificate=certificates[0] if certificates else None,
            key=privateKey,
            chain=certificates[1:],
            authorities=authorities,
            trustSource=f"ca={ca}",
        )

    def _pair(self) -> dict[str, Any]:
        if self.certificate is None or self.key is None:
            return {}
        return {
            "privateKey": crypto.PKey.from_cryptography_key(self.key),
            "certificate": crypto.X509.from_cryptography(self.certificate),
            "extraCertChain": [crypto.X509.from_cryptography(c) for c in self.chain],
        }

    def checkServes(self, name: str, namespace: str) -> None:
        """
        Refuse to serve C{name} with a certificate every client would refuse.

        @raise ValueError: the certificate is missing or names another peer.
        """
        if self.certificate is None:
            raise ValueError("a TLS server needs cert= (its certificate and key)")
        problem = checkCertificateName(self.certificate, certificateName(name, namespace))
        if problem is not None:
            raise ValueError(f"cert: clients of {name!r} would refuse it: {problem}")

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
        return _NameBoundCreator(self._clientOptions, expected, self.trustSource)


class _TLSFactory(TLSMemoryBIOFactory):
    """
    TLS whose writes reach OpenSSL at once. Twisted's default transport
    holds small writes until the next reactor turn, and drops them if the
    peer's close_notify arrives first: a server answering a request that
    came with the client's close would lose the answer.
    """

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


def tlsFromOptions(kwargs: Mapping[str, str], server: bool) -> PeerTLS | None:
    """
    The L{PeerTLS} that endpoint-string options ask for: C{cert}, C{key},
    C{ca}, and on clients C{tls=true}; L{None} when they ask for none.

    @raise ValueError: naming the bad option.
    """
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
            raise ValueError(f"{option}= is empty: give a PEM file")
    if server and cert is None and (key is not None or ca is not None):
        raise ValueError("key= and ca= need cert= (a TLS server needs its own certificate)")
    if flag is None and cert is None and key is None and ca is None:
        return None
    return PeerTLS.fromFiles(cert=cert, key=key, ca=ca)


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
    refused, or L{None}; C{ready} (clients) fires with the application's
    protocol, or fails with why it never got connected. C{peer} names the
    other side in errors.
    """

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


class _Verifier:
    """
    OpenSSL's verify callback for one connection: the chain must end at a
    trusted CA, and the peer's certificate name the expected peer.

    Twisted's own callback only logs a certificate without
    subjectAltName, and accepts it; this one refuses it.
    """

    def __init__(self, tlsProtocol: TLSMemoryBIOProtocol, expected: str, trustSource: str):
        self._protocol: TLSMemoryBIOProtocol | None = tlsProtocol
        self._expected = expected
        self._trustSource = trustSource

    def __call__(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        if self._protocol is None:
            return False  # refused already
        try:
            problem = None
            if not ok:
                problem = self._untrusted(connection, certificate, error, depth)
            elif depth == 0:
                problem = checkCertificateName(certificate.to_cryptography(), self._expected)
        except Exception as e:
            problem = f"its certificate could not be checked ({e})"
        if problem is None:
            return True
        protocol, self._protocol = self._protocol, None
        protocol.failVerification(Failure(_refused(self._expected, problem)))
        return False

    def _untrusted(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int
    ) -> str:
        current = certificate.to_cryptography()
        peer = connection.get_peer_certificate()
        leaf = current if depth == 0 or peer is None else peer.to_cryptography()
        at = "" if depth == 0 else f" at {_subject(current)!r}"
        return (
            f"its certificate for {describeCertificate(leaf)} is not signed by "
            f"{self._trustSource} ({_verifyError(error)}{at}; "
            f"issuer {current.issuer.rfc4514_string()!r})"
        )


def _refused(expected: str, problem: str) -> PeerTLSError:
    return PeerTLSError(f"TLS peer {expected!r} refused: {problem}")


@implementer(IOpenSSLClientConnectionCreator)
class _NameBoundCreator:
    """
    Client TLS connections bound to one peer name, with our own
    verification in place of Twisted's.
    """

    def __init__(self, options: CertificateOptions, expected: str, trustSource: str):
        self._options = options
        self._expected = expected
        self._trustSource = trustSource

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        server = _sniName(self._expected)
        if server is not None:
            connection.set_tlsext_host_name(server)
        verifier = _Verifier(tlsProtocol, self._expected, self._trustSource)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verifier)
        return connection


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


def _split(description: str) -> list[str]:
    """
    Split an endpoint description on C{:}, honouring C{\\} escapes.
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ValueError(f"{description!r}: ends with a lone '\\'")
    parts.append("".join(current))
    return parts


def parseTLSDescription(description: str) -> tuple[str, int]:
    """
    The host and port of C{tls:host=H:port=P} (or C{tls:H:P}).

    @raise ValueError: naming what is wrong with it.
    """
    prefix, *parts = _split(description)
    if prefix.lower() != "tls":
        raise ValueError(f"{description!r}: not a tls: description")
    positional = [part for part in parts if "=" not in part]
    options = dict(part.split("=", 1) for part in parts if "=" in part)
    unknown = set(options) - {"host", "port"}
    if unknown:
        raise ValueError(f"{description!r}: unknown option {sorted(unknown)[0]!r}")
    for key, value in zip(("host", "port"), positional, strict=False):
        options.setdefault(key, value)
    if len(positional) > 2 or len(parts) != len(options):
        raise ValueError(f"{description!r}: give host= and port= once each")
    host, port = options.get("host", ""), options.get("port", "")
    if not (isIPAddress(host) or isIPv6Address(host) or _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{description!r}: bad host {host!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{description!r}: bad port {port!r}")
    return host, int(port)


_SYSTEM: list[PeerTLS] = []


def _systemTLS() -> PeerTLS:
    if not _SYSTEM:
        _SYSTEM.append(PeerTLS())
    return _SYSTEM[0]


def peerClientEndpoint(
    reactor: Any, description: str, record: PeerRecord, tls: PeerTLS | None
) -> IStreamClientEndpoint:
    """
    The endpoint for one of C{record}'s descriptions. A C{tls:} one is
    verified against the record's own name (with C{tls}, else the system
    trust roots); with C{tls} given, anything else is refused.

    @raise PeerTLSError: a plain description for a client that needs TLS.
    @raise ValueError: a malformed C{tls:} description.
    """
    transport = description.partition(":")[0].lower()
    if transport != "tls":
        if tls is not None:
            raise PeerTLSError(
                f"refused: not TLS, and this client requires TLS to "
                f"{certificateName(record.name, record.namespace)!r}"
            )
        endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
        return endpoint
    host, port = parseTLSDescription(description)
    return PeerTLSClientEndpoint(
        reactor,
        host,
        port,
        certificateName(record.name, record.namespace),
        _systemTLS() if tls is None else tls,
    )
