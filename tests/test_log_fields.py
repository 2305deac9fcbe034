"""
Every log event txmasse emits can be written as JSON with all its fields
(twisted.logger's eventAsJSON writes an object it cannot serialise as
{"unpersistable": true}, so a JSON log would lose it): checked over the
events of the usual paths, failures included, on txmasse.testing.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import fail
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, capturedLogs, eventAsJSON

from txmasse import PeerGroup
from txmasse.errors import RegistryUnavailable
from txmasse.testing import MasseNetwork


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def unpersistable(event: LogEvent) -> list[str]:
    """
    The fields of C{event} that JSON would lose.
    """
    written = json.loads(eventAsJSON(event))
    lost = [key for key, value in written.items() if value == {"unpersistable": True}]
    return [key for key in lost if not key.startswith("log_")]


def txmasseEvents(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if str(e.get("log_namespace", "")).startswith("txmasse")]


def test_the_events_of_the_usual_paths_are_json() -> None:
    with capturedLogs() as events:
        network = MasseNetwork()
        dead = network.serve("db:ns=t", Factory.forProtocol(Echo))  # the first one picked
        alive = network.serve("db:ns=t:wrap=log=data", Factory.forProtocol(Echo))
        dead.port.stopListening()  # type: ignore[attr-defined]  # refuses: clients fail over
        for _ in range(3):
            client = Factory.forProtocol(Protocol)
            connecting = network.connect("masse:db:ns=t:pick=first:wrap=log", client)
            network.flush()
            protocol: Any = network.successResultOf(connecting)
            protocol.transport.write(b"x")
            network.flush()
            protocol.transport.loseConnection()
            network.flush()
        group = PeerGroup(
            network.registry, "t", "d*", Factory.forProtocol(Protocol), reactor=network.reactor,
            includeSelf=True,  # the peers are this process's own here
        )
        group.startService()
        network.advance(1)
        assert len(group.connections) == 1, group.connections
        registry: Any = network.registry
        original = registry.register
        registry.register = lambda *a: (_ for _ in ()).throw(RegistryUnavailable("down"))
        network.serve("late:ns=t", Factory.forProtocol(Echo))  # listens, not yet registered
        registry.register = original
        network.advance(5)
        alive.stopListening()
        network.advance(1)
        group.stopService()
        failing: Any = network.registry
        watch = failing.watch
        failing.watch = lambda *a, **k: fail(RegistryUnavailable("no watch"))
        network.serve("cache:ns=t", Factory.forProtocol(Echo))
        network.connect("masse:cache:ns=t", Factory.forProtocol(Protocol))
        network.advance(1)  # the resolver could not watch the name, and says so
        failing.watch = watch
        put = failing.putRecord
        failing.putRecord = lambda *a: fail(RegistryUnavailable("no writes"))
        network.advance(5)  # heartbeats fail, once said
        failing.putRecord = put
        network.advance(5)  # and work again
    seen = txmasseEvents(list(events))
    formats = " | ".join(str(e["log_format"]) for e in seen)
    for expected in (
        "connected to",
        "could not watch",
        "not yet registered",
        "trying the next",
        "heartbeat failed",
        "heartbeat works again",
    ):
        assert expected in formats, formats  # each path was really taken
    lost = {e["log_format"]: unpersistable(e) for e in seen if unpersistable(e)}
    assert lost == {}
