"""
What a server publishes about the AMP commands it answers: the one call
L{txmasse.MasseServerEndpoint} makes before it registers.

Each published schema carries a token that finds the factory in this
process, so that a call by URI with C{includeSelf} runs in-process
(L{txmasse.rpc.local}).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.reflect import namedAny

from txmasse.rpc.schema import (
    Schema,
    SchemaError,
    describeCommands,
    respondedCommands,
    schemaMetadata,
)

log = Logger()

Provided = type  # an amp.Command subclass, or a protocol class with responders


@attrs.define
class LocalPeer:
    """
    A factory this process serves, and the command classes it answers.
    """

    factory: weakref.ref[Any]
    commands: dict[str, type[amp.Command]]


_served: dict[str, LocalPeer] = {}


def servedHere(token: str | None) -> LocalPeer | None:
    """
    The peer this process serves under C{token}, while its factory lives.
    """
    peer = None if token is None else _served.get(token)
    if peer is None or peer.factory() is None:
        return None
    return peer


def checkProvides(provides: Iterable[object] | None) -> tuple[Provided, ...]:
    """
    Explicitly declared commands:
    L{amp.Command<twisted.protocols.amp.Command>} subclasses, or protocol
    classes whose C{Command.responder} declarations count.

    @raise ValueError: naming the item that is neither, or a command that
        cannot be published.
    """
    if provides is None:
        return ()
    if isinstance(provides, str | bytes):
        raise ValueError(f"provides must be a list of Command classes, not {provides!r}")
    checked: list[Provided] = []
    for item in provides:
        if isinstance(item, type) and issubclass(item, amp.Command):
            checked.append(item)
        elif isinstance(item, type) and issubclass(item, amp.CommandLocator):
            checked.append(item)
        else:
            raise ValueError(
                f"provides: {item!r} is not an AMP Command class, nor a protocol class "
                "with responders"
            )
    try:
        commands = _commands(checked, strict=True)
        schemaMetadata(Schema(describeCommands(commands.values()).commands, "0" * 32))
    except SchemaError as e:
        raise ValueError(f"provides: {e}") from None
    return tuple(checked)


def loadProvides(text: str) -> tuple[Provided, ...]:
    """
    The C{provides=} server option: dotted names, comma-separated, each an
    L{amp.Command<twisted.protocols.amp.Command>} subclass or an AMP protocol class
    (C{provides=examples.greeter.Greet}).

    @raise ValueError: naming the part that cannot be loaded.
    """
    loaded = []
    for part in text.split(","):
        dotted = part.strip()
        if not dotted:
            raise ValueError(f"provides={text!r} has an empty item")
        try:
            loaded.append(namedAny(dotted))
        except Exception as e:
            raise ValueError(f"provides: cannot load {dotted!r}: {e}") from None
    return checkProvides(loaded)


def _commands(provided: Sequence[Provided], strict: bool) -> dict[str, type[amp.Command]]:
    commands: list[type[amp.Command]] = []
    for item in provided:
        commands.extend([item] if issubclass(item, amp.Command) else respondedCommands(item))
    schema = describeCommands(commands, strict=strict)
    found = {command.commandName.decode("ascii", "replace"): command for command in commands}
    return {name: found[name] for name in schema.commands}


def published(factory: IProtocolFactory, provides: Sequence[Provided] = ()) -> dict[str, str]:
    """
    The metadata that publishes what C{factory} answers: the commands in
    C{provides} if given, else those its protocol class declares with
    C{Command.responder}. Empty for a factory that is not AMP's.

    Never raises for what it found by looking: a command it cannot publish
    is left out with a warning, a schema over the size bound is not
    published at all.
    """
    if provides:
        commands = _commands(provides, strict=True)
    else:
        protocol = getattr(factory, "protocol", None)
        commands = _commands([protocol], strict=False) if isinstance(protocol, type) else {}
    if not commands:
        return {}
    token = uuid.uuid4().hex
    try:
        metadata = schemaMetadata(Schema(describeCommands(commands.values()).commands, token))
    except SchemaError as e:
        if provides:
            raise
        log.warn("not publishing the AMP commands of {f}: {error}", f=repr(factory), error=str(e))
        return {}
    for stale in [key for key, peer in _served.items() if peer.factory() is None]:
        del _served[stale]
    _served[token] = LocalPeer(weakref.ref(factory), commands)
    return metadata
