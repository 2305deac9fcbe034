"""
The DNS server: Twisted Names' server factory and protocols, made strict.
Responses are never answered, garbage gets FORMERR (or silence when not
even its header is there), UDP answers that do not fit 512 bytes are
sent truncated for the client to ask again over TCP, and nothing a client
sends raises in the reactor.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from txmasse.dns.authority import Answer, MasseAuthority, NoSuchName, Refused
from txmasse.dns.views import Unavailable

log = Logger()

UDP_LIMIT = 512
TCP_LIMIT = 65535
TCP_IDLE = 10.0
"""Seconds a TCP client may stay silent before it is disconnected."""

REFUSED_TYPES = frozenset({dns.AXFR, dns.IXFR, dns.MAILA, dns.MAILB})
_HEADER = struct.Struct("!HBBHHHH")


class _Datagram(dns.DNSDatagramProtocol):
    """
    UDP: every datagram goes to the factory, whatever it holds.
    """

    controller: MasseDNSFactory

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.controller.packetReceived(data, self, addr)

    def writeBytes(self, data: bytes, address: Any) -> None:
        self.transport.write(data, address)


class _Stream(dns.DNSProtocol, TimeoutMixin):
    """
    TCP: length-prefixed messages; an idle client is disconnected.
    """

    controller: MasseDNSFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(TCP_IDLE)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.controller.packetReceived(data, self, None)

    def writeBytes(self, data: bytes, address: Any) -> None:
        self.sendString(data)


def _peer(protocol: Any) -> object:
    transport = getattr(protocol, "transport", None)
    return None if transport is None else transport.getPeer()


class MasseDNSFactory(DNSServerFactory):
    """
    Serves one L{MasseAuthority}, over UDP (L{udpProtocol}) and TCP.
    """

    protocol = _Stream

    def __init__(self, authority: MasseAuthority, clock: IReactorTime):
        super().__init__(authorities=[authority])
        self.authority = authority
        self.clock = clock
        self.garbage = 0
        self._loggedAt: float | None = None

    def udpProtocol(self) -> _Datagram:
        return _Datagram(self, self.clock)

    def packetReceived(self, data: bytes, protocol: Any, address: Any) -> None:
        """
        Parse one message; reply FORMERR to a query we cannot read.
        """
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception as e:
            self._garbage(data, protocol, address, e)
            return
        try:
            self.messageReceived(message, protocol, address)
        except Exception:
            log.failure("masse dns: handling a query failed")

    def _garbage(self, data: bytes, protocol: Any, address: Any, error: Exception) -> None:
        self.garbage += 1
        now = self.clock.seconds()
        if self._loggedAt is None or now - self._loggedAt >= 10:
            self._loggedAt = now
            log.info(
                "masse dns: unreadable packet ({length} bytes) from {source}: {error!r} "
                "({count} so far; logged at most every 10s)",
                length=len(data),
                source=str(address or _peer(protocol)),
                error=str(error),
                count=self.garbage,
            )
        if len(data) < _HEADER.size:
            return
        id, flags, *_ = _HEADER.unpack_from(data)
        if flags & 0x80:
            return  # a response: never answered
        reply = dns.Message(id=id, answer=1, opCode=(flags >> 3) & 0xF, rCode=dns.EFORMAT)
        reply.recDes = flags & 1
        self._send(protocol, reply, address)

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        if message.answer:
            return  # a response (or a reflection attempt): never answered
        if message.opCode != dns.OP_QUERY:
            self._reply(proto, message, address, dns.ENOTIMP)
        elif len(message.queries) != 1:
            self._reply(proto, message, address, dns.EFORMAT)
        elif message.queries[0].type in REFUSED_TYPES:
            self._reply(proto, message, address, dns.EREFUSED)
        else:
            self.handleQuery(message, proto, address)

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        query = message.queries[0]
        try:
            answer = self.authority.answer(query.name.name, query.cls, query.type)
        except Exception:
            self._failed(Failure(), protocol, message, address)
            return
        if not isinstance(answer, Deferred):
            self._answered(answer, protocol, message, address)
            return
        answer.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(protocol, message, address),
            errbackArgs=(protocol, message, address),
        )
        answer.addErrback(lambda f: log.failure("masse dns: replying failed", f))

    def _answered(self, answer: Answer, protocol: Any, message: dns.Message, address: Any) -> None:
        answers, authority, additional = answer
        self._reply(protocol, message, address, dns.OK, answers, authority, additional)

    def _failed(self, failure: Failure, protocol: Any, message: dns.Message, address: Any) -> None:
        if failure.check(NoSuchName):
            authority = failure.value.authority  # type: ignore[union-attr]
            self._reply(protocol, message, address, dns.ENAME, authority=authority)
        elif failure.check(Refused):
            self._reply(protocol, message, address, dns.EREFUSED)
        else:
            if not failure.check(Unavailable):
                log.failure("masse dns: answering {query} failed", failure, query=message.queries)
            self._reply(protocol, message, address, dns.ESERVER)

    def _reply(
        self,
        protocol: Any,
        message: dns.Message,
        address: Any,
        rCode: int,
        answers: list[dns.RRHeader] | None = None,
        authority: list[dns.RRHeader] | None = None,
        additional: list[dns.RRHeader] | None = None,
    ) -> None:
        reply = dns.Message(
            id=message.id,
            answer=1,
            opCode=message.opCode,
            recDes=message.recDes,
            rCode=rCode,
            auth=rCode in (dns.OK, dns.ENAME),
        )
        reply.queries = message.queries[:1] if rCode != dns.EFORMAT else []
        reply.answers = answers or []
        reply.authority = authority or []
        reply.additional = additional or []
        self._send(protocol, reply, address)

    def _send(self, protocol: Any, reply: dns.Message, address: Any) -> None:
        """
        Encode and send: without the additional records if they do not
        fit, else truncated (TC) and empty for the client to ask over TCP.
        """
        reply.maxSize = 0  # we cut whole sections, not bytes
        limit = UDP_LIMIT if address is not None else TCP_LIMIT
        data = reply.toStr()
        if len(data) > limit and reply.additional:
            reply.additional = []
            data = reply.toStr()
        if len(data) > limit:
            reply.answers, reply.authority, reply.trunc = [], [], 1
            data = reply.toStr()
        try:
            protocol.writeBytes(data, address)
        except Exception as e:
            log.info(
                "masse dns: cannot reply to {address}: {error}",
                address=str(address),
                error=str(e),
            )
