"""
The C{masse} command's part in choosing instances: C{masse drain} and
C{masse undrain}, the C{--meta KEY=VALUE} filter of C{ls} and C{resolve},
and how health and drain state are shown.

C{masse drain} writes the instance's record with C{draining} set and a
newer C{drainChanged} than the peer's own; the peer, which looks its record
up once per heartbeat interval, adopts it and keeps it in every record it
writes after that. Until then a heartbeat may write the old record back:
the command writes it again, until a heartbeat keeps the new one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.task import deferLater

from txmasse.errors import MasseError
from txmasse.records import PeerRecord, validateName
from txmasse.registry import MIN_TTL, IRegistry

POLL = 0.05
"""Seconds between looks at the instance while waiting for it to keep a drain."""


def drainArguments(parser: argparse.ArgumentParser) -> None:
    """
    The arguments of C{masse drain} and C{masse undrain}; the global
    C{--timeout} bounds the wait for each instance to keep the change.
    """
    parser.add_argument("name")
    parser.add_argument(
        "--instance", metavar="ID", help="only this instance (its id, or a unique prefix)"
    )


def addMetaFilter(sub: argparse.ArgumentParser) -> None:
    """
    C{--meta KEY=VALUE} (repeatable) for C{ls} and C{resolve}.
    """
    sub.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only instances with this metadata (repeatable; all must match)",
    )


def metaConditions(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """
    The C{--meta} pairs, checked.

    @raise ValueError: naming the bad pair.
    """
    conditions = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise ValueError(f"--meta {pair!r}: must be KEY=VALUE")
        try:
            validateName(key, "metadata key")
        except ValueError as e:
            raise ValueError(f"--meta {pair!r}: {e}") from None
        conditions.append((key, value))
    return conditions


def matches(record: PeerRecord, conditions: Sequence[tuple[str, str]]) -> bool:
    return all(record.metadata.get(key) == value for key, value in conditions)


def stateJSON(record: PeerRecord) -> dict[str, Any]:
    """
    The health and drain fields of C{--json} output.
    """
    return {"health": record.health, "reason": record.reason, "draining": record.draining}


async def run(context: Any, args: Any) -> None:
    """
    C{masse drain} / C{masse undrain}, with the C{masse} command's context
    (L{txmasse.cli.Context}).

    @raise MasseError: nothing to drain (exit status 1).
    """
    registry, namespace, out = context.registry, context.namespace, context.out
    validateName(args.name, "name")
    draining = args.command == "drain"
    statuses = await context.deadline(registry.leases(namespace, args.name), args.command)
    targets = [s for s in statuses if s.record.name == args.name]
    if args.instance is not None:
        targets = [s for s in targets if s.record.instance.startswith(args.instance)]
        if len(targets) > 1:
            raise MasseError(
                f"--instance {args.instance!r} names {len(targets)} instances of {args.name!r}: "
                "give more of the id"
            )
    if not targets:
        which = "" if args.instance is None else f" with id {args.instance!r}"
        raise MasseError(
            f"nothing to {args.command}: no live instance of {args.name!r}{which} in "
            f"namespace {namespace!r} of registry {registry.url}"
        )
    for status in targets:
        record = status.record
        if record.draining == draining:
            print(f"{record.name} {record.instance[:12]}: already {record.state}", file=out)
            continue
        changed = attrs.evolve(
            record,
            signature=None,
            draining=draining,
            drainChanged=max(time.time(), record.drainChanged + 0.001),
        )
        await _writeUntilKept(context.reactor, registry, changed, status.expiresIn, context.timeout)
        print(f"{record.name} {record.instance[:12]}: {changed.state}", file=out)


async def _write(registry: IRegistry, record: PeerRecord, expiresIn: float) -> None:
    """
    Write C{record} as its peer would, for the time its lease has left.
    """
    lease = await registry.register(record, max(MIN_TTL, expiresIn))
    lease.stop()


async def _writeUntilKept(
    reactor: Any, registry: IRegistry, changed: PeerRecord, expiresIn: float, timeout: float
) -> None:
    """
    Write C{changed}, and again whenever the peer's heartbeat wrote its
    old record back before it looked, until a heartbeat keeps the new one
    (the peer adopted it).

    @raise MasseError: the instance left, or did not adopt it in time (a
        txmasse older than drain, say).
    """
    await _write(registry, changed, expiresIn)
    deadline = time.monotonic() + timeout
    last = expiresIn
    while time.monotonic() < deadline:
        await deferLater(reactor, POLL, lambda: None)
        statuses = await registry.leases(changed.namespace, changed.name)
        now = [s for s in statuses if s.record.instance == changed.instance]
        if not now:
            raise MasseError(f"instance {changed.instance[:12]} of {changed.name!r} left")
        stored = now[0]
        if stored.record.drainChanged < changed.drainChanged:
            await _write(registry, changed, stored.expiresIn)  # a heartbeat undid it
        elif stored.expiresIn > last + POLL:
            return  # a heartbeat kept it
        last = stored.expiresIn
    raise MasseError(
        f"instance {changed.instance[:12]} of {changed.name!r} did not keep the change within "
        f"{timeout:g}s (--timeout; is it a txmasse without drain?)"
    )
