"""
The etcd registry: records in an etcd v3 cluster (3.4 and later), reached
through its JSON gateway (Twisted's Agent; treq for the watch streams), no gRPC.

A txmasse lease is an etcd lease: the record's key is attached to it, a
heartbeat is a C{lease/keepalive}, and when the peer dies etcd itself
deletes the key. Events come from etcd's own C{watch}, one stream per
watched namespace, resumed after a lost stream from the revision after
the last one it delivered: no event is missed, none comes twice.

Keys, under the URL's prefix (default C{masse}):

  - C{PREFIX/NS/r/NAME/INSTANCE}: the record (its JSON), on its lease;
  - C{PREFIX/NS/left/INSTANCE}: written in the same transaction that
    deletes a released record, on a short shared lease. A record deleted
    in a revision without this marker timed out (etcd reports only a
    delete when a lease expires), so each end is announced exactly once,
    as C{left} or C{timedout};
  - C{PREFIX/NS/u/SOURCE}: the last stream-use report of a client, on the
    same short lease (etcd has no pub/sub: watchers see the write).

See C{docs/etcd.md}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import (
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import metrics
from txmasse.errors import RegistryUnavailable
from txmasse.records import Glob, PeerRecord
from txmasse.registry import freshness
from txmasse.registry.base import (
    LastAnswers,
    Lease,
    Registrations,
    Snapshot,
    Subscription,
    extendByPutting,
    validateQuery,
    validateSearch,
    validateTTL,
    validateUsage,
)
from txmasse.registry.checking import Key, Stored
from txmasse.registry.etcd_client import (
    EtcdClient,
    EtcdError,
    b64,
    number,
    prefixEnd,
    unb64,
)
from txmasse.registry.etcd_url import EtcdURL, fromRegistryURL, parseEtcdURL, toRegistryURL
from txmasse.registry.etcd_watch import NamespaceWatch
from txmasse.registry.interface import (
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    PeerEvent,
)
from txmasse.registry.plugins import IRegistryScheme
from txmasse.registry.url import RegistryURL

log = Logger()

MARKER_TTL = 60
"""Seconds the 'left' markers and usage reports stay in etcd."""

NOT_FOUND = 5
OUT_OF_RANGE = 11

GRANTS = 3
"""Leases granted for one registration at most, when each expires before
its record is written (an etcd too slow to answer within the ttl)."""


@implementer(IRegistryScheme)
@attrs.frozen
class EtcdScheme:
    """
    C{etcd://} and C{etcds://} as registry plugins (see C{setup.py}'s
    C{txmasse.registries} entry points): built in, opened like any other.
    """

    scheme: str

    def parseURL(self, url: str) -> RegistryURL:
        parsed = parseEtcdURL(url)
        if parsed.scheme != self.scheme:
            raise ValueError(f"invalid registry URL {parsed.display!r}: not {self.scheme}://")
        return toRegistryURL(parsed)

    def fromURL(self, reactor: IReactorTime, parsed: RegistryURL) -> EtcdRegistry:
        return EtcdRegistry.fromURL(reactor, parsed)


ETCD = EtcdScheme("etcd")
ETCDS = EtcdScheme("etcds")


def fromURL(reactor: IReactorTime, url: str | EtcdURL | RegistryURL) -> EtcdRegistry:
    """
    Open the etcd registry that C{url} (C{etcd://...} or C{etcds://...}) names.

    @raise ValueError: naming the bad part of the URL or the TLS file that
        cannot be used.
    """
    if isinstance(url, RegistryURL):
        parsed = fromRegistryURL(url)
    else:
        parsed = url if isinstance(url, EtcdURL) else parseEtcdURL(url)
    tls = None
    if parsed.tls:
        from txmasse.registry.etcd_tls import policyFor

        tls = policyFor(parsed)
    client = EtcdClient(
        reactor,
        parsed.endpoints,
        parsed.display,
        parsed.timeout,
        tls=tls,
        user=parsed.user,
        password=parsed.password,
    )
    return EtcdRegistry(reactor, client, parsed.prefix)


@attrs.define
class _Held:
    """
    What this process knows of one of its own leases.

    @ivar beat: when the last successful heartbeat (or grant) was sent.
    """

    leaseID: int
    value: bytes
    ttl: float
    beat: float


@implementer(IRegistry)
class EtcdRegistry:
    """
    A registry kept in an etcd cluster.

    @param prefix: the key prefix of this registry's data, without C{/}.
    """

    def __init__(self, reactor: IReactorTime, client: EtcdClient, prefix: str):
        self.url = client.url
        self.callTimeout = client.timeout
        self.closed = False
        self.client = client
        self.reactor = reactor
        self._reactor = reactor
        self._prefix = prefix
        self._leases: set[Lease] = set()
        self._held: dict[str, _Held] = {}
        self._granting: dict[str, Deferred[None]] = {}
        self._wanted: set[str] = set()  # instances registered, not yet released or stopped
        self._expiries: dict[str, IDelayedCall] = {}
        self._watchers: dict[str, set[Subscription]] = {}
        self._streams: dict[str, NamespaceWatch] = {}
        self._lastAnswers = LastAnswers(reactor)
        self._marker: tuple[int, float] | None = None
        self._markerLock = DeferredLock()
        self._askers = DeferredSemaphore(16)  # lease/timetolive calls at once, in leases()
        self._registrations = Registrations(self)
        self._closing = False

    @classmethod
    def fromURL(cls, reactor: IReactorTime, parsed: RegistryURL | EtcdURL | str) -> EtcdRegistry:
        """
        The registry a parsed registry URL names.
        """
        return fromURL(reactor, parsed)

    def __repr__(self) -> str:
        return f"<EtcdRegistry {self.url}>"

    # Keys

    def namespacePrefix(self, namespace: str) -> str:
        return f"{self._prefix}/{namespace}/"

    def _recordKey(self, record: PeerRecord) -> str:
        return f"{self.namespacePrefix(record.namespace)}r/{record.name}/{record.instance}"

    def _leftKey(self, record: PeerRecord) -> str:
        return f"{self.namespacePrefix(record.namespace)}left/{record.instance}"

    # Calls

    def _call(self, path: str, body: dict[str, Any], what: str) -> Deferred[dict[str, Any]]:
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        return self.client.call(path, body, what).addErrback(self._refused, what)

    def _refused(self, failure: Failure, what: str) -> Failure:
        """
        etcd's refusals (other than 'not found', which callers handle) as
        L{RegistryUnavailable}, saying what etcd said.
        """
        error = failure.value
        if isinstance(error, EtcdError) and error.code != NOT_FOUND:
            return Failure(
                RegistryUnavailable(f"registry {self.url}: {what} failed: etcd said: {error}")
            )
        return failure

    def _range(
        self, prefix: str, what: str, revision: int | None = None, keysOnly: bool = False
    ) -> Deferred[dict[str, Any]]:
        key = prefix.encode()
        body: dict[str, Any] = {"key": b64(key), "range_end": b64(prefixEnd(key))}
        if revision is not None:
            body["revision"] = str(revision)
        if keysOnly:
            body["keys_only"] = True
        return self._call("/v3/kv/range", body, what)

    # IRegistry

    @metrics.registryCall("register")
    def register(self, record: PeerRecord, ttl: float) -> Deferred[ILease]:
        ttl = validateTTL(ttl)
        if self.closed or self._closing:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        lease = Lease(self, record, ttl, self._reactor)
        self._wanted.add(record.instance)
        return self._registrations.register(lease, self._leases.add)

    @metrics.registryCall("lookup")
    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        validateQuery(namespace, name, stale)
        key = (namespace, name)
        prefix = f"{self.namespacePrefix(namespace)}r/{name}/"
        d = self._range(prefix, f"lookup of {name!r}").addCallback(self._lookedUp, namespace, name)
        return self._lastAnswers.answering(d, key, stale)

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        """
        What etcd holds for C{keys}, in one read-only transaction: each
        record, and for a gone instance whether it C{left} (its release
        marker, kept a short while) or C{timedout} (gone without one).
        """
        prefix = self.namespacePrefix(namespace)
        ranges = []
        for name, instance in keys:
            ranges.append({"request_range": {"key": b64(f"{prefix}r/{name}/{instance}")}})
            ranges.append({"request_range": {"key": b64(f"{prefix}left/{instance}")}})

        def parse(reply: dict[str, Any]) -> Stored:
            responses = reply.get("responses")
            if not isinstance(responses, list) or len(responses) != len(ranges):
                raise RegistryUnavailable(
                    f"registry {self.url}: check of events failed: unexpected reply from etcd"
                )
            stored: dict[Key, PeerRecord] = {}
            gone: dict[str, EventKind] = {}
            for index, (name, instance) in enumerate(keys):
                record, marker = responses[2 * index], responses[2 * index + 1]
                found = self._records(_rangeOf(record), namespace, None, name)
                if found and found[0][0].instance == instance:
                    stored[(name, instance)] = found[0][0]
                else:  # as etcd's own deletes are read: no marker, no release
                    left = bool(_kvs(_rangeOf(marker)))
                    gone[instance] = EventKind.LEFT if left else EventKind.TIMEDOUT
            return Stored(stored, gone)

        return self._call("/v3/kv/txn", {"success": ranges}, "check of events").addCallback(parse)

    def _lookedUp(self, reply: dict[str, Any], namespace: str, name: str) -> list[PeerRecord]:
        return [record for record, _ in self._records(reply, namespace, None, name)]

    @metrics.registryCall("find")
    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        glob = validateSearch(namespace, pattern)
        d = self._matching(namespace, glob)
        return d.addCallback(lambda found: [record for record, _ in found])

    def _matching(
        self, namespace: str, glob: Glob, revision: int | None = None
    ) -> Deferred[list[tuple[PeerRecord, int]]]:
        """
        The records whose names match C{glob}, with their etcd lease ids:
        a range over the pattern's literal prefix only.
        """
        prefix = f"{self.namespacePrefix(namespace)}r/{glob.prefix}"
        d = self._range(prefix, f"find of {glob.pattern!r}", revision)
        return d.addCallback(self._records, namespace, glob)

    @metrics.registryCall("leases")
    def leases(self, namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        glob = validateSearch(namespace, pattern)
        return Deferred.fromCoroutine(self._leaseStatuses(namespace, glob))

    async def _leaseStatuses(self, namespace: str, glob: Glob) -> list[LeaseStatus]:
        found = await self._matching(namespace, glob)
        now = self._reactor.seconds()

        def status(record: PeerRecord, leaseID: int) -> Deferred[LeaseStatus]:
            held = self._held.get(record.instance)
            if held is not None and held.leaseID == leaseID:
                return succeed(LeaseStatus(record, max(0.0, held.beat + held.ttl - now)))
            d = self._askers.run(
                self._call,
                "/v3/lease/timetolive",
                {"ID": str(leaseID)},
                f"listing of {glob.pattern!r}",
            )
            return d.addCallback(
                lambda reply: LeaseStatus(record, float(max(0, number(reply.get("TTL")))))
            )

        return await gatherResults([status(r, i) for r, i in found], consumeErrors=True)

    @metrics.registryCall("watch")
    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        subscription = Subscription.forPattern(
            self, namespace, pattern, callback, self._reactor, usage=usage
        )
        if self.closed or self._closing:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        self._watchers.setdefault(namespace, set()).add(subscription)
        stream = self._streams.get(namespace)
        if stream is None:
            stream = self._streams[namespace] = NamespaceWatch(self, namespace)

        async def start() -> ISubscription:
            try:
                await stream.ready()
                await subscription.resync()
            except BaseException:
                subscription.stop()
                raise
            return subscription

        return Deferred.fromCoroutine(start())

    @metrics.registryCall("report")
    def report(self, event: PeerEvent) -> Deferred[None]:
        validateUsage(event)
        record = event.record
        key = f"{self.namespacePrefix(record.namespace)}u/{event.source}"
        value = json.dumps(
            {"kind": str(event.kind), "source": event.source, "record": record.toJSON().decode()}
        )
        what = f"report of {event.kind} to {record.name!r}"

        async def put() -> None:
            await self._withMarkerLease(
                lambda lease: self._call(
                    "/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)}, what
                ),
                what,
            )

        return Deferred.fromCoroutine(put())

    def close(self) -> Deferred[None]:
        if self.closed or self._closing:
            return succeed(None)
        self._closing = True  # calls still go out until closed: the undos need them
        self._registrations.cancelAll()
        for call in self._expiries.values():
            if call.active():
                call.cancel()
        self._expiries.clear()
        for lease in list(self._leases):
            lease.stop()
        for subscriptions in list(self._watchers.values()):
            for subscription in list(subscriptions):
                subscription.stop()
        for stream in list(self._streams.values()):
            stream.stop()
        self._streams.clear()
        undoing = self._registrations.takenBack()

        def disconnect(_: object) -> Deferred[None]:
            self.closed = True
            return self.client.close()

        return undoing.addCallback(disconnect)

    # The store, as leases and subscriptions use it

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        """
        Heartbeats: a keepalive of each record's etcd lease (L{putRecord}
        does it, writing back what etcd lost).
        """
        return extendByPutting(self, records, ttl)

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        """
        Register C{record}, or heartbeat it: a keepalive of its etcd lease,
        a put if the record changed, a new lease if etcd lost the old one.
        """
        if record.instance in self._granting:
            # A grant is under way: it is this beat; a change it missed is
            # written by the next.
            return succeed(None)
        held = self._held.get(record.instance)
        value = freshness.stored(record)
        what = f"registration of {record.name!r}"
        if held is None:
            return self._grant(record, ttl, value, what)
        sent = self._reactor.seconds()
        if held.value != value:
            d = self._txnPut(record, value, held.leaseID, what, update=True)
        else:
            d = self._call("/v3/lease/keepalive", {"ID": str(held.leaseID)}, what).addCallback(
                _keptAlive
            )

        def done(_: object) -> None:
            held.value = value
            held.beat = sent

        def lost(failure: Failure) -> Deferred[None] | Failure | None:
            if failure.check(_LeaseGone) or (
                failure.check(EtcdError) and failure.value.code == NOT_FOUND  # type: ignore[union-attr]
            ):
                if self._held.get(record.instance) is not held:
                    return None  # released or stopped meanwhile, or granted again
                del self._held[record.instance]
                if record.instance not in self._wanted:
                    return None
                log.info(
                    "{url}: the etcd lease of {record} is gone; registering it again",
                    url=self.url,
                    record=record.name,
                )
                return self._grant(record, ttl, value, what)
            return failure

        return d.addCallbacks(done, lost)

    def _grant(self, record: PeerRecord, ttl: float, value: bytes, what: str) -> Deferred[None]:
        async def grant() -> None:
            for attempt in range(GRANTS):
                sent = self._reactor.seconds()
                reply = await self._call(
                    "/v3/lease/grant", {"TTL": str(max(1, math.ceil(ttl)))}, what
                )
                leaseID = number(reply.get("ID"))
                if leaseID <= 0:
                    raise RegistryUnavailable(
                        f"registry {self.url}: {what} failed: no lease granted"
                    )
                if record.instance not in self._wanted:  # released or stopped meanwhile
                    self._revoke(leaseID)
                    return
                held = _Held(leaseID, value, ttl, sent)
                self._held[record.instance] = held
                try:
                    await self._txnPut(record, value, leaseID, what)
                    return
                except BaseException as e:
                    if self._held.get(record.instance) is held:
                        del self._held[record.instance]
                    expired = isinstance(e, EtcdError) and e.code == NOT_FOUND
                    if not expired:
                        self._revoke(leaseID)
                    if not expired or attempt + 1 == GRANTS:
                        raise
                    log.info(
                        "{url}: the lease for {record} expired before its record was "
                        "written (etcd answered late); granting another",
                        url=self.url,
                        record=record.name,
                    )

        d = Deferred.fromCoroutine(grant())
        self._granting[record.instance] = d

        def finished(result: object) -> object:
            if self._granting.get(record.instance) is d:
                del self._granting[record.instance]
            return result

        return d.addBoth(finished)

    def _txnPut(
        self, record: PeerRecord, value: bytes, leaseID: int, what: str, update: bool = False
    ) -> Deferred[None]:
        """
        Write the record on its lease, and drop any 'left' marker of an
        earlier registration of the same instance, in one transaction; an
        C{update} only if the record is still there (else L{_LeaseGone}).
        """
        key = b64(self._recordKey(record))
        compare = [{"key": key, "target": "CREATE", "result": "GREATER", "create_revision": "0"}]

        def written(reply: dict[str, Any]) -> None:
            if update and not reply.get("succeeded"):
                raise _LeaseGone()

        return self._call(
            "/v3/kv/txn",
            {
                **({"compare": compare} if update else {}),
                "success": [
                    {
                        "request_put": {
                            "key": key,
                            "value": b64(value),
                            "lease": str(leaseID),
                        }
                    },
                    {"request_delete_range": {"key": b64(self._leftKey(record))}},
                ],
            },
            what,
        ).addCallback(written)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        """
        Delete the record and write its 'left' marker in one transaction,
        if it is still there; then revoke its lease.
        """
        self._cancelExpiry(record.instance)
        self._wanted.discard(record.instance)
        held = self._held.pop(record.instance, None)
        what = f"release of {record.name!r}"
        key = b64(self._recordKey(record))

        def txn(marker: int) -> Deferred[dict[str, Any]]:
            return self._call(
                "/v3/kv/txn",
                {
                    "compare": [
                        {
                            "key": key,
                            "target": "CREATE",
                            "result": "GREATER",
                            "create_revision": "0",
                        }
                    ],
                    "success": [
                        {"request_delete_range": {"key": key}},
                        {
                            "request_put": {
                                "key": b64(self._leftKey(record)),
                                "value": b64("left"),
                                "lease": str(marker),
                            }
                        },
                    ],
                },
                what,
            )

        async def remove() -> None:
            await self._withMarkerLease(txn, what)
            if held is not None:
                await self._revoke(held.leaseID)  # now, not at its expiry

        return Deferred.fromCoroutine(remove())

    def _revoke(self, leaseID: int) -> Deferred[None]:
        """
        Revoke an etcd lease, in the background: if this fails it expires.
        """
        d = self._call("/v3/lease/revoke", {"ID": str(leaseID)}, "revoke")
        d.addErrback(lambda f: log.debug("revoke failed: {e}", e=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    async def _withMarkerLease(
        self, call: Callable[[int], Deferred[dict[str, Any]]], what: str
    ) -> None:
        """
        Run C{call} with the id of the short lease that markers live on,
        granting a new one if etcd does not know it.
        """
        for attempt in (1, 2):
            lease = await self._markerLease(what)
            try:
                await call(lease)
                return
            except EtcdError as e:
                if e.code != NOT_FOUND or attempt == 2:
                    raise RegistryUnavailable(
                        f"registry {self.url}: {what} failed: etcd said: {e}"
                    ) from None
                self._marker = None

    async def _markerLease(self, what: str) -> int:
        async with self._markerLock:  # one grant however many wait
            now = self._reactor.seconds()
            if self._marker is None or self._marker[1] - now <= MARKER_TTL / 2:
                reply = await self._call("/v3/lease/grant", {"TTL": str(MARKER_TTL)}, what)
                ttl = number(reply.get("TTL"), MARKER_TTL)
                self._marker = (number(reply.get("ID")), now + ttl)
            return self._marker[0]

    def forgetLease(self, lease: Lease) -> None:
        """
        C{lease} was stopped (or is being released): no more heartbeats.
        As the contract says, its record expires C{ttl} after the last
        heartbeat; this process, still alive, revokes the etcd lease then,
        since etcd's own lease is whole seconds and expires a little later.
        """
        self._leases.discard(lease)
        instance = lease.record.instance
        self._wanted.discard(instance)
        held = self._held.get(instance)
        if held is None or self._closing or instance in self._expiries:
            return
        delay = max(0.0, held.beat + held.ttl - self._reactor.seconds())
        self._expiries[instance] = self._reactor.callLater(delay, self._expire, instance)

    def _expire(self, instance: str) -> None:
        self._expiries.pop(instance, None)
        held = self._held.pop(instance, None)
        if held is not None and not self.closed:
            self._revoke(held.leaseID)

    def _cancelExpiry(self, instance: str) -> None:
        call = self._expiries.pop(instance, None)
        if call is not None and call.active():
            call.cancel()

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        """
        The matching records as of the last revision the namespace's watch
        delivered (so that its next events are exactly those after it), and
        for C{known} instances now gone, whether they left or timed out.
        """
        stream = self._streams.get(namespace)
        if stream is None:
            return fail(RegistryUnavailable(f"registry {self.url}: namespace is not watched"))
        return Deferred.fromCoroutine(self._snapshotAt(stream, namespace, glob, known))

    async def _snapshotAt(
        self, stream: NamespaceWatch, namespace: str, glob: Glob, known: Sequence[str]
    ) -> Snapshot:
        await stream.ready()
        revision = stream.progress
        assert revision is not None
        try:
            found = await self._matching(namespace, glob, revision)
            markers: set[str] = set()
            current = {record.instance for record, _ in found}
            if set(known) - current:
                reply = await self._range(
                    f"{self.namespacePrefix(namespace)}left/",
                    f"find of {glob.pattern!r}",
                    revision,
                    keysOnly=True,
                )
                markers = {
                    unb64(kv.get("key")).decode("utf-8", "replace").rpartition("/")[2]
                    for kv in _kvs(reply)
                }
        except EtcdError as e:
            if e.code == OUT_OF_RANGE:  # compacted: start again from now
                stream.restartFresh()
            raise RegistryUnavailable(
                f"registry {self.url}: find of {glob.pattern!r} failed: etcd said: {e}"
            ) from None
        gone = {
            instance: (EventKind.LEFT if instance in markers else EventKind.TIMEDOUT)
            for instance in known
            if instance not in current
        }
        return Snapshot(revision, [record for record, _ in found], gone)

    def unwatch(self, subscription: Subscription) -> None:
        namespace = subscription.namespace
        subscriptions = self._watchers.get(namespace, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._watchers.pop(namespace, None)
            stream = self._streams.pop(namespace, None)
            if stream is not None:
                stream.stop()

    # Reading the store

    def _records(
        self,
        reply: dict[str, Any],
        namespace: str,
        glob: Glob | None = None,
        name: str | None = None,
    ) -> list[tuple[PeerRecord, int]]:
        """
        The records of a range reply that are where they belong, with their
        lease ids; garbage is skipped with a warning.
        """
        found = []
        prefix = self.namespacePrefix(namespace) + "r/"
        for kv in _kvs(reply):
            record = self.recordAt(kv, prefix, namespace, glob, name)
            if record is not None:
                try:
                    found.append((record, number(kv.get("lease"))))
                except ValueError:
                    found.append((record, 0))
        return found

    def recordAt(
        self,
        kv: object,
        prefix: str,
        namespace: str,
        glob: Glob | None = None,
        name: str | None = None,
    ) -> PeerRecord | None:
        """
        Parse the record in a key-value pair read under C{prefix}, or skip
        it with a warning: it may be garbage, or out of place.
        """
        try:
            if not isinstance(kv, dict):
                raise ValueError("not a key-value pair")
            key = unb64(kv.get("key")).decode()
            if not key.startswith(prefix):
                raise ValueError(f"key {key[:80]!r} is outside {prefix!r}")
            placedName, slash, instance = key[len(prefix) :].partition("/")
            record = freshness.parsed(unb64(kv.get("value", "")))
            if (
                not slash
                or record.namespace != namespace
                or record.name != placedName
                or record.instance != instance
                or (glob is not None and not glob.matches(record.name))
                or name not in (None, record.name)
            ):
                raise ValueError(
                    f"record of {record.namespace}/{record.name} instance "
                    f"{record.instance} is stored in the wrong place ({key[:80]!r})"
                )
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            log.warn(
                "registry {url}: skipping a bad record in namespace {ns}: {error}",
                url=self.url,
                ns=namespace,
                error=str(e),
            )
            return None
        return record

    # Events, from the namespace watches

    def subscriptions(self, namespace: str) -> list[Subscription]:
        return list(self._watchers.get(namespace, ()))

    def usageReceived(self, namespace: str, value: bytes) -> None:
        """
        A usage report written by some client: hand it to the watchers that
        asked, or skip it with a warning if it is garbage.
        """
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = PeerRecord.fromJSON(str(data.get("record", "")))
            if record.namespace != namespace:
                raise ValueError(f"a record of namespace {record.namespace!r}")
            event = validateUsage(
                PeerEvent(EventKind(str(data.get("kind"))), record, data.get("source"))
            )
        except (ValueError, TypeError) as e:
            log.warn(
                "registry {url}: skipping a bad usage event: {error}",
                url=self.url,
                error=str(e),
            )
            return
        for subscription in self.subscriptions(namespace):
            subscription.receivedUsage(event)


class _LeaseGone(Exception):
    """
    etcd no longer knows a lease we keep alive.
    """


def _keptAlive(reply: dict[str, Any]) -> None:
    result = reply.get("result", reply)
    if not isinstance(result, dict) or number(result.get("TTL")) <= 0:
        raise _LeaseGone()


def _kvs(reply: dict[str, Any]) -> list[Any]:
    kvs = reply.get("kvs", [])
    return kvs if isinstance(kvs, list) else []


def _rangeOf(response: object) -> dict[str, Any]:
    """
    The range reply inside one response of a transaction (empty if garbage).
    """
    if isinstance(response, dict):
        inner = response.get("response_range")
        if isinstance(inner, dict):
            return inner
    return {}
