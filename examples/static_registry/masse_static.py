"""
A registry plugin, small and complete: C{static:///PATH/peers.json}.

The peers listed in a JSON file (a list of C{{"namespace", "name",
"endpoints", "metadata"}} objects), like C{/etc/hosts} for names: for
peers that run where no registry can reach, or for a first deployment
before Redis. What this process registers itself is kept beside them, in
memory. Installed, it adds the C{static} scheme everywhere txmasse takes a
registry URL (docs/writing-a-registry.md walks through it)::

    pip install examples/static_registry
    masse --registry static:///etc/masse/peers.json ls
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from txmasse.records import PeerRecord
from txmasse.registry import MAX_TTL, MemoryRegistry
from txmasse.registry.plugins import IRegistryScheme
from txmasse.registry.url import RegistryURL, parseGenericURL

log = Logger()


class StaticRegistry(MemoryRegistry):
    """
    The file's peers, registered in memory for as long as the registry is
    open (their leases renew themselves), and this process's own.
    """

    def __init__(self, reactor: Any, parsed: RegistryURL):
        super().__init__(reactor)
        self.url = parsed.display
        for entry in _entries(parsed.path):
            try:
                record = PeerRecord(
                    entry["namespace"], entry["name"], entry["endpoints"], entry.get("metadata", {})
                )
            except (KeyError, TypeError, ValueError) as e:
                log.warn("{url}: skipped an entry: {error}", url=self.url, error=e)
                continue
            self.register(record, MAX_TTL)


def _entries(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except OSError as e:
        raise ValueError(f"static://{path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"static://{path}: not JSON ({e})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"static://{path}: must hold a list of peer objects")
    return entries


@implementer(IRegistryScheme)
class StaticScheme:
    """
    How txmasse reads C{static:} URLs and opens their registries.
    """

    scheme = "static"

    def parseURL(self, url: str) -> RegistryURL:
        parsed = parseGenericURL(url, needsHost=False)
        if parsed.host or not parsed.path.startswith("/"):
            raise ValueError(f"invalid registry URL {parsed.display!r}: use static:///ABSOLUTE/PATH")
        return parsed

    def fromURL(self, reactor: Any, parsed: RegistryURL) -> StaticRegistry:
        return StaticRegistry(reactor, parsed)


scheme = StaticScheme()
