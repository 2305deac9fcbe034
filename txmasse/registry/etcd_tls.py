"""
Verified TLS to etcd's gateway for C{etcds://}: the member's certificate
must chain to C{ca} (else the system's roots) and name the host it is
reached by; C{cert} and C{key} are shown to a cluster that asks for a
client certificate. The checks are the Redis registry's
(L{txmasse.registry.tls}), fed from the etcd URL.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txmasse.registry.etcd_url import EtcdURL
from txmasse.registry.tls import redisTLS
from txmasse.registry.url import RegistryURL


@implementer(IPolicyForHTTPS)
class VerifiedPolicy:
    """
    What Agent asks for the TLS options of each member.
    """

    def __init__(self, forHost: Callable[[str], IOpenSSLClientConnectionCreator]):
        self._forHost = forHost

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return self._forHost(hostname.decode("ascii"))


def policyFor(parsed: EtcdURL) -> VerifiedPolicy:
    """
    The policy for C{parsed}, its files read once, here.

    @raise ValueError: naming the option and file that cannot be used.
    """
    files = RegistryURL(
        parsed.scheme, parsed.display, ca=parsed.ca, cert=parsed.cert, key=parsed.key
    )
    return VerifiedPolicy(redisTLS(files))
