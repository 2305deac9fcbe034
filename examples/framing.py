"""
A custom wrapper stack: length-prefixed framing under a line protocol.

The wrapper sits between the wire and the application on both sides, so the
application speaks lines while every write travels as one 4-byte-length
frame. Run a shouting server and talk to it by name:

    python -m examples.framing serve &
    python -m examples.framing send hello world     # prints: HELLO, WORLD
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from txmasse import MasseClientEndpoint, MasseServerEndpoint

MAX_FRAME = 64 * 1024


class _Framed(ProtocolWrapper):
    """
    Sends each write as a frame; delivers each received frame whole.
    """

    transport: Any

    def __init__(self, factory: Any, wrappedProtocol: Any):
        super().__init__(factory, wrappedProtocol)
        self._received = b""

    def write(self, data: bytes) -> None:
        self.transport.write(struct.pack("!I", len(data)) + data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        while len(self._received) >= 4:
            (size,) = struct.unpack("!I", self._received[:4])
            if size > MAX_FRAME:
                self.transport.loseConnection()
                return
            if len(self._received) < 4 + size:
                return
            frame, self._received = self._received[4 : 4 + size], self._received[4 + size :]
            self.wrappedProtocol.dataReceived(frame)


class LengthPrefixed(WrappingFactory):
    """
    The wrapper: any protocol factory in, a framing one out.
    """

    protocol = _Framed


STACK = [LengthPrefixed]


class Shout(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.upper())


class Ask(LineReceiver):
    def __init__(self) -> None:
        self.answer: Deferred[bytes] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.answer.callback(line)


async def serve(reactor: Any) -> None:
    endpoint = MasseServerEndpoint(reactor, "shouter", wrappers=STACK)
    port = await endpoint.listen(Factory.forProtocol(Shout))
    print(f"shouter is listening on {port.getHost()}", flush=True)
    await Deferred()


async def send(reactor: Any, words: list[str]) -> None:
    endpoint = MasseClientEndpoint(reactor, "shouter", wrappers=STACK, timeout=10)
    protocol: Any = await endpoint.connect(Factory.forProtocol(Ask))
    protocol.sendLine(", ".join(words).encode())
    print((await protocol.answer).decode())
    protocol.transport.loseConnection()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))
    elif sys.argv[1:2] == ["send"] and len(sys.argv) > 2:
        task.react(lambda reactor: Deferred.fromCoroutine(send(reactor, sys.argv[2:])))
    else:
        sys.exit("usage: python -m examples.framing serve | send WORDS...")
