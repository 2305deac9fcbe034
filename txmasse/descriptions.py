"""
Twisted endpoint descriptions (C{tcp:host=H:port=P}): the one place that
splits them.

Records carry client descriptions; endpoint strings nest server
descriptions (C{listen=}). Twisted's own grammar lives in a private
function, so txmasse reads descriptions here, with the same rules: parts
separated by C{:}, C{\\} escaping the next character, C{KEY=VALUE} parts
as options and the others as positional arguments.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from txmasse.checks import isDigits


def transportOf(description: str) -> str:
    """
    The transport a description names (C{tcp}, C{unix}, C{tls}, ...), lower case.
    """
    return description.partition(":")[0].lower()


def _tokens(description: str) -> list[list[tuple[str, bool]]]:
    """
    The C{:}-separated parts, each a list of (character, escaped).

    @raise ValueError: if it ends with a lone C{\\}.
    """
    parts: list[list[tuple[str, bool]]] = [[]]
    escaped = False
    for char in description:
        if escaped:
            parts[-1].append((char, True))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append([])
        else:
            parts[-1].append((char, False))
    if escaped:
        raise ValueError(f"{description!r}: ends with a lone '\\'")
    return parts


def splitDescription(description: str) -> list[str]:
    """
    The C{:}-separated parts of C{description}, with C{\\} escapes undone.

    @raise ValueError: if it ends with a lone C{\\}.
    """
    return ["".join(char for char, _ in part) for part in _tokens(description)]


def parseDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    The transport (lower case), positional arguments and options of
    C{description}: the first unescaped C{=} of a part makes it an option.

    @raise ValueError: for a lone trailing C{\\} or an option given twice.
    """
    first, *parts = _tokens(description)
    args: list[str] = []
    options: dict[str, str] = {}
    for part in parts:
        equals = (i for i, (char, quoted) in enumerate(part) if char == "=" and not quoted)
        split = next(equals, None)
        if split is None:
            args.append("".join(char for char, _ in part))
            continue
        key = "".join(char for char, _ in part[:split])
        if key in options:
            raise ValueError(f"{description!r}: option {key!r} given twice")
        options[key] = "".join(char for char, _ in part[split + 1 :])
    return "".join(char for char, _ in first).lower(), args, options


def unnest(description: str) -> str:
    """
    A description nested in an endpoint string's option (C{listen=}), put
    back together: Twisted undoes one level of C{\\} escaping, so
    C{listen=tcp6\\:0\\:interface=\\:\\:1} arrives as C{tcp6:0:interface=::1}.
    A part without C{=} after an option belongs to that option's value
    (IPv6 addresses, paths with colons); the result is quoted again, ready
    for C{serverFromString}.
    """
    prefix, *parts = splitDescription(description)
    rebuilt: list[list[str]] = []  # [value] for positional, [key, value] for options
    for part in parts:
        if "=" in part:
            rebuilt.append(part.split("=", 1))
        elif rebuilt and len(rebuilt[-1]) == 2:
            rebuilt[-1][1] += ":" + part
        else:
            rebuilt.append([part])
    quoted = [
        quoteStringArgument(item[0])
        if len(item) == 1
        else f"{item[0]}={quoteStringArgument(item[1])}"
        for item in rebuilt
    ]
    return ":".join([prefix, *quoted])


def serverEndpoint(reactor: Any, description: str, option: str) -> IStreamServerEndpoint:
    """
    The server endpoint C{description} makes, given as C{option} (a
    command-line flag): built when the command line is read, so a bad one
    is a usage error rather than a traceback once the program runs.

    @raise ValueError: naming C{option} and C{description}.
    """
    try:
        checkServerDescription(description)
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(f"{option} {description!r}: not a server endpoint ({e})") from None
    return endpoint


def checkServerDescription(description: str) -> None:
    """
    Refuse a server description that Twisted would take and fail on later,
    or fail on obscurely: a lone trailing C{\\}, a port out of range, a
    UNIX socket without a path.

    @raise ValueError: saying which.
    """
    transport, args, options = parseDescription(description)
    if transport in ("tcp", "tcp6", "ssl"):
        port = options.get("port", args[0] if args else None)
        if port is None or not isDigits(port) or int(port) > 65535:
            raise ValueError(f"port {port!r} must be a whole number from 0 to 65535")
    if transport == "unix" and not options.get("address", args[0] if args else ""):
        raise ValueError("no socket path")

