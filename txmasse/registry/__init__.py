"""
Registries: where names are mapped to live instances.

The interface every registry offers (L{IRegistry}), opening one by URL
(L{registryFromURL}), and the in-memory registry. Backends load on first
use: C{SQLiteRegistry} is importable from here, but imported only when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txmasse.registry.interface import (
    MAX_TTL,
    MIN_TTL,
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    PeerEvent,
    StaleRecords,
)
from txmasse.registry.memory import MemoryRegistry
from txmasse.registry.opening import registryFromURL
from txmasse.registry.url import defaultNamespace, defaultRegistryURL, parseRegistryURL

if TYPE_CHECKING:
    from txmasse.registry.sqlite import SQLiteRegistry


def __getattr__(name: str) -> Any:
    if name == "SQLiteRegistry":
        from txmasse.registry.sqlite import SQLiteRegistry

        return SQLiteRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_TTL",
    "MIN_TTL",
    "EventKind",
    "ILease",
    "IRegistry",
    "ISubscription",
    "LeaseStatus",
    "MemoryRegistry",
    "PeerEvent",
    "SQLiteRegistry",
    "StaleRecords",
    "defaultNamespace",
    "defaultRegistryURL",
    "parseRegistryURL",
    "registryFromURL",
]
