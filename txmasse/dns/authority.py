"""
The zone: answers for C{NAME.NS.DOMAIN} and its neighbours, made from the
namespace views (see L{txmasse.dns.views}) without a registry round trip
once a namespace is watched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import AuthoritativeDomainError
from zope.interface import implementer

from txmasse.dns.addresses import answerable
from txmasse.dns.labels import Target, checkDomain, parseQueryName
from txmasse.dns.views import Instance, Name, NamespaceView, Views

Records = list[dns.RRHeader]
Answer = tuple[Records, Records, Records]

MAX_TXT_STRING = 255


class Refused(Exception):
    """
    Not ours to answer (outside the zone, or ambiguous): REFUSED.
    """


class NoSuchName(AuthoritativeDomainError):
    """
    The name does not exist in the zone: NXDOMAIN, with the zone's SOA as
    C{authority}.
    """

    def __init__(self, name: bytes, authority: Records):
        super().__init__(name)
        self.authority = authority


@implementer(IResolver)
class MasseAuthority(ResolverBase):
    """
    Authoritative for C{domain}: A, AAAA, SRV and TXT from the registry's
    live instances; C{ttl} seconds on every record (and as the SOA's
    negative-caching time).
    """

    def __init__(
        self,
        views: Views,
        domain: str = "masse",
        ttl: int = 1,
        shuffle: random.Random | None = None,
    ):
        super().__init__()
        self.views = views
        self.domain = checkDomain(domain)
        self.ttl = ttl
        self._domain = self.domain.encode("ascii")
        self._random = shuffle if shuffle is not None else random.Random()
        soa = dns.Record_SOA(
            mname=self._domain,
            rname=b"hostmaster." + self._domain,
            serial=int(time.time()) & 0xFFFFFFFF,
            refresh=60,
            retry=10,
            expire=600,
            minimum=ttl,
            ttl=ttl,
        )
        self._soa = [self._rr(self._domain, dns.SOA, soa)]

    def query(self, query: dns.Query, timeout: Any = None) -> Deferred[Answer]:  # type: ignore[override]
        return self.lookup(query.name.name, query.cls, query.type)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Answer]:
        return self.lookup(name, cls, type)

    def lookup(self, name: bytes, cls: int, type: int) -> Deferred[Answer]:
        """
        The answer, authority and additional records for one question;
        fails with L{Refused}, L{NoSuchName}, or
        L{txmasse.dns.views.Unavailable} (SERVFAIL).
        """
        try:
            answer = self.answer(name, cls, type)
        except Exception:
            return fail()
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def answer(self, name: bytes, cls: int, type: int) -> Answer | Deferred[Answer]:
        """
        L{lookup}, at once when the namespace is watched already (the
        server's fast path): raises what L{lookup} fails with.
        """
        target = parseQueryName(name, self._domain)
        if target is None or cls != dns.IN:
            raise Refused(f"{name!r} class {cls}: not in zone {self.domain}")
        if target.kind == "apex":
            return self._apex(name, type)
        if target.kind == "none":
            raise NoSuchName(name, self._soa)
        view = self.views.get(target.namespace)
        if isinstance(view, NamespaceView):
            return self._answer(name, target, type, view)
        return view.addCallback(lambda ready: self._answer(name, target, type, ready))

    def _rr(self, name: bytes, type: int, payload: Any) -> dns.RRHeader:
        return dns.RRHeader(name, type, dns.IN, self.ttl, payload, auth=True)

    def _apex(self, name: bytes, type: int) -> Answer:
        ns = [self._rr(name, dns.NS, dns.Record_NS(self._domain, ttl=self.ttl))]
        soa = [self._rr(name, dns.SOA, self._soa[0].payload)]
        if type == dns.SOA:
            return soa, [], []
        if type == dns.NS:
            return ns, [], []
        if type == dns.ALL_RECORDS:
            return soa + ns, [], []
        return [], self._soa, []

    def _answer(self, name: bytes, target: Target, type: int, view: NamespaceView) -> Answer:
        names = view.names()
        if target.kind in ("namespace", "services"):
            if not names:
                raise NoSuchName(name, self._soa)
            return [], self._soa, []
        entry = names.get(target.name)
        if entry is None:
            raise NoSuchName(name, self._soa)
        if entry.ambiguous:
            raise Refused(f"{name!r}: ambiguous, names {sorted(entry.names)} fold to one label")
        if target.kind == "service":
            if type not in (dns.SRV, dns.ALL_RECORDS):
                return [], self._soa, []
            return self._services(name, target, entry)
        instances = entry.instances
        if target.kind == "instance":
            instances = entry.instance(target.instance)
            if not instances:
                raise NoSuchName(name, self._soa)
            if len(instances) > 1:
                raise Refused(f"{name!r}: ambiguous, instance ids fold to one label")
        answers: Records
        if type == dns.A:
            answers = self._addresses(name, instances, 4)
        elif type == dns.AAAA:
            answers = self._addresses(name, instances, 6)
        elif type == dns.ALL_RECORDS:  # RFC 8482: a subset is enough
            answers = self._addresses(name, instances, 4) + self._addresses(name, instances, 6)
        elif type == dns.TXT:
            answers = self._texts(name, instances)
        else:
            answers = []
        return answers, [] if answers else self._soa, []

    def _addresses(self, name: bytes, instances: Sequence[Instance], version: int) -> Records:
        seen: set[str] = set()
        records = []
        for instance in instances:
            if not answerable(instance.record):
                continue
            for stream in instance.streams:
                if stream.version == version and stream.host not in seen:
                    seen.add(stream.host)
                    payload: Any = (
                        dns.Record_A(stream.host, self.ttl)
                        if version == 4
                        else dns.Record_AAAA(stream.host, self.ttl)
                    )
                    records.append(self._rr(name, dns.A if version == 4 else dns.AAAA, payload))
        self._random.shuffle(records)
        return records

    def _texts(self, name: bytes, instances: Sequence[Instance]) -> Records:
        seen: set[tuple[bytes, ...]] = set()
        records = []
        for instance in instances:
            if not answerable(instance.record):
                continue
            strings = tuple(
                text
                for text in (
                    f"{key}={value}".encode()
                    for key, value in sorted(instance.record.metadata.items())
                )
                if len(text) <= MAX_TXT_STRING
            )
            if strings and strings not in seen:
                seen.add(strings)
                records.append(self._rr(name, dns.TXT, dns.Record_TXT(*strings, ttl=self.ttl)))
        return records

    def _services(self, name: bytes, target: Target, entry: Name) -> Answer:
        answers, additional = [], []
        for instance in entry.instances:
            if not (answerable(instance.record) and instance.streams):
                continue
            first = instance.streams[0]
            if first.version == 0:
                host = first.host.encode("ascii")
            elif instance.label is None:
                continue  # an instance id with a dot has no name to point at
            else:
                labels = (instance.label, entry.label, target.namespace)
                host = b".".join([*(label.encode() for label in labels), self._domain])
                additional += self._addresses(host, [instance], 4)
                additional += self._addresses(host, [instance], 6)
            srv = dns.Record_SRV(0, 1, first.port, host, ttl=self.ttl)
            answers.append(self._rr(name, dns.SRV, srv))
        self._random.shuffle(answers)
        return answers, [] if answers else self._soa, additional
