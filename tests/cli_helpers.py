"""
Helpers for the tests of the masse command and twistd masse (beside
tests/helpers.py's masse and startMasse): start twistd masse from another
directory, read a process's output line by line with a bound, and a peer
protocol that shows half-close.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from tests.helpers import REPO

TWISTD = Path(sys.executable).parent / "twistd"


def masseEnvironment(registry: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASSE_NAMESPACE": "dev",
        "MASSE_REGISTRY": registry,
    }


class Lines:
    """
    The lines a process writes to a pipe, read by a thread, so that a test
    can wait for one with a bound instead of blocking on C{readline}.
    """

    def __init__(self, stream: IO[str]):
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def waitFor(self, wanted: Callable[[str], bool] | str, timeout: float = 20) -> str:
        """
        The first line not yet taken that C{wanted} accepts (or contains
        C{wanted}); the lines before it are kept in C{seen}.
        """
        accept = (lambda line: wanted in line) if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0))
            except queue.Empty:
                line = None
                remaining = 0
            if line is None:
                ended = "timed out" if remaining <= 0 else "the output ended"
                raise AssertionError(f"{ended} waiting for a line; seen: {self.seen[-20:]}")
            self.seen.append(line)
            if accept(line):
                return line


def twistdMasse(*args: str, registry: str) -> subprocess.Popen[str]:
    """
    Start C{twistd -n masse ARGS} in namespace dev, from C{/}, its log on
    stdout.
    """
    return subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "masse", "--ns", "dev", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=masseEnvironment(registry),
        cwd="/",
    )


@implementer(IHalfCloseableProtocol)
class PoliteEcho(Protocol):
    """
    Echoes; when the client half-closes, says C{bye} and closes: so a client
    sees whether its end of input reached the peer as a half-close.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.write(b"bye\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass
