"""
One etcd watch per watched namespace, kept open across lost streams,
member failures and elections.

The watch remembers C{progress}, the last revision it delivered. A lost
stream is opened again (on the next member if its own failed) from
C{progress + 1}, so no event is missed and none comes twice; snapshots
are read at C{progress}, so a watcher's snapshot and the events after it
fit exactly. A stream that goes quiet because its member is paused or cut
off from the leader is found by a check through that same member, and
moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmasse.errors import RegistryUnavailable
from txmasse.registry.etcd_client import AUTH_CODES, Stream, b64, number, prefixEnd, reason, unb64
from txmasse.registry.interface import EventKind

if TYPE_CHECKING:
    from txmasse.registry.etcd import EtcdRegistry

log = Logger()

MAX_BACKOFF = 1.0


class NamespaceWatch:
    """
    The etcd watch on every key of one namespace, for its subscriptions.
    """

    def __init__(self, registry: EtcdRegistry, namespace: str):
        self.namespace = namespace
        self.progress: int | None = None
        self._registry = registry
        self._client = registry.client
        self._reactor: Any = registry.reactor
        self._prefix = registry.namespacePrefix(namespace)
        self._stopped = False
        self._live = False
        self._resuming = False
        self._fresh = False
        self._waiters: list[Deferred[None]] = []
        self._stream: Deferred[Stream] | Stream | None = None
        self._member = 0
        self._retry: IDelayedCall | None = None
        self._createdBy: IDelayedCall | None = None
        self._failures = 0
        self._lastError = "not connected yet"
        self._check = LoopingCall(self._checkMember)
        self._check.clock = self._reactor
        self._open()

    def __repr__(self) -> str:
        return f"<NamespaceWatch {self._registry.url} {self.namespace} at {self.progress}>"

    def ready(self) -> Deferred[None]:
        """
        Fires once the stream is live (at once if it is), or fails with
        L{RegistryUnavailable} after the registry's timeout.
        """
        if self._live and self.progress is not None:
            return succeed(None)
        if self._stopped:
            return self._unavailable()
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        timeout = self._client.timeout

        def timedOut(failure: Failure) -> Failure:
            if d in self._waiters:
                self._waiters.remove(d)
            if self._stopped:
                return Failure(RegistryUnavailable(f"registry {self._registry.url} is closed"))
            return Failure(
                RegistryUnavailable(
                    f"registry {self._registry.url}: watch of namespace {self.namespace!r} "
                    f"failed: no answer within {timeout:g}s (last error: {self._lastError})"
                )
            )

        d.addTimeout(timeout, self._reactor)
        return d.addErrback(timedOut)

    def _unavailable(self) -> Deferred[None]:
        from twisted.internet.defer import fail

        return fail(RegistryUnavailable(f"registry {self._registry.url} is closed"))

    def stop(self) -> None:
        self._stopped = True
        self._cancelTimers()
        self._abort()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()

    def restartFresh(self) -> None:
        """
        History before C{progress} is gone (compacted): start from now, and
        have every subscription catch up.
        """
        log.warn(
            "{watch}: etcd compacted the history it needs; catching up afresh",
            watch=str(self),
        )
        self.progress = None
        self._fresh = True
        self._abort()

    # The stream

    def _open(self) -> None:
        self._retry = None
        if self._stopped:
            return
        key = self._prefix.encode()
        create: dict[str, Any] = {
            "key": b64(key),
            "range_end": b64(prefixEnd(key)),
            "prev_kv": True,
        }
        self._resuming = self.progress is not None
        if self.progress is not None:
            create["start_revision"] = str(self.progress + 1)
        self._member = self._client.current
        d = self._client.stream(
            self._member, "/v3/watch", {"create_request": create}, self._received
        )
        self._stream = d
        self._createdBy = self._reactor.callLater(self._client.timeout, self._notCreated)
        d.addCallbacks(self._opened, self._lost, callbackArgs=(d,), errbackArgs=(d,))

    def _opened(self, stream: Stream, opening: Deferred[Stream]) -> None:
        if self._stream is not opening:
            stream.close()
            return
        self._stream = stream
        stream.ended.addBoth(self._lost, stream)

    def _notCreated(self) -> None:
        self._createdBy = None
        self._lastError = f"member {self._client.memberName(self._member)} did not start the watch"
        self._abort()

    def _abort(self) -> None:
        stream, self._stream = self._stream, None
        if isinstance(stream, Stream):
            stream.close()
        elif stream is not None:
            stream.cancel()
        if stream is not None:
            self._lost(Failure(ConnectionError("closed")), None)

    def _lost(self, result: object, stream: Deferred[Stream] | Stream | None) -> None:
        if stream is not None and stream is not self._stream:
            return  # an older stream, already replaced
        if isinstance(result, Failure) and not result.check(ConnectionError):
            self._lastError = result.getErrorMessage() or type(result.value).__name__
        self._stream = None
        wasLive, self._live = self._live, False
        self._cancelTimers()
        if self._stopped:
            return
        if wasLive:
            log.info("{watch}: stream lost; resuming", watch=str(self))
            for subscription in self._registry.subscriptions(self.namespace):
                subscription.interrupted()
        if self._client.current == self._member:
            self._client.current = (self._member + 1) % len(self._client.bases)
        delay = min(MAX_BACKOFF, 0.02 * 2**self._failures)
        self._failures += 1
        self._retry = self._reactor.callLater(delay, self._open)

    def _cancelTimers(self) -> None:
        for call in (self._retry, self._createdBy):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._createdBy = None
        if self._check.running:
            self._check.stop()

    def _checkMember(self) -> None:
        """
        A linearizable read through the stream's member: if it does not
        answer in time (paused, or without a leader), move the stream.
        """
        member = self._member
        key = self._prefix.encode()
        d = self._client.member(
            member,
            "/v3/kv/range",
            {"key": b64(key), "range_end": b64(prefixEnd(key)), "count_only": True},
        )

        def failed(failure: Failure) -> None:
            if self._live and self._member == member:
                self._lastError = reason(failure)
                log.info(
                    "{watch}: member {member} does not answer ({error}); moving the watch",
                    watch=str(self),
                    member=self._client.memberName(member),
                    error=self._lastError,
                )
                self._abort()

        d.addCallbacks(lambda _: None, failed)

    # Messages

    def _received(self, message: dict[str, Any]) -> None:
        if self._stopped:
            return
        result = message.get("result")
        if not isinstance(result, dict):
            error = message.get("error", message)
            if isinstance(error, dict) and error.get("grpc_code") in AUTH_CODES:
                self._client.tokenRejected()
            self._lastError = str(error)[:200]
            log.warn("{watch}: the stream failed: {error}", watch=str(self), error=self._lastError)
            self._abort()
            return
        try:
            compacted = number(result.get("compact_revision"))
        except ValueError:
            compacted = 0
        if compacted > 0:
            self.restartFresh()
            return
        if result.get("canceled"):
            self._lastError = str(result.get("cancel_reason", "watch cancelled"))[:200]
            log.warn(
                "{watch}: etcd cancelled the watch: {why}", watch=str(self), why=self._lastError
            )
            self._abort()
            return
        if result.get("created"):
            self._created(result)
        events = result.get("events")
        if isinstance(events, list) and events:
            self._events(events)

    def _created(self, result: dict[str, Any]) -> None:
        if self._createdBy is not None and self._createdBy.active():
            self._createdBy.cancel()
        self._createdBy = None
        if not self._resuming:
            header = result.get("header")
            try:
                self.progress = number(header.get("revision") if isinstance(header, dict) else None)
            except ValueError:
                self.progress = 0
        self._live = True
        self._failures = 0
        if not self._check.running:
            self._check.start(max(0.5, self._client.timeout), now=False)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        subscriptions = self._registry.subscriptions(self.namespace)
        if self._fresh:
            self._fresh = False
            for subscription in subscriptions:
                subscription.reconnected()
        elif self._resuming:
            for subscription in subscriptions:
                subscription.resumed()

    def _events(self, events: list[Any]) -> None:
        """
        Hand a batch of events to the subscriptions, a revision at a time:
        a record deleted in the revision that wrote its 'left' marker left,
        any other deleted record timed out.
        """
        revisions: dict[int, list[tuple[str, bool, dict[str, Any], Any]]] = {}
        for event in events:
            try:
                kv = event["kv"]
                key = unb64(kv["key"]).decode()
                revision = number(kv.get("mod_revision"))
                deleted = event.get("type") == "DELETE"
            except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
                log.warn("{watch}: skipping a bad event: {error}", watch=str(self), error=repr(e))
                continue
            if key.startswith(self._prefix):
                revisions.setdefault(revision, []).append(
                    (key[len(self._prefix) :], deleted, kv, event.get("prev_kv"))
                )
        for revision in sorted(revisions):
            batch = revisions[revision]
            left = {
                rest[len("left/") :]
                for rest, deleted, _, _ in batch
                if rest.startswith("left/") and not deleted
            }
            for rest, deleted, kv, previous in batch:
                self._event(revision, rest, deleted, kv, previous, left)
            if self.progress is None or revision > self.progress:
                self.progress = revision

    def _event(
        self,
        revision: int,
        rest: str,
        deleted: bool,
        kv: dict[str, Any],
        previous: Any,
        left: set[str],
    ) -> None:
        kind, _, _ = rest.partition("/")
        registry, namespace = self._registry, self.namespace
        if kind == "u" and not deleted:
            try:
                value = unb64(kv.get("value", ""))
            except ValueError:
                value = b""
            registry.usageReceived(namespace, value)
            return
        if kind != "r":
            return  # 'left' markers, expired usage reports
        instance = rest.rpartition("/")[2]
        subscriptions = registry.subscriptions(namespace)
        if not deleted:
            record = registry.recordAt(kv, self._prefix + "r/", namespace)
            if record is None:
                return
            try:
                first = number(kv.get("version")) == 1
            except ValueError:
                first = False
            for subscription in subscriptions:
                subscription.received(
                    revision, EventKind.JOINED if first else EventKind.UPDATED, record
                )
            return
        gone = EventKind.LEFT if instance in left else EventKind.TIMEDOUT
        if previous is not None:
            record = registry.recordAt(previous, self._prefix + "r/", namespace)
            if record is None:
                return
            for subscription in subscriptions:
                subscription.received(revision, gone, record)
            return
        # No previous value (compacted away): what each watcher knew of it.
        for subscription in subscriptions:
            for known in subscription.peers:
                if known.instance == instance:
                    subscription.received(revision, gone, known)
