"""
C{masse dns}: the DNS interface from a shell. The C{masse} command adds
these arguments and calls L{run}; L{txmasse.dns.service} does the work.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

DEFAULT_PORT = 8353  # as txmasse.dns.service, which this module does not import early


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", metavar="PORT", default=str(DEFAULT_PORT), help="UDP and TCP port (8353)"
    )
    parser.add_argument("--interface", metavar="ADDR", default="127.0.0.1", help="(127.0.0.1)")
    parser.add_argument("--domain", default="masse", help="zone to answer for (masse)")
    parser.add_argument("--ttl", metavar="SECONDS", default="1", help="record TTL (1)")
    parser.add_argument(
        "--max-namespaces", metavar="N", default="64", help="namespaces watched at most (64)"
    )
    parser.add_argument(
        "--stale",
        metavar="SECONDS",
        default="30",
        help="answer from the last view this long with the registry down, then SERVFAIL (30)",
    )


async def run(reactor: Any, registry: Any, args: Any, out: TextIO) -> None:
    """
    Serve until the reactor stops; one line on C{out} says where.

    @raise txmasse.cli.UsageError: a bad argument, naming it.
    @raise OSError: the port cannot be had.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.error import CannotListenError

    from txmasse.cli import UsageError, logWarnings
    from txmasse.dns.service import DNSService, Settings

    try:
        settings = Settings(
            port=args.listen,
            interface=args.interface,
            domain=args.domain,
            ttl=args.ttl,
            maxNamespaces=args.max_namespaces,
            stale=args.stale,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    service = DNSService(registry, settings, reactor)
    try:
        service.startService()
    except CannotListenError as e:
        raise OSError(f"cannot listen on {settings.interface} port {settings.port}: {e}") from None
    print(
        f"masse dns: answering for {settings.domain}. on {settings.interface} port "
        f"{service.port} (UDP and TCP), registry {registry.url}",
        file=out,
        flush=True,
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    logWarnings()
    await Deferred()
