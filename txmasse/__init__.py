"""
txmasse: reach Twisted peers by name, not by address.
"""

from txmasse.errors import MasseError, NoReachablePeer, PeerNotFound, RegistryUnavailable
from txmasse.records import NAME_RULE, Glob, PeerRecord, validateName
from txmasse.registry import (
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    MemoryRegistry,
    PeerEvent,
    defaultNamespace,
    registryFromURL,
)

__version__ = "0.1.0"

__all__ = [
    "NAME_RULE",
    "EventKind",
    "Glob",
    "ILease",
    "IRegistry",
    "ISubscription",
    "MasseError",
    "MemoryRegistry",
    "NoReachablePeer",
    "PeerEvent",
    "PeerNotFound",
    "PeerRecord",
    "RegistryUnavailable",
    "defaultNamespace",
    "registryFromURL",
    "validateName",
]
