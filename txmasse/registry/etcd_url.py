"""
The grammar of C{etcd://} and C{etcds://} registry URLs, kept with the etcd
backend so that it can be opened by one function of its own.

C{etcd[s]://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PREFIX][?OPTIONS]}
with options C{timeout}, C{user}, C{password} and, for C{etcds}, C{ca},
C{cert} and C{key}.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, unquote_plus

import attrs

from txmasse.checks import checkNumber, isDigits
from txmasse.registry.url import RegistryURL

SCHEMES = ("etcd", "etcds")
DEFAULT_PORT = 2379
DEFAULT_PREFIX = "masse"
DEFAULT_TIMEOUT = 2.0
MAX_ENDPOINTS = 16

_OPTIONS = {"timeout", "user", "password", "secrets"}  # secrets: read by registry/url.py
_TLS_OPTIONS = {"ca", "cert", "key"}
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,7}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")


@attrs.frozen
class EtcdURL:
    """
    A parsed etcd registry URL.

    @ivar display: the URL with its password replaced by C{***}.
    @ivar prefix: where txmasse's keys live in etcd, without a trailing C{/}.
    """

    scheme: str
    display: str
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "etcds"


def redact(url: str) -> str:
    """
    C{url} without its passwords (in the user part and the C{password}
    option), even when it does not parse; cut short for a message.
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.partition("?")[0]:
        credentials, _, rest = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        rest = (f"{user}:***@" if ":" in credentials else f"{user}@") + rest
    base, question, query = rest.partition("?")
    if question:
        pieces = []
        for piece in query.split("&"):
            name, equals, _ = piece.partition("=")
            if equals and unquote_plus(name) == "password":
                piece = f"{name}=***"
            pieces.append(piece)
        base += "?" + "&".join(pieces)
    return (f"{scheme}{sep}{base}" if sep else base)[:200]


def _bad(url: str, part: str, why: str) -> ValueError:
    return ValueError(f"invalid registry URL {redact(url)!r}: {part} {why}")


def parseEtcdURL(url: str) -> EtcdURL:
    """
    Parse and check an etcd registry URL.

    @raise ValueError: naming the part of the URL that is wrong.
    """
    if not isinstance(url, str) or len(url) > 2048 or not url.isprintable():
        raise ValueError(f"invalid registry URL {url!r}: must be at most 2048 printable characters")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(url, f"scheme {scheme!r}", "is not etcd or etcds")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _bad(url, "a fragment", "is not allowed")
    rest, _, queryText = rest.partition("?")
    user = password = None
    if "@" in rest:
        credentials, _, rest = rest.rpartition("@")
        userText, colon, passwordText = credentials.partition(":")
        user = unquote(userText) or None
        password = unquote(passwordText) if colon else None
    hosts, _, path = rest.partition("/")
    endpoints = tuple(_endpoint(url, address) for address in hosts.split(","))
    if len(endpoints) > MAX_ENDPOINTS:
        raise _bad(url, "the endpoint list", f"has more than {MAX_ENDPOINTS} members")
    prefix = path.strip("/") or DEFAULT_PREFIX
    if _PREFIX.fullmatch(prefix) is None:
        raise _bad(
            url,
            f"prefix {prefix!r}",
            "must be up to 8 parts of letters, digits, '.', '_' or '-' separated by '/'",
        )
    query = _query(url, scheme, queryText)
    if "user" in query:
        user = query["user"] or None
    if "password" in query:
        password = query["password"]
    if password is not None and user is None:
        raise _bad(url, "a password", "needs a user")
    if ("cert" in query) != ("key" in query):
        raise _bad(url, "options cert and key", "go together")
    return EtcdURL(
        scheme,
        redact(url),
        endpoints,
        prefix=prefix,
        timeout=_timeout(url, query.get("timeout")),
        user=user,
        password=password,
        ca=query.get("ca") or None,
        cert=query.get("cert") or None,
        key=query.get("key") or None,
    )


def _query(url: str, scheme: str, text: str) -> dict[str, str]:
    allowed = _OPTIONS | (_TLS_OPTIONS if scheme == "etcds" else set())
    query = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key not in allowed:
            hint = " (ca, cert and key need etcds://)" if key in _TLS_OPTIONS else ""
            raise _bad(
                url, f"option {key!r}", f"is unknown (allowed: {', '.join(sorted(allowed))}){hint}"
            )
        query[key] = value
    return query


def _endpoint(url: str, address: str) -> tuple[str, int]:
    """
    One member's C{host[:port]} or C{[ipv6][:port]}.
    """
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or not host:
            raise _bad(url, f"endpoint {address!r}", "does not parse")
        portText = rest[1:] if rest else None
        if not re.fullmatch(r"[0-9A-Fa-f:.]{2,45}", host):
            raise _bad(url, f"endpoint {address!r}", "is not an IPv6 address")
    else:
        host, colon, portText = address.partition(":")
        if not colon:
            portText = None
        if not host:
            raise _bad(url, f"endpoint {address!r}", "has no host")
        if _HOST.fullmatch(host) is None:
            raise _bad(url, f"host {host[:60]!r}", "must be a name or an address")
    if portText is None:
        return host, DEFAULT_PORT
    if not isDigits(portText) or not 0 < int(portText) < 65536:
        raise _bad(url, f"port {portText[:20]!r}", "must be a number, 1 to 65535")
    return host, int(portText)


def _timeout(url: str, value: str | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        return checkNumber(value, f"timeout {value[:20]!r}", low=0, above=True, high=3600)
    except ValueError as e:
        raise ValueError(f"invalid registry URL {redact(url)!r}: {e}") from None


def toRegistryURL(parsed: EtcdURL) -> RegistryURL:
    """
    C{parsed} as txmasse's registry URLs are (what the plugin's C{parseURL}
    returns): the first member as C{host} and C{port}, the member list and
    the prefix in C{extra}.
    """
    host, port = parsed.endpoints[0]
    return RegistryURL(
        parsed.scheme,
        parsed.display,
        host=host,
        port=port,
        username=parsed.user,
        password=parsed.password,
        timeout=parsed.timeout,
        ca=parsed.ca,
        cert=parsed.cert,
        key=parsed.key,
        extra={
            "endpoints": ",".join(
                f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in parsed.endpoints
            ),
            "prefix": parsed.prefix,
        },
    )


def fromRegistryURL(parsed: RegistryURL) -> EtcdURL:
    """
    The etcd URL that L{toRegistryURL} made C{parsed} from.
    """
    endpoints = tuple(_endpoint(parsed.display, a) for a in parsed.extra["endpoints"].split(","))
    return EtcdURL(
        parsed.scheme,
        parsed.display,
        endpoints,
        prefix=parsed.extra["prefix"],
        timeout=parsed.timeout,
        user=parsed.username,
        password=parsed.password,
        ca=parsed.ca,
        cert=parsed.cert,
        key=parsed.key,
    )
