"""
Signed records: in a namespace with a shared secret, every record carries
an HMAC, and records whose signature is missing or wrong are ignored.

Anyone who can write to the registry's store (a Redis password, write access
to a SQLite file) could otherwise publish a record that sends a peer's
clients to an address of their choosing. With signed records only holders
of the namespace's secret can: lookups, finds, listings and watchers drop
every other record, log it (once per instance id) and count it per
namespace in L{SignedRegistry.rejected}. Reading is not protected: the
store still shows names and addresses to whoever can read it.

The signature is HMAC-SHA256, keyed per namespace (a key derived from the
secret and the namespace's name), over the record's JSON without its
signature: every field, namespace, name, instance, endpoints, metadata, host
and registration time included. So a record altered in any field, signed
with another secret, carrying another record's signature, or replayed from
another namespace is refused.

Secrets come from a file named by the registry URL's C{secrets=PATH} option
or by C{$MASSE_SECRETS}: either one secret, for every namespace, or lines
C{NAMESPACE SECRET}, for those namespaces only (the others stay unsigned).
Blank lines and lines starting with C{#} are ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from txmasse.records import NAME_RULE, PeerRecord, validateName
from txmasse.registry.base import Lease, validateTTL
from txmasse.registry.interface import (
    USAGE_KINDS,
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    PeerEvent,
    StaleRecords,
)

log = Logger()

SECRETS_ENVIRONMENT = "MASSE_SECRETS"
MIN_SECRET_LENGTH = 16
MAX_SECRETS_BYTES = 1024 * 1024
WARNED_INSTANCES = 4096
"""How many rejected instance ids are remembered, so each is logged once."""

NO_SIGNATURE = "no signature"
WRONG_SIGNATURE = "wrong signature"
NO_FRESHNESS = "no freshness stamp"
WRONG_FRESHNESS = "wrong freshness stamp"
LAPSED = "lapsed freshness (an old record written back?)"

FRESHNESS_SLACK = 2.0
"""
Seconds past a freshness stamp's expiry that a reader still believes it:
room for clocks of the holder and reader that disagree a little.
"""

_FRESHNESS = b"txmasse freshness 1\0"

_NAMESPACE_KEY = b"txmasse namespace key\0"
_RECORD = b"txmasse signed record 1\0"


@attrs.frozen
class Secrets:
    """
    The shared secrets of a registry: one for every namespace, or one per
    listed namespace. Never shown by C{repr}.

    @ivar path: the file they were read from, for messages.
    """

    path: str
    everyNamespace: bytes | None = attrs.field(default=None, repr=False)
    byNamespace: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    _keys: dict[str, bytes] = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def keyFor(self, namespace: str) -> bytes | None:
        """
        The signing key of C{namespace}, or C{None} if it is not signed.

        Derived from the secret and the namespace's name, so even one secret
        shared by every namespace gives each namespace a key of its own.
        """
        key = self._keys.get(namespace)
        if key is None:
            secret = self.byNamespace.get(namespace, self.everyNamespace)
            if secret is None:
                return None
            key = hmac.new(secret, _NAMESPACE_KEY + namespace.encode(), hashlib.sha256).digest()
            self._keys[namespace] = key
        return key


def loadSecrets(path: str) -> Secrets:
    """
    Read a secrets file: one secret for every namespace, or lines
    C{NAMESPACE SECRET}.

    @raise ValueError: one line naming the file, and the line that is wrong;
        never the secret itself.
    """

    def bad(why: str, line: int | None = None) -> ValueError:
        where = f"secrets file {path!r}" + (f" line {line}" if line is not None else "")
        return ValueError(f"{where}: {why}")

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRETS_BYTES + 1)
    except OSError as e:
        raise bad(f"cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_SECRETS_BYTES:
        raise bad(f"is over {MAX_SECRETS_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise bad(f"is not ASCII text (byte {e.start})") from None
    everyNamespace: bytes | None = None
    byNamespace: dict[str, bytes] = {}
    lines = 0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        lines += 1
        if len(words) > 2:
            raise bad(f"has {len(words)} words: expected SECRET, or NAMESPACE SECRET", number)
        secret = words[-1]
        if len(secret) < MIN_SECRET_LENGTH or not secret.isprintable():
            raise bad(f"the secret is not {MIN_SECRET_LENGTH} or more printable characters", number)
        if len(words) == 1:
            if lines > 1 or byNamespace:
                raise bad("a secret for every namespace must be the file's only line", number)
            everyNamespace = secret.encode()
            continue
        if everyNamespace is not None:
            raise bad("a secret for every namespace must be the file's only line", number)
        namespace = words[0]
        try:
            validateName(namespace, "namespace")
        except ValueError:
            # Not the value itself: a line written the wrong way round would show the secret.
            raise bad(f"the namespace is not {NAME_RULE}", number) from None
        if namespace in byNamespace:
            raise bad(f"namespace {namespace!r} has a secret already", number)
        byNamespace[namespace] = secret.encode()
    if everyNamespace is None and not byNamespace:
        raise bad("has no secret: write SECRET, or lines NAMESPACE SECRET")
    return Secrets(path, everyNamespace, byNamespace)


def _stampCode(key: bytes, record: PeerRecord, expiry: str) -> str:
    signed = f"{record.instance}\0{record.signature}\0{expiry}".encode()
    return hmac.new(key, _FRESHNESS + signed, hashlib.sha256).hexdigest()[:32]


def _signed(key: bytes, record: PeerRecord) -> str:
    unsigned = attrs.evolve(record, signature=None) if record.signature is not None else record
    return hmac.new(key, _RECORD + unsigned.toJSON(), hashlib.sha256).hexdigest()


@implementer(IRegistry)
class SignedRegistry:
    """
    Wraps a registry: signs the records registered in namespaces that have
    a secret, and ignores records there whose signature is missing or
    wrong. Namespaces without a secret pass through unchanged.

    @ivar registry: the registry wrapped, which stores the signed records.
    @ivar rejected: per namespace, how many records were ignored so far.
    """

    def __init__(self, registry: IRegistry, secrets: Secrets):
        self.registry = registry
        self.secrets = secrets
        self.now: Callable[[], float] = time.time  # wall clock: stamps cross machines
        self.rejected: Counter[str] = Counter()
        self._warned: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def __repr__(self) -> str:
        return f"<SignedRegistry {self.registry!r} secrets={self.secrets.path!r}>"

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def callTimeout(self) -> float | None:
        limit: float | None = getattr(self.registry, "callTimeout", None)
        return limit

    @property
    def closed(self) -> bool:
        return self.registry.closed

    # Signatures

    def signs(self, namespace: str) -> bool:
        """
        Whether records in C{namespace} are signed.
        """
        return self._key(namespace) is not None

    def _key(self, namespace: object) -> bytes | None:
        try:
            valid = validateName(namespace, "namespace")
        except ValueError:
            return None  # the wrapped registry refuses it, naming why
        return self.secrets.keyFor(valid)

    def sign(self, record: PeerRecord) -> PeerRecord:
        """
        C{record} with the signature of its namespace (unchanged if the
        namespace is not signed).
        """
        key = self._key(record.namespace)
        if key is None:
            return record
        return attrs.evolve(record, signature=_signed(key, record))

    def stamp(self, record: PeerRecord, ttl: float) -> PeerRecord:
        """
        C{record} with a freshness stamp good for C{ttl} seconds from now:
        what its holder's heartbeats renew (unchanged if the namespace is
        not signed). The stamp signs the instance, the record's signature
        and the expiry, so it vouches for this record alone, until then.
        """
        key = self._key(record.namespace)
        if key is None:
            return record
        expiry = str(int((self.now() + ttl) * 1000))
        return attrs.evolve(record, freshness=f"{expiry}.{_stampCode(key, record, expiry)}")

    def problem(
        self, record: PeerRecord, fresh: bool = True, at: float | None = None
    ) -> str | None:
        """
        Why C{record} must be ignored, or C{None} if it may be used: its
        signature, and (unless C{fresh} is false) its freshness stamp, which
        must be current (at C{at}, default now), so that an old record
        written back is refused.
        """
        key = self._key(record.namespace)
        if key is None:
            return None
        if record.signature is None:
            return NO_SIGNATURE
        if not hmac.compare_digest(_signed(key, record), record.signature):
            return WRONG_SIGNATURE
        if not fresh:
            return None
        if record.freshness is None:
            return NO_FRESHNESS
        expiry, _, code = record.freshness.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(
            _stampCode(key, record, expiry), code
        ):
            return WRONG_FRESHNESS
        if int(expiry) / 1000 + FRESHNESS_SLACK < (self.now() if at is None else at):
            return LAPSED
        return None

    def accept(self, record: PeerRecord, fresh: bool = True, at: float | None = None) -> bool:
        """
        Whether C{record} may be used; if not, count it and log it (once per
        instance id and reason).
        """
        problem = self.problem(record, fresh, at)
        if problem is None:
            return True
        self._reject(record, problem)
        return False

    def _reject(self, record: PeerRecord, problem: str, warn: bool = True) -> None:
        self.rejected[record.namespace] += 1
        if not warn:
            return
        key = (record.namespace, record.instance, problem)
        if key in self._warned:
            self._warned.move_to_end(key)
            return
        self._warned[key] = None
        if len(self._warned) > WARNED_INSTANCES:
            self._warned.popitem(last=False)
        log.warn(
            "registry {url}: ignoring a record with {problem} in namespace {ns}: "
            "{name} instance {instance} on host {host} at {endpoint}",
            url=self.url,
            problem=problem,
            ns=record.namespace,
            name=record.name,
            instance=record.instance,
            host=record.host,
            endpoint=record.endpoints[0],
        )

    def _kept(self, records: list[PeerRecord]) -> list[PeerRecord]:
        if isinstance(records, StaleRecords):
            # An answer from before the outage: fresh as of when it was given.
            at = self.now() - records.age
            kept = [record for record in records if self.accept(record, at=at)]
            return StaleRecords(kept, records.age, records.reason)
        return [record for record in records if self.accept(record)]

    # IRegistry

    def register(self, record: PeerRecord, ttl: float) -> Deferred[ILease]:
        if self._key(record.namespace) is None:
            return self.registry.register(record, ttl)
        try:
            stamped = self.stamp(self.sign(record), validateTTL(ttl))
        except ValueError:
            return fail()

        def started(lease: ILease) -> ILease:
            if isinstance(lease, Lease):
                lease.stamper = self.stamp  # every heartbeat renews the stamp
            return SignedLease(self, lease)

        return self.registry.register(stamped, ttl).addCallback(started)

    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        # Only with stale=: a registry of someone else's may not take it.
        d = (
            self.registry.lookup(namespace, name)
            if stale is None
            else self.registry.lookup(namespace, name, stale=stale)
        )
        if self._key(namespace) is None:
            return d
        return d.addCallback(lambda records: self._kept(records))

    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        d = self.registry.find(namespace, pattern)
        if self._key(namespace) is None:
            return d
        return d.addCallback(lambda records: self._kept(records))

    def leases(self, namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        d = self.registry.leases(namespace, pattern)
        if self._key(namespace) is None:
            return d
        return d.addCallback(
            lambda statuses: [status for status in statuses if self.accept(status.record)]
        )

    def audit(self, namespace: str, pattern: str) -> Deferred[list[tuple[LeaseStatus, str | None]]]:
        """
        Every live lease matching C{pattern}, the rejected ones too, each
        with why it is rejected (or C{None}): for C{masse ls --all}.
        Rejected ones are counted as usual, not logged: the caller shows
        each one.
        """

        def checked(statuses: list[LeaseStatus]) -> list[tuple[LeaseStatus, str | None]]:
            result = []
            for status in statuses:
                problem = self.problem(status.record)
                if problem is not None:
                    self._reject(status.record, problem, warn=False)
                result.append((status, problem))
            return result

        return self.registry.leases(namespace, pattern).addCallback(checked)

    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        if self._key(namespace) is None:
            return self.registry.watch(namespace, pattern, callback, usage=usage)
        subscription = SignedSubscription(self, callback)
        d = self.registry.watch(namespace, pattern, subscription.received, usage=usage)
        return d.addCallback(subscription.started)

    def report(self, event: PeerEvent) -> Deferred[None]:
        """
        Publish a stream-use report; in a signed namespace its record is
        signed (by whoever holds the secret, as for a registration), so that
        watchers here accept it.
        """
        if isinstance(event, PeerEvent) and self._key(event.record.namespace) is not None:
            event = attrs.evolve(event, record=self.sign(event.record))
        return self.registry.report(event)

    def close(self) -> Deferred[None]:
        return self.registry.close()


@implementer(ILease)
class SignedLease:
    """
    A lease in a signed namespace: an update is signed before it is stored.
    """

    def __init__(self, registry: SignedRegistry, lease: ILease):
        self._registry = registry
        self._lease = lease

    def __repr__(self) -> str:
        return repr(self._lease)

    @property
    def record(self) -> PeerRecord:
        """
        The record as stored, signature included.
        """
        return self._lease.record

    @property
    def ttl(self) -> float:
        return self._lease.ttl

    def refresh(self) -> Deferred[None]:
        return self._lease.refresh()

    def update(self, record: PeerRecord) -> Deferred[None]:
        registry = self._registry
        return self._lease.update(registry.stamp(registry.sign(record), self.ttl))

    def release(self) -> Deferred[None]:
        return self._lease.release()

    def stop(self) -> None:
        self._lease.stop()


@implementer(ISubscription)
class SignedSubscription:
    """
    A watch in a signed namespace: the watcher hears only of instances
    whose current record is correctly signed.

    An instance is C{joined} when a good record of it first appears, and
    C{left} or C{timedout} when it goes. An C{updated} event whose record
    is bad counts as the instance leaving: the watcher hears C{left} with
    the last good record, and forgets the address it had, rather than
    keep using an address that the store no longer vouches for. If a good
    record comes back, the instance is C{joined} again.
    """

    def __init__(self, registry: SignedRegistry, callback: Callable[[PeerEvent], object]):
        self._registry = registry
        self._callback = callback
        self._inner: ISubscription | None = None
        self._good: dict[str, PeerRecord] = {}
        self._bad: dict[str, PeerRecord] = {}
        self._peers: tuple[PeerRecord, ...] | None = None  # of _good, until it changes

    def __repr__(self) -> str:
        return f"<SignedSubscription {self._inner!r} good={len(self._good)} bad={len(self._bad)}>"

    @property
    def peers(self) -> tuple[PeerRecord, ...]:
        """
        The good instances: the same tuple until they change, as the
        wrapped watch's, so that a warm connect can tell nothing changed.
        """
        peers = self._peers
        if peers is None:
            peers = self._peers = tuple(self._good.values())
        return peers

    @property
    def synced(self) -> bool:
        return self._inner is not None and bool(self._inner.synced)

    def stop(self) -> None:
        if self._inner is not None:
            self._inner.stop()

    def started(self, inner: ISubscription) -> SignedSubscription:
        """
        The wrapped watch is live: take its current peers, good ones only.
        """
        self._inner = inner
        for record in inner.peers:
            instance = record.instance
            if instance in self._good or self._bad.get(instance) == record:
                continue  # already judged, by an event before the watch was live
            if self._registry.accept(record):
                self._good[instance] = record
                self._peers = None
            else:
                self._bad[instance] = record
        return self

    def received(self, event: PeerEvent) -> object:
        """
        An event of the wrapped watch: passed on, changed, or dropped.
        """
        record, instance = event.record, event.record.instance
        if event.kind in USAGE_KINDS:  # reports of stream use, not of a lease
            return self._callback(event) if self._registry.accept(record, fresh=False) else None
        if event.kind in (EventKind.JOINED, EventKind.UPDATED):
            if self._registry.accept(record):
                self._bad.pop(instance, None)
                known = self._good.get(instance)
                self._good[instance] = record
                self._peers = None
                kind = EventKind.JOINED if known is None else EventKind.UPDATED
                return self._callback(PeerEvent(kind, record))
            self._bad[instance] = record
            lost = self._good.pop(instance, None)
            if lost is not None:
                self._peers = None
                return self._callback(PeerEvent(EventKind.LEFT, lost))
            return None
        self._bad.pop(instance, None)
        lost = self._good.pop(instance, None)
        if lost is not None:
            self._peers = None
            return self._callback(PeerEvent(event.kind, lost))
        return None
