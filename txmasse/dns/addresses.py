"""
Where a record's endpoints point, as DNS can say it: the host and port of
its C{tcp:} and C{tls:} descriptions; and which records DNS answers with.
"""

from __future__ import annotations

import ipaddress

import attrs

from txmasse.descriptions import parseDescription
from txmasse.records import PeerRecord

STREAM_TRANSPORTS = ("tcp", "tls")
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


@attrs.frozen
class HostPort:
    """
    One stream endpoint of a record: C{host} is an IP address (C{version}
    4 or 6) or a host name (C{version} 0).
    """

    host: str
    port: int
    version: int


def hostPort(description: str) -> HostPort | None:
    """
    The host and port of a C{tcp:} or C{tls:} description (C{tcp:H:P} or
    C{tcp:host=H:port=P}, in any order, with other options); C{None} for
    any other transport.

    @raise ValueError: a stream description without a usable host or port.
    """
    prefix, positional, keywords = parseDescription(description)
    if prefix not in STREAM_TRANSPORTS:
        return None
    for key, value in zip(("host", "port"), positional, strict=False):
        if key in keywords:
            raise ValueError(f"{description!r}: {key} given twice")
        keywords[key] = value
    host, port = keywords.get("host", ""), keywords.get("port", "")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{description!r}: bad port {port!r}")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        name = host.lower().removesuffix(".")
        if not name or len(name) > 253 or not set(name) <= _HOSTNAME_CHARS:
            raise ValueError(f"{description!r}: bad host {host!r}") from None
        if any(not 0 < len(label) < 64 for label in name.split(".")):
            raise ValueError(f"{description!r}: bad host {host!r}") from None
        return HostPort(name, int(port), 0)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{description!r}: an address with a zone ({host!r}) has no AAAA")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return HostPort(str(address.ipv4_mapped), int(port), 4)
    return HostPort(str(address), int(port), address.version)


def answerable(record: PeerRecord) -> bool:
    """
    Whether DNS may hand out this instance: as for a client endpoint, not
    one that is C{critical} or draining.
    """
    return record.usable
