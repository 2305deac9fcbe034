"""
Where a record's endpoints point, as DNS can say it: the host and port of
its C{tcp:} and C{tls:} descriptions; and which records DNS answers with.
"""

from __future__ import annotations

import ipaddress

import attrs

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


def splitDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    The prefix, positional arguments and keyword arguments of an endpoint
    description, in Twisted's grammar: C{:} separates, C{\\} escapes the
    next character, the first unescaped C{=} of a part makes it a keyword.

    @raise ValueError: for a trailing lone C{\\} or a keyword given twice.
    """
    parts: list[list[tuple[str, bool]]] = [[]]
    escaped = False
    for char in description:
        if escaped:
            parts[-1].append((char, True))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append([])
        else:
            parts[-1].append((char, False))
    if escaped:
        raise ValueError(f"{description!r}: ends with a lone '\\'")
    prefix = "".join(c for c, _ in parts[0])
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        split = next((i for i, (c, quoted) in enumerate(part) if c == "=" and not quoted), None)
        if split is None:
            positional.append("".join(c for c, _ in part))
            continue
        key = "".join(c for c, _ in part[:split])
        if key in keywords:
            raise ValueError(f"{description!r}: {key}= given twice")
        keywords[key] = "".join(c for c, _ in part[split + 1 :])
    return prefix, positional, keywords


def hostPort(description: str) -> HostPort | None:
    """
    The host and port of a C{tcp:} or C{tls:} description (C{tcp:H:P} or
    C{tcp:host=H:port=P}, in any order, with other options); L{None} for
    any other transport.

    @raise ValueError: a stream description without a usable host or port.
    """
    prefix, positional, keywords = splitDescription(description)
    if prefix.lower() not in STREAM_TRANSPORTS:
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
    Whether DNS may hand out this instance. Every live instance, today;
    the one place to leave out C{critical} and draining instances once
    records say so.
    """
    return True
