"""
Endpoint strings: the options of C{masse:NAME:KEY=VALUE...} for
C{clientFromString} and C{serverFromString}, checked and turned into
L{MasseClientEndpoint} and L{MasseServerEndpoint}.

Every error is one line that names the bad part, without the password of a
registry URL, whatever was written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from txmasse._client import DEFAULT_TIMEOUT, MasseClientEndpoint
from txmasse._server import DEFAULT_TTL, HOST, MasseServerEndpoint
from txmasse.checks import checkFlag, isDigits
from txmasse.descriptions import checkServerDescription, parseDescription, transportOf, unnest
from txmasse.peertls import tlsFromOptions
from txmasse.registry import parseRegistryURL
from txmasse.registry.url import redactText, redactURL
from txmasse.wrappers import Wrapper, parseWrappers

MAX_MESSAGE = 500
"""Characters of an error's detail shown: the bad part comes first."""

CLIENT_OPTIONS = (
    "name",
    "ns",
    "registry",
    "timeout",
    "pick",
    "proto",
    "wrap",
    "report",
    "cache",
    "tls",
    "ca",
    "cert",
    "key",
    "meta.KEY",
    "prefer.KEY",
)
SERVER_OPTIONS = (
    "name",
    "ns",
    "registry",
    "listen",
    "port",
    "interface",
    "advertise",
    "ttl",
    "unix",
    "wrap",
    "meta.KEY",
    "cert",
    "key",
    "ca",
    "provides",
    "check",
    "drain",
)

_INVALID = "invalid masse: endpoint: "


def _bad(detail: str | ValueError) -> ValueError:
    """
    The C{ValueError} (Twisted's parsers raise those) saying what is wrong
    with a C{masse:} description: its message names the part.
    """
    if isinstance(detail, ValueError) and str(detail).startswith(_INVALID):
        return detail  # already says which part, prefixed
    # One line: a control character in the description is shown escaped;
    # and no password, should a part quoted here hold a URL's.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(detail))
    text = redactText(shown)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    return ValueError(_INVALID + text)


def _isKnown(key: str, known: Sequence[str]) -> bool:
    return (
        key in known
        or ("meta.KEY" in known and key.startswith("meta."))
        or ("prefer.KEY" in known and key.startswith("prefer."))
    )


def _conditions(
    option: str, args: Sequence[str], kwargs: Mapping[str, str]
) -> list[tuple[str, str]]:
    """
    The C{OPTION.KEY=VALUE} parts, in the order given; a part without its
    C{=VALUE} (which the string grammar makes a stray positional part),
    an empty key or an empty value is an error naming it.
    """
    prefix = f"{option}."
    for part in args:
        if part.startswith(prefix):
            raise _bad(f"{part!r} needs a value: {part}=VALUE")
    pairs = []
    for key, value in kwargs.items():
        if key.startswith(prefix):
            if key == prefix:
                raise _bad(f"{key}={value!r}: the key after {prefix!r} is missing")
            if not value:
                raise _bad(f"{key!r} needs a value: {key}=VALUE")
            pairs.append((key[len(prefix) :], value))
    return pairs


def _checkRegistryCut(args: Sequence[str], kwargs: Mapping[str, str], known: Sequence[str]) -> None:
    """
    A C{registry=} URL with a C{:} left unescaped is cut there: the rest,
    password included, lands in stray parts (or, past an C{=}, in unknown
    options). Say so before any other check quotes one of those parts,
    showing the URL put back together without its password.
    """
    url = kwargs.get("registry")
    if url is None or "://" not in url:
        return
    stray = [part for i, part in enumerate(args) if i > 0 or "name" in kwargs or "@" in part]
    stray += [f"{key}={value}" for key, value in kwargs.items() if not _isKnown(key, known)]
    authority = url.partition("://")[2].partition("/")[0]
    credentialsCut = "@" not in authority and any("@" in part for part in stray)
    if credentialsCut or (stray and "password=" in url):
        whole = redactURL(":".join([url, *stray]))
        raise _bad(
            f"registry= was cut at an unescaped ':' (the URL looks like {whole!r}): "
            "escape each ':' inside registry= as '\\:'"
        )


def _takeName(args: Sequence[str], kwargs: dict[str, str]) -> str:
    if len(args) > 1:
        raise _bad(
            f"unexpected part {args[1]!r}: give one name, then KEY=VALUE options "
            "(escape ':' inside a value as '\\:')"
        )
    if args and "name" in kwargs:
        raise _bad(f"name given twice ({args[0]!r} and name={kwargs['name']!r})")
    name = args[0] if args else kwargs.pop("name", None)
    if not name:
        raise _bad("the name is missing (masse:NAME or masse:name=NAME)")
    return name


def _checkKeys(kwargs: Mapping[str, str], known: Sequence[str]) -> None:
    for key in kwargs:
        if not _isKnown(key, known):
            raise _bad(f"unknown option {key!r} (known: {', '.join(known)})")


def _number(option: str, text: str) -> float:
    try:
        if not text.isascii():  # float() reads other scripts' digits too
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise _bad(f"{option}={text!r} is not a number") from None


