"""
Opening registries: from a URL to a registry object, one per URL per
process, shared by every endpoint, group and service that names it.

Each backend builds itself from its parsed URL (C{fromURL}); this module
only picks the backend by scheme, importing it on first use (Redis's client
library imports the global reactor: keep it out of start-up), and signs
records where a secrets file is named.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime

from txmasse.registry.interface import IRegistry
from txmasse.registry.url import RegistryURL, defaultRegistryURL, parseRegistryURL

BACKENDS = {
    "memory": "txmasse.registry.memory:MemoryRegistry",
    "sqlite": "txmasse.registry.sqlite:SQLiteRegistry",
    "redis": "txmasse.registry.redis:RedisRegistry",
    "rediss": "txmasse.registry.redis:RedisRegistry",
    "redis+unix": "txmasse.registry.redis:RedisRegistry",
    "redis+sentinel": "txmasse.registry.redis:RedisRegistry",
    "rediss+sentinel": "txmasse.registry.redis:RedisRegistry",
}
"""Scheme to the backend class (C{module:name}) whose C{fromURL} opens it."""

_registries: dict[tuple[object, str], IRegistry] = {}


def registryFromURL(reactor: IReactorTime, url: str | None = None) -> IRegistry:
    """
    The registry at C{url} (default C{$MASSE_REGISTRY}, else
    C{redis://127.0.0.1:6379/0}), shared by every caller in this process
    until it is closed.

    @raise ValueError: if the URL is malformed, naming the bad part.
    """
    if url is None:
        url = defaultRegistryURL()
    key = (reactor, url)
    registry = _registries.get(key)
    if registry is None or registry.closed:
        registry = _registries[key] = openURL(reactor, parseRegistryURL(url))
    return registry


def openURL(reactor: IReactorTime, parsed: RegistryURL) -> IRegistry:
    """
    A new registry for C{parsed}, not shared: signing records where
    C{secrets=} or C{$MASSE_SECRETS} name a secrets file.
    """
    path = parsed.secrets or os.environ.get("MASSE_SECRETS")
    if not path:
        return openBackend(reactor, parsed)
    from txmasse.registry.signed import SignedRegistry, loadSecrets

    secrets = loadSecrets(path)  # first: a bad file leaves no connection behind
    return SignedRegistry(openBackend(reactor, parsed), secrets)


def openBackend(reactor: IReactorTime, parsed: RegistryURL) -> IRegistry:
    """
    The backend for C{parsed}'s scheme, built from the parsed URL.
    """
    where = BACKENDS.get(parsed.scheme)
    if where is None:  # parsing found its plugin already
        from txmasse.registry.plugins import schemePlugin

        backend: Any = schemePlugin(parsed.scheme)
    else:
        moduleName, _, className = where.partition(":")
        backend = getattr(importlib.import_module(moduleName), className)
    registry = backend.fromURL(reactor, parsed)
    if not IRegistry.providedBy(registry):
        raise ValueError(f"the {parsed.scheme}:// plugin opened {registry!r}, not an IRegistry")
    opened: IRegistry = registry
    return opened


def checkRegistry(registry: IRegistry | str | None) -> IRegistry | str:
    """
    What an endpoint, group or service was given as its registry, checked
    now: the registry object, or a URL (default C{$MASSE_REGISTRY}) to open
    at each use, so a registry closed meanwhile is opened again.

    @raise ValueError: a malformed URL (naming C{$MASSE_REGISTRY} when it
        came from there), or something that is neither.
    """
    if registry is None:
        url = defaultRegistryURL()
        try:
            parseRegistryURL(url)
        except ValueError as e:
            raise ValueError(f"$MASSE_REGISTRY: {e}") from None
        return url
    if isinstance(registry, str):
        parseRegistryURL(registry)
        return registry
    if not IRegistry.providedBy(registry):
        raise ValueError(f"registry must be a URL or an IRegistry, not {registry!r}")
    return registry


def openRegistry(reactor: Any, registry: IRegistry | str) -> IRegistry:
    """
    The registry a L{checkRegistry} result stands for, now.
    """
    return registryFromURL(reactor, registry) if isinstance(registry, str) else registry


def registryDisplay(registry: IRegistry | str) -> str:
    """
    How messages name a L{checkRegistry} result: its URL without password.
    """
    return parseRegistryURL(registry).display if isinstance(registry, str) else registry.url
