"""
The errors txmasse raises: one base class so callers can catch them all.
"""


class MasseError(Exception):
    """
    Base class of every error txmasse raises on purpose.
    """


class PeerNotFound(MasseError):
    """
    No live instance is registered under the name (or pattern) asked for.
    """


class NoReachablePeer(MasseError):
    """
    Instances were found, but every attempt to connect to them failed.
    """


class RegistryUnavailable(MasseError):
    """
    The registry did not answer in time, refused us, or cannot be reached.

    The message names the registry by its URL, without any password.
    """
