"""
C{masse web}: serve the dashboard of a registry until stopped.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from txmasse.checks import checkNumber
from txmasse.records import validateName
from txmasse.registry import IRegistry

DEFAULT_LISTEN = "tcp:8370:interface=127.0.0.1"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def _namespace(text: str) -> str:
    try:
        return validateName(text, "namespace")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        return checkNumber(text, f"{text!r}:", low=0.1, high=3600)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def addArguments(parser: argparse.ArgumentParser) -> None:
    """
    The arguments of C{masse web}.
    """
    parser.add_argument(
        "namespaces",
        nargs="*",
        type=_namespace,
        metavar="NAMESPACE",
        help="namespaces to show (default: the --ns one)",
    )
    parser.add_argument(
        "--listen",
        metavar="ENDPOINT",
        default=DEFAULT_LISTEN,
        help=f"Twisted server endpoint to serve on (default {DEFAULT_LISTEN}; "
        "anything else exposes the registry's names, addresses and metadata to whoever reaches it)",
    )
    parser.add_argument(
        "--refresh",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how often the page's lease times are read again (default 1)",
    )


def _url(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _isLoopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(getattr(address, "host", "")).is_loopback
    except ValueError:
        return False


async def run(reactor: Any, registry: IRegistry, namespace: str, args: Any) -> None:
    """
    Serve until the reactor stops. On a loopback address it answers only to
    loopback host names (no DNS rebinding).

    @raise txmasse.cli.UsageError: if C{--listen} is not a server endpoint
        description.
    """
    from twisted.internet.error import CannotListenError
    from twisted.web.server import Site

    from txmasse.cli import UsageError, logWarnings
    from txmasse.descriptions import serverEndpoint
    from txmasse.web._resource import DashboardResource

    try:
        endpoint = serverEndpoint(reactor, args.listen, "--listen")
    except ValueError as e:
        raise UsageError(str(e)) from None
    dashboard = DashboardResource(
        registry, args.namespaces or [namespace], reactor=reactor, refresh=args.refresh
    )
    site = Site(dashboard)
    site.noisy = False
    try:
        port = await endpoint.listen(site)
    except Exception as e:
        dashboard.stop()
        if isinstance(e, CannotListenError | OSError):  # taken, not ours to take, no directory
            raise OSError(f"--listen {args.listen!r}: {e}") from None
        raise
    address = port.getHost()
    if _isLoopback(address):
        dashboard.hosts = frozenset(LOOPBACK_HOSTS)
    print(
        f"masse web: namespaces {', '.join(dashboard.namespaces)} of {registry.url} "
        f"at {_url(address)}; Ctrl-C to stop",
        flush=True,
    )
    logWarnings()
    try:
        await Deferred()  # until Ctrl-C stops the reactor
    finally:
        dashboard.stop()
        await maybeDeferred(port.stopListening)
