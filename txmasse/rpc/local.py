"""
Calling a peer this process serves, in-process: the arguments and the answer
go through the command's AMP serialisation both ways, and errors are mapped
as AMP maps them, so a local call succeeds and fails as a remote one would,
without a socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from txmasse.rpc.errors import RPCError
from txmasse.rpc.publish import LocalPeer

log = Logger()


async def callLocal(
    peer: LocalPeer, command: type[amp.Command], arguments: Mapping[str, object]
) -> dict[str, Any]:
    """
    Run C{command} on a fresh protocol from C{peer}'s factory.

    @raise RPCError: if the factory is gone or its protocol has no
        responder for the command; otherwise what a remote call raises.
    """
    factory = peer.factory()
    if factory is None:
        raise RPCError("the local peer's factory is gone")
    protocol: Any = factory.buildProtocol(UNIXAddress(None))
    locate = getattr(protocol, "locateResponder", None)
    responder = None if locate is None else locate(command.commandName)
    if responder is None:
        raise RPCError(
            f"the local peer has no responder for {command.commandName.decode('ascii', 'replace')}"
        )
    command(**arguments)  # checks the signature, as callRemote does
    box = command.makeArguments(arguments, protocol)
    box.serialize()  # the size limits of the wire
    try:
        answer = await maybeDeferred(responder, box)
    except amp.RemoteAmpError as e:
        reverse: dict[bytes, type[Exception]] = getattr(command, "reverseErrors", {})
        errorType = reverse.get(e.errorCode, amp.UnknownRemoteError)
        raise errorType(e.description) from None
    except Exception:
        log.failure("while answering a local call", Failure())
        raise amp.UnknownRemoteError("Unknown Error") from None
    answer.serialize()
    result: dict[str, Any] = command.parseResponse(answer, protocol)
    return result
