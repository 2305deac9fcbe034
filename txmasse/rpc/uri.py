"""
Method URIs: C{masse://NS/PEER/COMMAND} names a command of a peer (C{PEER}
may be a glob: C{greeter?}, C{*}); C{masse://NS/PEER} names the peer, for a
proxy.

No query or fragment: C{?} in C{PEER} is the glob's, as en-masse wrote it.
"""

from __future__ import annotations

import attrs

from txmasse.records import Glob, validateName

SCHEME = "masse://"


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def isGlob(name: str) -> bool:
    return any(char in name for char in "*?[")


@attrs.frozen
class MethodURI:
    """
    A parsed C{masse://} URI; C{command} is C{None} for a peer URI.
    """

    namespace: str
    peer: str
    command: str | None = None

    @property
    def isGlob(self) -> bool:
        return isGlob(self.peer)

    def __str__(self) -> str:
        tail = "" if self.command is None else f"/{self.command}"
        return f"{SCHEME}{self.namespace}/{self.peer}{tail}"


def parseURI(text: object, command: bool = True) -> MethodURI:
    """
    Parse C{masse://NS/PEER/COMMAND}, or with C{command=False}
    C{masse://NS/PEER}.

    @raise ValueError: one line naming the bad part.
    """
    form = "masse://NS/PEER/COMMAND" if command else "masse://NS/PEER"
    if not isinstance(text, str):
        raise ValueError(f"a method URI must be a string like {form}, not {text!r}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"invalid URI {_shown(text)}: must look like {form}")
    if scheme != "masse":
        raise ValueError(f"invalid URI {_shown(text)}: scheme {scheme!r} is not 'masse' ({form})")
    parts = rest.split("/")
    names = ["namespace", "peer"] + (["command"] if command else [])
    for index, label in enumerate(names):
        if index >= len(parts) or not parts[index]:
            raise ValueError(f"invalid URI {_shown(text)}: the {label} is missing ({form})")
    if len(parts) > len(names):
        raise ValueError(
            f"invalid URI {_shown(text)}: unexpected part {parts[len(names)]!r} after the "
            f"{names[-1]} ({form})"
        )
    try:
        namespace = validateName(parts[0], "namespace")
        peer = parts[1]
        if isGlob(peer):
            Glob(peer)
        else:
            validateName(peer, "peer name")
        name = validateName(parts[2], "command name") if command else None
    except ValueError as e:
        raise ValueError(f"invalid URI {_shown(text)}: {e}") from None
    return MethodURI(namespace, peer, name)
