"""
Quiet reconnects: a registry outage is logged once when it starts, now and
then while it lasts (how long, how many attempts, the last error), and once
when it ends, instead of a few lines for every reconnect attempt.
"""

from __future__ import annotations

from twisted.application.internet import ClientService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, globalLogPublisher
from zope.interface import provider

log = Logger()

FIRST_PROGRESS = 10.0
MAX_PROGRESS = 300.0


@provider(ILogObserver)
def _withoutRetryNotes(event: LogEvent) -> None:
    """
    Pass on every event but L{ClientService}'s note on each retry.
    """
    note = str(event.get("log_format", "")).startswith("Scheduling retry")
    if not (note and event.get("log_level") == LogLevel.info):
        globalLogPublisher(event)


class QuietClientService(ClientService):
    """
    A L{ClientService} that does not log each retry: L{OutageLog} says what
    matters. (Twisted has no switch for it: the note comes from the service's
    logger, which this replaces with one that drops just that note.)
    """

    _log = Logger(
        namespace="twisted.application.internet.ClientService", observer=_withoutRetryNotes
    )


class OutageLog:
    """
    Tells of one registry's outages. Its connections report each failed
    attempt (L{failed}) and each success (L{connected}); the outage lasts
    while any of them is down.

    @param url: the registry's URL, without its password.
    """

    def __init__(self, clock: IReactorTime, url: str):
        self._clock = clock
        self._url = url
        self._down: set[str] = set()
        self._since = 0.0
        self._attempts = 0
        self._nextProgress = 0.0
        self._interval = FIRST_PROGRESS

    def failed(self, connection: str, error: str) -> None:
        """
        An attempt to connect (or to prepare a connection) for C{connection}
        failed with C{error}.
        """
        now = self._clock.seconds()
        self._attempts += 1
        if not self._down:
            self._down.add(connection)
            self._since, self._attempts = now, 1
            self._interval = FIRST_PROGRESS
            self._nextProgress = now + self._interval
            log.warn(
                "registry {url} unreachable: {error}; reconnecting until it answers",
                url=self._url,
                error=str(error),
            )
            return
        self._down.add(connection)
        if now >= self._nextProgress:
            log.warn(
                "registry {url} still unreachable after {seconds:.0f}s and {attempts} attempts: "
                "{error}",
                url=self._url,
                seconds=now - self._since,
                attempts=self._attempts,
                error=str(error),
            )
            self._interval = min(self._interval * 2, MAX_PROGRESS)
            self._nextProgress = now + self._interval

    def connected(self, connection: str) -> None:
        """
        C{connection} is up (and ready) again.
        """
        if connection not in self._down:
            return
        self._down.discard(connection)
        if not self._down:
            log.info(
                "registry {url} reachable again after {seconds:.1f}s and {attempts} attempts",
                url=self._url,
                seconds=self._clock.seconds() - self._since,
                attempts=self._attempts,
            )

    @property
    def down(self) -> bool:
        return bool(self._down)

    @property
    def attempts(self) -> int:
        """
        Failed attempts in the current (or last) outage.
        """
        return self._attempts
