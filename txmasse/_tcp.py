"""
TCP client endpoints that fail at once when refused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint


def tcpEndpoint(reactor: Any, host: str, port: int, timeout: float = 30) -> IStreamClientEndpoint:
    """
    A TCP endpoint to C{host}: direct for an IP address, else through name
    resolution (L{HostnameEndpoint}). HostnameEndpoint reports a refused
    connection only when its next attempt would be due, 0.3 s later, even
    with one address: that is how long a dead peer or registry would take
    to notice.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)
