"""
en-masse's RPC example, on AMP: every app provides C{greet}, and calls it on
every peer whose name matches a pattern.

    rpc = Masse("my-server-app")
    rpc.to("*").provide("greet", greet)
    answers = await rpc.to("*").call("greet", name="Alice")

C{provide} turns a plain function into an AMP command (its arguments and
answer typed from the annotations), published in the app's record, so any
peer can find and call it by name: C{masse://NS/PEER/greet}. C{call} fans
out to every matching peer but this app itself, as en-masse did; each
answer or failure is reported per peer.

Start a few apps (any registry; here the embedded one):

    export MASSE_REGISTRY=sqlite:///tmp/masse-demo.db MASSE_NAMESPACE=dev
    python -m examples.rpc serve app-1 &
    python -m examples.rpc serve app-2 &

Call them all, from Python or from the shell:

    python -m examples.rpc call '*' Alice
    masse call 'masse://dev/app-*/greet' name=Alice --all
    masse describe app-1
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from txmasse import MasseServerEndpoint, PeerRecord, defaultNamespace, registryFromURL
from txmasse.rpc import RPC, CommandSchema, Field, commandFromSchema

_TYPES = {str: "Unicode", int: "Integer", float: "Float", bool: "Boolean", bytes: "String"}


def commandFor(name: str, function: Callable[..., Any]) -> type[amp.Command]:
    """
    An AMP command for C{function}: one argument per parameter, the answer
    as C{result}; unannotated values are text.
    """
    signature = inspect.signature(function, eval_str=True)

    def kind(annotation: Any) -> str:
        return _TYPES.get(annotation, "Unicode")

    arguments = tuple(Field(p, kind(v.annotation)) for p, v in signature.parameters.items())
    result = (Field("result", kind(signature.return_annotation)),)
    return commandFromSchema(CommandSchema(name, arguments, result))


class Provider(amp.AMP):
    """
    Answers the commands an app provides: each looked up by name in
    C{factory.provided}.
    """

    factory: ProviderFactory

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Deferred[amp.AmpBox]] | None:
        provided = self.factory.provided.get(name.decode("ascii", "replace"))
        if provided is None:
            return super().locateResponder(name)  # type: ignore[no-any-return]
        command, function = provided

        def respond(box: amp.AmpBox) -> Deferred[amp.AmpBox]:
            arguments = command.parseArguments(box, self)
            answered = maybeDeferred(function, **arguments)
            return answered.addCallback(lambda value: command.makeResponse({"result": value}, self))

        return respond


class ProviderFactory(Factory):
    protocol = Provider  # type: ignore[assignment]

    def __init__(self) -> None:
        self.provided: dict[str, tuple[type[amp.Command], Callable[..., Any]]] = {}


class Target:
    """
    C{rpc.to(pattern)}: what C{provide} offers, and whom C{call} reaches.
    """

    def __init__(self, masse: Masse, pattern: str):
        self.masse = masse
        self.pattern = pattern

    def provide(self, name: str, function: Callable[..., Any]) -> None:
        """
        Answer C{name} with C{function}. Any peer may call it: the pattern
        chooses whom C{call} reaches, not who may call us.
        """
        self.masse.factory.provided[name] = (commandFor(name, function), function)

    def call(self, name: str, /, **arguments: object) -> Deferred[dict[PeerRecord, object]]:
        """
        Call C{name} on every matching peer that provides it (this app left
        out); fires with each peer's record mapped to its result, or to the
        L{Failure} it gave.
        """
        uri = f"masse://{self.masse.namespace}/{self.pattern}/{name}"

        def results(answers: dict[PeerRecord, object]) -> dict[PeerRecord, object]:
            return {
                record: answer if isinstance(answer, Failure) else answer["result"]  # type: ignore[index]
                for record, answer in answers.items()
            }

        return self.masse.rpc.callAll(uri, **arguments).addCallback(results)


class Masse:
    """
    One app: its name, what it provides, and calls to its peers.
    """

    def __init__(self, name: str, reactor: Any = None, namespace: str | None = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.name = name
        self.reactor = reactor
        self.namespace = defaultNamespace() if namespace is None else namespace
        self.registry = registryFromURL(reactor)
        self.factory = ProviderFactory()
        self.rpc = RPC(self.registry, reactor, timeout=10)

    def to(self, pattern: str) -> Target:
        return Target(self, pattern)

    def listen(self) -> Deferred[IListeningPort]:
        """
        Serve what was provided under this app's name, publishing it.
        """
        provided = [command for command, _ in self.factory.provided.values()]
        endpoint = MasseServerEndpoint(
            self.reactor,
            self.name,
            self.namespace,
            self.registry,
            endpoint=serverFromString(self.reactor, "tcp:0"),
            ttl=3,
            provides=provided,
        )
        return endpoint.listen(self.factory)


def greet(name: str) -> str:
    return f"hi there, {name} (from pid {os.getpid()})"


async def serve(reactor: Any, name: str) -> None:
    rpc = Masse(name, reactor)
    rpc.to("*").provide("greet", greet)
    port = await rpc.listen()
    # Release the name on a clean stop: peers see "left" at once.
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    print(f"{name} provides greet, listening on {port.getHost()}", flush=True)
    await Deferred()


async def call(reactor: Any, pattern: str, who: str) -> None:
    rpc = Masse(f"caller-{os.getpid()}", reactor)
    answers = await rpc.to(pattern).call("greet", name=who)
    for record, answer in sorted(answers.items(), key=lambda item: item[0].name):
        shown = answer.getErrorMessage() if isinstance(answer, Failure) else answer
        print(f"{record.name}: {shown}", flush=True)
    await rpc.registry.close()


def main(reactor: Any, mode: str, *args: str) -> Deferred[None]:
    if mode == "serve":
        return Deferred.fromCoroutine(serve(reactor, *args))
    return Deferred.fromCoroutine(call(reactor, *args))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
