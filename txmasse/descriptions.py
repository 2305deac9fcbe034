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

from twisted.internet.endpoints import quoteStringArgument


def transportOf(description: str) -> str:
    """
    The transport a description names (C{tcp}, C{unix}, C{tls}, ...), lower case.
    """
    return description.partition(":")[0].lower()


def splitDescription(description: str) -> list[str]:
    """
    The C{:}-separated parts of C{description}, with C{\\} escapes undone.

    @raise ValueError: if it ends with a lone C{\\}.
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ValueError(f"{description!r}: ends with a lone '\\'")
    parts.append("".join(current))
    return parts


def parseDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    The transport, positional arguments and options of C{description}.

    @raise ValueError: for a lone trailing C{\\} or an option given twice.
    """
    prefix, *parts = splitDescription(description)
    args: list[str] = []
    options: dict[str, str] = {}
    for part in parts:
        if "=" not in part:
            args.append(part)
            continue
        key, value = part.split("=", 1)
        if key in options:
            raise ValueError(f"{description!r}: option {key!r} given twice")
        options[key] = value
    return prefix.lower(), args, options


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
