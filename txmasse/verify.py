"""
One fail-closed certificate check for every TLS client txmasse makes (to
peers and to Redis): the chain must end at a trusted CA and the leaf must
name what we meant to reach, in its subjectAltName.

Twisted's own verify callback (through service-identity) only logs a
certificate without subjectAltName and lets the connection through; the
check here refuses it, and says in one line why.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer


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
    L{certificateName}), or C{None} if it is.

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


def sniName(expected: str) -> bytes | None:
    """
    C{expected} as a server name to send, if it is a valid host name.
    """
    labels = expected.split(".")
    if len(expected) > 253 or not all(_SNI_LABEL.fullmatch(label) for label in labels):
        return None
    return expected.encode("ascii")


class _Verifier:
    """
    OpenSSL's verify callback for one connection: refuses an untrusted
    chain, and a leaf that C{check} finds fault with.
    """

    def __init__(
        self,
        tlsProtocol: TLSMemoryBIOProtocol,
        check: Callable[[x509.Certificate], str | None],
        refuse: Callable[[str], Exception],
        trustSource: str,
    ):
        self._protocol: TLSMemoryBIOProtocol | None = tlsProtocol
        self._check = check
        self._refuse = refuse
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
                problem = self._check(certificate.to_cryptography())
        except Exception as e:
            problem = f"its certificate could not be checked ({e})"
        if problem is None:
            return True
        protocol, self._protocol = self._protocol, None
        protocol.failVerification(Failure(self._refuse(problem)))
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


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingCreator:
    """
    Client TLS connections made with C{options} (trust roots, a client
    certificate), verified by our own callback in place of Twisted's.

    @param check: why a leaf certificate is not the one wanted, or C{None}.
    @param refuse: the error to fail the connection with, given the problem.
    @param trustSource: how messages name the trusted CAs.
    @param serverName: sent as SNI, if it is a valid host name.
    """

    def __init__(
        self,
        options: CertificateOptions,
        check: Callable[[x509.Certificate], str | None],
        refuse: Callable[[str], Exception],
        trustSource: str,
        serverName: str | None = None,
    ):
        self._options = options
        self._check = check
        self._refuse = refuse
        self._trustSource = trustSource
        self._serverName = None if serverName is None else sniName(serverName)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        verifier = _Verifier(tlsProtocol, self._check, self._refuse, self._trustSource)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verifier)
        return connection
