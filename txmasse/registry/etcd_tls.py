"""
Verified TLS to etcd's gateway for C{etcds://}: the member's certificate
must chain to C{ca} (else the system's roots) and name the host it is
reached by; C{cert} and C{key} are shown to a cluster that asks for a
client certificate.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txmasse.registry.etcd_url import EtcdURL
from txmasse.registry.tls import verifiedOptions


@implementer(IPolicyForHTTPS)
class VerifiedPolicy:
    """
    What Agent asks for the TLS options of each member.
    """

    def __init__(self, trustRoot: Any, clientCertificate: Any):
        self._trustRoot = trustRoot
        self._clientCertificate = clientCertificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return verifiedOptions(hostname.decode("ascii"), self._trustRoot, self._clientCertificate)


def policyFor(parsed: EtcdURL) -> VerifiedPolicy:
    """
    The policy for C{parsed}, its files read once, here.

    @raise ValueError: naming the option and file that cannot be used.
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"registry URL {parsed.display!r}: {why}")

    def read(option: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read(1024 * 1024)
        except OSError as e:
            raise bad(f"{option}={path}: cannot be read ({e.strerror})") from None

    trustRoot: Any = ssl.platformTrust()
    if parsed.ca:
        pem = read("ca", parsed.ca)
        try:
            trustRoot = ssl.Certificate.loadPEM(pem)
        except Exception:
            raise bad(f"ca={parsed.ca}: no PEM certificate in it") from None
    clientCertificate = None
    if parsed.cert and parsed.key:
        certificate = read("cert", parsed.cert)
        key = read("key", parsed.key)
        try:
            ssl.Certificate.loadPEM(certificate)
        except Exception:
            raise bad(f"cert={parsed.cert}: no PEM certificate in it") from None
        try:
            clientCertificate = ssl.PrivateCertificate.loadPEM(certificate + b"\n" + key)
        except Exception:
            raise bad(f"key={parsed.key}: no PEM private key matching cert={parsed.cert}") from None
    return VerifiedPolicy(trustRoot, clientCertificate)
