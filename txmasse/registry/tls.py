"""
Verified TLS to a Redis server (or a sentinel) that really names its host.

Twisted's C{optionsForClientTLS} checks the chain and the host, but when
service-identity cannot read a certificate's names (no subjectAltName) its
callback only logs the error and lets the connection through. Here the
host check fails closed: a certificate must name the host in its
subjectAltName (RFC 6125), or the connection is refused.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer


class CertificateRefused(ConnectionError):
    """
    The server's certificate chains to a trusted CA but does not name the
    host we connected to.
    """


@implementer(IOpenSSLClientConnectionCreator)
class HostVerifyingOptions:
    """
    C{options} (from C{optionsForClientTLS}, which checks the chain), with
    our own check that the server's certificate names C{host}.
    """

    def __init__(self, options: IOpenSSLClientConnectionCreator, host: str):
        self._options = options
        self._host = host

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        host = self._host

        def verify(_: SSL.Connection, leaf: crypto.X509, error: int, depth: int, ok: int) -> bool:
            if not ok or depth != 0:
                return bool(ok)
            try:
                certificate = leaf.to_cryptography()
                if isIPAddress(host) or isIPv6Address(host):
                    verify_certificate_ip_address(certificate, host)
                else:
                    verify_certificate_hostname(certificate, host)
            except Exception as e:  # VerificationError, CertificateError (no SAN), garbage
                tlsProtocol.failVerification(
                    Failure(CertificateRefused(f"certificate verify failed for {host!r}: {e}"))
                )
                return False
            return True

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


def verifiedOptions(host: str, trustRoot: Any, clientCertificate: Any) -> HostVerifyingOptions:
    """
    Client TLS options for C{host}: the chain must end at C{trustRoot} and
    the certificate name C{host}; C{clientCertificate} is shown if asked.
    """
    from twisted.internet import ssl

    options = ssl.optionsForClientTLS(
        host, trustRoot=trustRoot, clientCertificate=clientCertificate
    )
    return HostVerifyingOptions(options, host)
