"""
Every log event txmasse emits can be written as JSON with all its fields
(twisted.logger's eventAsJSON writes an object it cannot serialise as
{"unpersistable": true}, so a JSON log would lose it): checked over the
events of the usual paths, failures included, on txmasse.testing.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, capturedLogs, eventAsJSON

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
        alive = network.serve("db:ns=t:wrap=log=data", Factory.forProtocol(Echo))
        dead = network.serve("db:ns=t", Factory.forProtocol(Echo))
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
        registry: Any = network.registry
        original = registry.register
        registry.register = lambda *a: (_ for _ in ()).throw(RegistryUnavailable("down"))
        network.serve("late:ns=t", Factory.forProtocol(Echo))  # listens, not yet registered
        registry.register = original
        network.advance(5)
        alive.stopListening()
        network.advance(1)
    seen = txmasseEvents(list(events))
    assert len(seen) >= 5, [e["log_format"] for e in seen]
    lost = {e["log_format"]: unpersistable(e) for e in seen if unpersistable(e)}
    assert lost == {}
