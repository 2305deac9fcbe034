"""
How a call by name fails, beside the registry's and the endpoint's errors.
"""

from txmasse.errors import MasseError


class RPCError(MasseError):
    """
    A call by name could not be made or did not succeed.
    """


class NoProvider(RPCError):
    """
    No live instance that matches the URI publishes the command.
    """


class SchemaMismatch(RPCError):
    """
    A peer's answer does not fit the schema it published (the schema lies).
    """


class RemoteCallFailed(RPCError):
    """
    The peer answered with an error; the message is the peer's.
    """


class CallInterrupted(RPCError):
    """
    The connection was lost while a call was in flight. It is not retried:
    the peer may have run it.
    """


class ProxyUnavailable(RPCError):
    """
    A proxy found no connection within the call's deadline, or was stopped.
    """


class PublishedError(RPCError):
    """
    An error the peer answered with, under a code its schema publishes
    (C{code}); the message is the peer's. Each code gets a subclass, so
    that AMP maps the code back to it.
    """

    code = ""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
