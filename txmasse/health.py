"""
Health checks: how a peer finds out whether it is usable, so that it can
say so in its record (clients then skip a C{critical} instance and try a
C{warning} one last).

A check is a callable that returns a L{Health} (or a C{(state, reason)}
pair, or a bare state), or a Deferred that fires with one. The built-in
ones, C{check=tcp} and C{check=http:/PATH}, reach the peer's own listening
address; a C{healthCheck} callable makes the checks only the application
can (its database, its queue). The listening port runs them at every
heartbeat interval and publishes a change at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from txmasse.records import HEALTH_STATES, MAX_REASON, PeerRecord
from txmasse.registry.interface import IRegistry

HealthCheck = Callable[[], Any]
"""Returns, or fires with, a L{Health}, a C{(state, reason)} pair or a state."""

CHECK_TIMEOUT = 2.0
"""Seconds a built-in check waits for an answer (at most the heartbeat interval)."""

_RANK = {state: rank for rank, state in enumerate(HEALTH_STATES)}


@attrs.frozen
class Health:
    """
    A check's verdict: C{passing}, C{warning} or C{critical}, and why.
    """

    state: str
    reason: str = ""

    @classmethod
    def of(cls, answer: object) -> Health:
        """
        What a check answered, as a L{Health}; anything else is
        C{critical}, saying what it was.
        """
        if isinstance(answer, Health):
            state, reason = answer.state, answer.reason
        elif isinstance(answer, str):
            state, reason = answer, ""
        elif isinstance(answer, tuple) and len(answer) == 2:
            state, reason = answer
        else:
            return cls("critical", _short(f"health check answered {answer!r}"))
        if state not in _RANK or not isinstance(reason, str):
            return cls("critical", _short(f"health check answered {answer!r}"))
        return cls(state, _short(reason))


def _short(text: str) -> str:
    """
    A reason as a record may hold it: printable ASCII, cut short.
    """
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def worst(verdicts: Sequence[Health]) -> Health:
    """
    The least healthy verdict, the first of equals; C{passing} for none.
    """
    result = Health("passing")
    for verdict in verdicts:
        if _RANK[verdict.state] > _RANK[result.state]:
            result = verdict
    return result


def runCheck(check: HealthCheck, clock: Any, timeout: float) -> Deferred[Health]:
    """
    Run one check, within C{timeout} seconds: an exception, a failure or
    no answer in time (the check is cancelled then, whatever it makes of
    that) is C{critical}, saying so; it never fails.
    """
    running: Deferred[Any] = maybeDeferred(check)
    late: list[bool] = []

    def expire() -> None:
        late.append(True)
        running.cancel()

    timer = clock.callLater(timeout, expire)

    def verdict(outcome: object) -> Health:
        if timer.active():
            timer.cancel()
        if late:
            return Health("critical", f"no answer within {timeout:g}s")
        if isinstance(outcome, Failure):
            why = outcome.getErrorMessage() or type(outcome.value).__name__
            return Health("critical", _short(f"check failed: {why}"))
        return Health.of(outcome)

    return running.addBoth(verdict)


@attrs.frozen
class CheckSpec:
    """
    A built-in check as C{check=} gives it: C{tcp}, or C{http} with a path.
    """

    kind: str
    path: str = ""

    def __str__(self) -> str:
        return "tcp" if self.kind == "tcp" else f"http:{self.path}"

    def bind(self, reactor: Any, address: IAddress, timeout: float) -> HealthCheck:
        """
        The check of the port listening at C{address}.
        """
        if not isinstance(address, IPv4Address | IPv6Address):
            raise ValueError(f"check={self}: needs a TCP listening address, not {address!r}")
        host = address.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if self.kind == "tcp":
            return lambda: tcpCheck(reactor, host, address.port, timeout)
        return lambda: httpCheck(reactor, host, address.port, self.path, timeout)


def parseCheck(text: str, flag: bool = False) -> CheckSpec:
    """
    C{tcp} or C{http:/PATH}, from the C{check=} option of an endpoint
    string, or with C{flag} from C{--check} (no escaping there).

    @raise ValueError: naming what is wrong.
    """
    if text == "tcp":
        return CheckSpec("tcp")
    given = f"--check {text!r}" if flag else f"check={text!r}"
    example = "--check http:/health" if flag else "check=http\\:/health"
    kind, sep, path = text.partition(":")
    if kind == "http" and sep:
        if not path.startswith("/") or not all("!" <= c <= "~" for c in path):
            raise ValueError(
                f"{given}: the path must start with '/' and have no spaces, e.g. {example}"
            )
        return CheckSpec("http", path)
    escaping = "" if flag else " (escape ':' as '\\:')"
    raise ValueError(f"{given}: must be tcp or http:/PATH{escaping}")


class _Hangup(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


async def tcpCheck(reactor: Any, host: str, port: int, timeout: float) -> Health:
    """
    C{passing} if C{host:port} accepts a connection.
    """
    kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = kind(reactor, host, port, timeout=max(1, round(timeout)))
    try:
        await endpoint.connect(Factory.forProtocol(_Hangup))
    except Exception as e:
        return Health("critical", _short(f"tcp {host}:{port}: {e}"))
    return Health("passing")


async def httpCheck(reactor: Any, host: str, port: int, path: str, timeout: float) -> Health:
    """
    GET C{path} from C{host:port}: 2xx C{passing}, 429 C{warning}, any
    other status C{critical}.
    """
    from twisted.web.client import Agent, readBody

    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}{path}"
    agent = Agent(reactor, connectTimeout=timeout)
    try:
        response = await agent.request(b"GET", url.encode("ascii"))
        await readBody(response)
    except Exception as e:
        return Health("critical", _short(f"GET {path}: {e}"))
    code = response.code
    if 200 <= code < 300:
        return Health("passing")
    state = "warning" if code == 429 else "critical"
    return Health(state, _short(f"GET {path}: {code} {response.phrase.decode('latin-1')}"))



async def drainDecidedElsewhere(registry: IRegistry, ours: PeerRecord) -> PeerRecord | None:
    """
    The record C{masse drain} or C{masse undrain} stored for this instance
    from elsewhere, if its drain decision is newer than C{ours}: the holder
    adopts it, so that its own writes keep it. One lookup of the name; a
    registry away answers C{None} (the heartbeat says so).
    """
    try:
        stored = await registry.lookup(ours.namespace, ours.name)
    except Exception:
        return None
    record: PeerRecord
    for record in stored:
        if record.instance == ours.instance and record.drainChanged > ours.drainChanged:
            return record
    return None


def withDrainOf(ours: PeerRecord, theirs: PeerRecord | None) -> PeerRecord | None:
    """
    C{ours} taking C{theirs}'s drain decision (L{drainDecidedElsewhere}),
    if that is still newer than ours; else C{None}.
    """
    if theirs is None or theirs.drainChanged <= ours.drainChanged:
        return None
    return attrs.evolve(ours, draining=theirs.draining, drainChanged=theirs.drainChanged)
