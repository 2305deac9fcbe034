"""
Registries: where names are mapped to live instances.
"""

from txmasse.registry.interface import (
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    PeerEvent,
    StaleRecords,
)
from txmasse.registry.memory import MemoryRegistry
from txmasse.registry.sqlite import SQLiteRegistry
from txmasse.registry.url import (
    defaultNamespace,
    defaultRegistryURL,
    parseRegistryURL,
    registryFromURL,
)

__all__ = [
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
