"""
Verified TLS to a Redis server (or a sentinel) that really names its host.

The chain must end at C{ca=} (else the system's trust roots), and the
certificate must name the host in its subjectAltName (RFC 6125), checked
by L{txmasse.verify}'s fail-closed callback: Twisted's own, through
service-identity, only logs a certificate without subjectAltName and lets
the connection through.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from cryptography import x509
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from txmasse.pem import loadCertificates, loadPrivateKey, publicBytes, readPEM
from txmasse.registry.url import RegistryURL
from txmasse.verify import VerifyingCreator


class CertificateRefused(ConnectionError):
    """
    The server's certificate does not chain to a trusted CA, or does not
    name the host we connected to.
    """


def _hostCheck(host: str) -> Callable[[x509.Certificate], str | None]:
    def check(certificate: x509.Certificate) -> str | None:
        try:
            if isIPAddress(host) or isIPv6Address(host):
                verify_certificate_ip_address(certificate, host)
            else:
                verify_certificate_hostname(certificate, host)
        except Exception as e:  # VerificationError, CertificateError (no SAN), garbage
            return str(e)
        return None

    return check


def redisTLS(parsed: RegistryURL) -> Callable[[str], IOpenSSLClientConnectionCreator]:
    """
    Verified TLS for C{parsed}'s servers: files are read once, here; the
    result makes the connection creator for one host.

    @raise ValueError: naming the option and file when one cannot be read,
        holds no PEM certificate or key, or the key does not match.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    def bad(why: object) -> ValueError:
        return ValueError(f"registry URL {parsed.display!r}: {why}")

    def certificate(path: str, what: str) -> x509.Certificate:
        try:
            return loadCertificates(what, path, readPEM(what, path))[0]
        except ValueError as e:
            raise bad(e) from None

    trustRoot: Any = ssl.platformTrust()
    trustSource = "the system trust roots (give ca=)"
    if parsed.ca:
        trustRoot = ssl.Certificate(crypto.X509.from_cryptography(certificate(parsed.ca, "ca")))
        trustSource = f"ca={parsed.ca}"
    pair: dict[str, Any] = {}
    if parsed.cert and parsed.key:
        leaf = certificate(parsed.cert, "cert")
        try:
            key = loadPrivateKey("key", parsed.key, readPEM("key", parsed.key))
        except ValueError as e:
            raise bad(e) from None
        if key is None:
            raise bad(f"key={parsed.key}: no PEM private key in it")
        if publicBytes(leaf.public_key()) != publicBytes(key.public_key()):
            raise bad(f"key={parsed.key} does not match the certificate in cert={parsed.cert}")
        pair = {
            "privateKey": crypto.PKey.from_cryptography_key(key),
            "certificate": crypto.X509.from_cryptography(leaf),
        }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Passing pyOpenSSL", DeprecationWarning)
        options = ssl.CertificateOptions(trustRoot=trustRoot, **pair)
        options.getContext()

    def forHost(host: str) -> IOpenSSLClientConnectionCreator:
        def refuse(problem: str) -> Exception:
            return CertificateRefused(f"certificate verify failed for {host!r}: {problem}")

        return VerifyingCreator(
            options,
            _hostCheck(host),
            refuse,
            trustSource,
            serverName=host,
        )

    return forHost
