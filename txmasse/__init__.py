"""
txmasse: reach Twisted peers by name, not by address.
"""

from txmasse.endpoints import MasseClientEndpoint, MasseListeningPort, MasseServerEndpoint
from txmasse.errors import MasseError, NoReachablePeer, PeerNotFound, RegistryUnavailable
from txmasse.group import PeerGroup
from txmasse.health import Health
from txmasse.records import NAME_RULE, Glob, PeerRecord, validateName
from txmasse.registry import (
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    MemoryRegistry,
    PeerEvent,
    StaleRecords,
    defaultNamespace,
    registryFromURL,
)
from txmasse.service import RegistryService
from txmasse.wrappers import IMasseWrapper

__version__ = "0.1.0"

__all__ = [
    "NAME_RULE",
    "EventKind",
    "Glob",
    "Health",
    "ILease",
    "IMasseWrapper",
    "IRegistry",
    "ISubscription",
    "MasseClientEndpoint",
    "MasseError",
    "MasseListeningPort",
    "MasseServerEndpoint",
    "MemoryRegistry",
    "NoReachablePeer",
    "PeerEvent",
    "PeerGroup",
    "PeerNotFound",
    "PeerRecord",
    "RegistryService",
    "RegistryUnavailable",
    "StaleRecords",
    "defaultNamespace",
    "registryFromURL",
    "validateName",
]
