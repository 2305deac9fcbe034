"""
A peer for the tests, in a process of its own:

    python -m tests.masse_peer "masse:name=echo:ns=t:registry=..."

Listens with C{serverFromString} and echoes; prints C{listening PORT} once
registered. On SIGTERM it stops listening (releasing its name) and exits.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure

from tests.endpoint_helpers import Echo, Recording


def main(description: str) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    theReactor: Any = reactor

    def listening(port: IListeningPort) -> None:
        print(f"listening {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
        theReactor.addSystemEventTrigger("before", "shutdown", port.stopListening)

    def failed(failure: Failure) -> None:
        print(f"failed: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        theReactor.stop()

    endpoint = serverFromString(reactor, description)
    endpoint.listen(Recording(Echo)).addCallbacks(listening, failed)
    theReactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
