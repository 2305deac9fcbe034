"""
The RPC figures: one AMP round trip through a warm L{txmasse.rpc.Proxy},
against the same round trip on a raw AMP connection, and against Pyro5
calling through a warm C{PYRONAME:} proxy.

C{python -m bench.rpc serve URL NS} is the AMP side: C{Echo} served under
the name C{amp-echo}; prints C{ready PORT}.
"""

from __future__ import annotations

import importlib
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from bench.peer import commands, say
from bench.stats import Row, micros, p50, p50p99, ratioRow
from txmasse import MasseServerEndpoint
from txmasse.registry import registryFromURL
from txmasse.rpc import Proxy

NAME = "amp-echo"


class Echo(amp.Command):
    arguments = [(b"data", amp.Unicode())]
    response = [(b"data", amp.Unicode())]


class Echoer(amp.AMP):
    @Echo.responder
    def echo(self, data: str) -> dict[str, str]:
        return {"data": data}


async def serve(url: str, namespace: str) -> None:
    endpoint = MasseServerEndpoint(
        reactor,
        NAME,
        namespace,
        registry=url,
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
    )
    port = await endpoint.listen(Factory.forProtocol(Echoer))
    commands()  # ends this process when the bench closes our stdin
    say("ready", port.getHost().port)  # type: ignore[attr-defined]
    await Deferred()


async def measureRPC(
    url: str, namespace: str, ampPort: int, pyroURI: str | None, rounds: int
) -> dict[str, list[float]]:
    """
    Samples (seconds) of one round trip each: C{raw} (AMP on a connection
    of its own), C{proxy} (masse, warm), C{pyro} if C{pyroURI}.
    """
    raw: Any = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ampPort), amp.AMP())
    proxy = Proxy(f"masse://{namespace}/{NAME}", registryFromURL(reactor, url), reactor)
    proxy.startService()
    api: Any = importlib.import_module("Pyro5.api") if pyroURI is not None else None
    pyroProxy: Any = api.Proxy(pyroURI) if api is not None else None

    async def viaRaw() -> float:
        start = time.perf_counter()
        await raw.callRemote(Echo, data="x")
        return time.perf_counter() - start

    async def viaProxy() -> float:
        start = time.perf_counter()
        await proxy.callRemote(Echo, data="x")
        return time.perf_counter() - start

    async def viaPyro() -> float:
        start = time.perf_counter()
        pyroProxy.echo("x")  # blocking, on its kept connection
        return time.perf_counter() - start

    variants: dict[str, Callable[[], Awaitable[float]]] = {"raw": viaRaw, "proxy": viaProxy}
    if pyroProxy is not None:
        variants["pyro"] = viaPyro
    for run in variants.values():  # connect, resolve the names, warm every path
        for _ in range(20):
            await run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(await variants[name]())
    await proxy.stopService()
    raw.transport.loseConnection()
    if pyroProxy is not None:
        pyroProxy._pyroRelease()
    return samples


def rpcRows(s: dict[str, list[float]]) -> list[Row]:
    raw, proxy = p50(s["raw"]), p50(s["proxy"])
    rows = [
        Row(
            "rpc",
            "raw AMP connection: Echo round trip",
            p50p99(s["raw"]),
            "",
            None,
            "",
            number=raw,
        ),
        ratioRow(
            "rpc", "masse proxy (warm): Echo round trip", s["proxy"], "raw AMP", raw, limit="1.05"
        ),
    ]
    if "pyro" in s:
        pyro = p50(s["pyro"])
        rows.append(
            Row(
                "rpc",
                "Pyro5 PYRONAME proxy (warm): echo round trip",
                p50p99(s["pyro"]),
                f"masse proxy {micros(proxy)}",
                pyro / proxy,
                f"masse {pyro / proxy:.2f}x faster"
                if pyro >= proxy
                else f"Pyro5 {proxy / pyro:.2f}x faster",
                number=pyro,
            )
        )
    return rows


def main(argv: list[str]) -> None:
    mode, url, namespace = argv
    if mode != "serve":
        raise SystemExit(f"bench.rpc: unknown mode {mode!r}")
    task.react(lambda _: Deferred.fromCoroutine(serve(url, namespace)))


if __name__ == "__main__":
    main(sys.argv[1:])