def _list(option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise _bad(f"{option}={text!r} has an empty item")
    return items


def _registryOption(kwargs: dict[str, str]) -> str | None:
    url = kwargs.pop("registry", None)
    if url is not None:
        try:
            parseRegistryURL(url)
        except ValueError as e:
            hint = "" if "://" in url else " (escape ':' inside registry= as '\\:')"
            raise _bad(f"registry: {e}{hint}") from None
    return url


def _wrapOption(reactor: Any, kwargs: dict[str, str]) -> list[Wrapper]:
    spec = kwargs.pop("wrap", None)
    if spec is None:
        return []
    try:
        return parseWrappers(reactor, spec)
    except ValueError as e:
        raise _bad(e) from None


def parseClient(reactor: Any, /, *args: str, **kwargs: str) -> MasseClientEndpoint:
    """
    A L{MasseClientEndpoint} from the parts of C{masse:NAME:KEY=VALUE...}.

    @raise ValueError: naming the bad part.
    """
    _checkRegistryCut(args, kwargs, CLIENT_OPTIONS)
    _checkKeys(kwargs, CLIENT_OPTIONS)
    meta = _conditions("meta", args, kwargs)
    prefer = _conditions("prefer", args, kwargs)
    name = _takeName(args, kwargs)
    registry = _registryOption(kwargs)
    wrappers = _wrapOption(reactor, kwargs)
    timeout = _number("timeout", kwargs["timeout"]) if "timeout" in kwargs else DEFAULT_TIMEOUT
    proto = _list("proto", kwargs["proto"]) if "proto" in kwargs else None
    try:
        return MasseClientEndpoint(
            reactor,
            name,
            namespace=kwargs.get("ns"),
            registry=registry,
            timeout=timeout,
            pick=kwargs.get("pick", "random"),
            proto=proto,
            wrappers=wrappers,
            report=_flag("report", kwargs.get("report", "false")),
            cache=_flag("cache", kwargs.get("cache", "true")),
            tls=tlsFromOptions(kwargs, server=False),
            meta=meta,
            prefer=prefer,
        )
    except ValueError as e:
        raise _bad(e) from None


def _flag(option: str, text: str) -> bool:
    try:
        return checkFlag(text, option)
    except ValueError as e:
        raise _bad(e) from None


def parseServer(reactor: Any, /, *args: str, **kwargs: str) -> MasseServerEndpoint:
    """
    A L{MasseServerEndpoint} from the parts of C{masse:NAME:KEY=VALUE...}.

    @raise ValueError: naming the bad part.
    """
    _checkRegistryCut(args, kwargs, SERVER_OPTIONS)
    _checkKeys(kwargs, SERVER_OPTIONS)
    _conditions("meta", args, {})  # meta.KEY without =VALUE
    if "meta." in kwargs:
        raise _bad(f"meta.={kwargs['meta.']!r}: the key after 'meta.' is missing")
    name = _takeName(args, kwargs)
    registry = _registryOption(kwargs)
    wrappers = _wrapOption(reactor, kwargs)
    metadata = {key[5:]: value for key, value in kwargs.items() if key.startswith("meta.")}
    ttl = _number("ttl", kwargs["ttl"]) if "ttl" in kwargs else DEFAULT_TTL
    try:
        return MasseServerEndpoint(
            reactor,
            name,
            namespace=kwargs.get("ns"),
            registry=registry,
            endpoint=_innerServer(reactor, kwargs),
            advertise=kwargs.get("advertise"),
            ttl=ttl,
            metadata=metadata,
            unixPath=kwargs.get("unix"),
            wrappers=wrappers,
            tls=tlsFromOptions(kwargs, server=True),
            provides=_providesOption(kwargs),
            check=kwargs.get("check"),
            drain=_number("drain", kwargs["drain"]) if "drain" in kwargs else 0.0,
        )
    except ValueError as e:
        raise _bad(e) from None


def _providesOption(kwargs: Mapping[str, str]) -> Sequence[type] | None:
    from txmasse.rpc.publish import loadProvides

    return loadProvides(kwargs["provides"]) if "provides" in kwargs else None


def _innerServer(reactor: Any, kwargs: Mapping[str, str]) -> IStreamServerEndpoint:
    """
    The endpoint to really listen on: C{listen=}, or C{port=}/C{interface=}.
    """
    listen = kwargs.get("listen")
    port = kwargs.get("port")
    interface = kwargs.get("interface")
    if listen is not None and (port is not None or interface is not None):
        raise _bad("give listen= or port=/interface=, not both")
    if listen is None:
        if port is not None and (not isDigits(port) or int(port) > 65535):
            raise _bad(f"port={port!r} must be a whole number from 0 to 65535")
        listen = f"tcp:{port or 0}"
        if interface is not None:
            if HOST.fullmatch(interface) is None:
                raise _bad(f"interface={interface!r} must be an IP address")
            listen += f":interface={quoteStringArgument(interface)}"
        return _serve(reactor, listen, listen)
    try:
        return _serve(reactor, unnest(listen), listen)
    except ValueError as e:
        raise _bad(f"listen={listen!r}: {e}") from None


def _serve(reactor: Any, description: str, given: str) -> IStreamServerEndpoint:
    if transportOf(description) == "masse":
        raise _bad(f"listen={given!r}: cannot listen on a masse: endpoint")
    interface = parseDescription(description)[2].get("interface")
    if interface is not None and HOST.fullmatch(interface) is None:
        raise _bad(f"listen={given!r}: interface {interface!r} must be an IP address")
    try:
        checkServerDescription(description)
    except ValueError as e:
        raise _bad(f"listen={given!r}: {e}") from None
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except Exception as e:
        raise _bad(f"listen={given!r}: {e} (escape each ':' inside listen= as '\\:')") from None
    return endpoint
