"""
A registry server's clock, as one client last heard it.

Leases are timed by the server's clock alone, so that clocks that disagree
cannot expire one early. A lookup that reads the stored expiries itself
(the Redis registry's C{HGETALL}, one plain command instead of a script)
still needs to know whether each is past: it compares them with the
server's clock as this client last heard it, over the local monotonic
clock since. That estimate is trusted only where it cannot be wrong: an
expiry counts as still ahead if it is ahead by more than the estimate's
uncertainty (half the round trip that brought it, plus L{MARGIN_MS}); for
anything closer, and once the estimate is L{FRESH_SECONDS} old, the
lookup asks the server, which decides on its own clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FRESH_SECONDS = 5.0
"""How long a reading of the server's clock is trusted: the local clock may
drift from the server's by a few hundred parts per million meanwhile."""

MARGIN_MS = 20.0
"""Room kept beyond a reading's own uncertainty, for that drift (at most
2.5 ms over L{FRESH_SECONDS}). A server clock stepped further forward is
not covered: its sweeps then time out what expired at once (within half a
second), and the next reading (within L{FRESH_SECONDS}) corrects the
estimate."""

MAX_UNCERTAINTY_MS = 10.0
"""A reading whose round trip took longer than twice this is not kept."""


class ServerClock:
    """
    The server's clock in ms, from the readings its replies carry.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._monotonic = monotonic
        self._wall = wall
        self._offset = 0.0  # server ms minus local ms
        self._margin = 0.0
        self._heardAt: float | None = None
        self._wallAt = 0.0

    def now(self) -> float:
        """
        The local monotonic clock, in seconds: when a call is sent.
        """
        return self._monotonic()

    def heard(self, serverMs: int, sent: float) -> None:
        """
        The reply, received now, to a call sent at C{sent} (L{now}) said the
        server's clock read C{serverMs}.
        """
        received = self._monotonic()
        uncertainty = (received - sent) * 500
        if not 0 <= uncertainty <= MAX_UNCERTAINTY_MS:
            return
        self._offset = serverMs - (sent + received) * 500
        self._margin = uncertainty + MARGIN_MS
        self._heardAt = received
        self._wallAt = self._wall()

    def forget(self) -> None:
        """
        Trust no reading taken before now (a new connection, maybe to
        another server after a failover).
        """
        self._heardAt = None

    def latestNow(self) -> float | None:
        """
        The latest the server's clock (ms) may read now: an expiry after it
        has surely not passed. C{None} without a fresh reading.
        """
        heardAt = self._heardAt
        now = self._monotonic()
        if heardAt is None or not 0 <= now - heardAt <= FRESH_SECONDS:
            return None
        if abs(self._wall() - self._wallAt - (now - heardAt)) * 1000 > MARGIN_MS:
            return None  # the machine slept (the monotonic clock stood still), or was set
        return now * 1000 + self._offset + self._margin
