"""
Registry URLs: their grammar, the redaction of their secrets in messages,
and the defaults taken from the environment. Opening the registry a URL
names is L{txmasse.registry.opening}'s job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

import attrs

from txmasse.checks import checkNumber, isDigits
from txmasse.records import validateName

DEFAULT_REGISTRY = "redis://127.0.0.1:6379/0"
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = 2.0
DEFAULT_SENTINEL_PORT = 26379
_MASTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

_SCHEMES = (
    "redis",
    "rediss",
    "redis+unix",
    "redis+sentinel",
    "rediss+sentinel",
    "sqlite",
    "memory",
)
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_TLS_OPTIONS = {"ca", "cert", "key"}
_SENTINEL_OPTIONS = {"sentinel_username", "sentinel_password"}
_QUERY = {
    "redis": {"timeout"},
    "rediss": {"timeout", *_TLS_OPTIONS},
    "redis+unix": {"timeout", "db"},
    "redis+sentinel": {"timeout", *_SENTINEL_OPTIONS},
    "rediss+sentinel": {"timeout", *_TLS_OPTIONS, *_SENTINEL_OPTIONS},
    "sqlite": {"timeout", "poll"},
    "memory": set(),
}
for _allowed in _QUERY.values():
    _allowed.add("secrets")  # signed records, on every scheme: see registry/signed.py

def defaultRegistryURL() -> str:
    return os.environ.get("MASSE_REGISTRY") or DEFAULT_REGISTRY


def defaultNamespace() -> str:
    """
    C{$MASSE_NAMESPACE}, else C{"default"}.
    """
    namespace = os.environ.get("MASSE_NAMESPACE") or DEFAULT_NAMESPACE
    try:
        return validateName(namespace, "namespace")
    except ValueError as e:
        raise ValueError(f"$MASSE_NAMESPACE: {e}") from None


@attrs.frozen
class RegistryURL:
    """
    A parsed registry URL.

    @ivar display: the URL with its password replaced by C{***}, for logs
        and messages.
    """

    scheme: str
    display: str
    host: str = ""
    port: int = 6379
    path: str = ""
    db: int | None = None
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    poll: float | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinelUsername: str | None = attrs.field(default=None, repr=False)
    sentinelPassword: str | None = attrs.field(default=None, repr=False)
    secrets: str | None = attrs.field(default=None, repr=False)  # a path, shown in display
    extra: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    """Options of a plugin's scheme (L{parseGenericURL}'s C{options}), as given."""


def _bad(url: str, part: str, why: str) -> ValueError:
    detail = f"{part} {why}" if part else why
    return ValueError(f"invalid registry URL {_redact(url)!r}: {detail}")


def _redactQuery(url: str) -> str:
    """
    C{url} with the value of its C{password} and C{sentinel_password}
    options (any whose name ends in C{password}) hidden, even with the
    option's name percent-encoded.
    """
    base, question, query = url.partition("?")
    if not question:
        return url
    pieces = []
    for piece in query.split("&"):
        name, equals, _ = piece.partition("=")
        if equals and unquote_plus(name).lower().endswith("password"):
            piece = f"{name}=***"
        pieces.append(piece)
    return base + "?" + "&".join(pieces)


def _redact(url: str) -> str:
    """
    The URL without its passwords, even when it does not parse, cut short
    for a message.
    """
    return redactURL(url)[:200]


def redactURL(url: str) -> str:
    """
    The URL without its passwords (C{user:***@}, C{sentinel_password=***}),
    even when it does not parse.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redactQuery(url)
    if "@" in rest:
        # Up to the last '@': a password may hold '/', '?' or '#' unencoded.
        credentials, _, rest = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        rest = (f"{user}:***@" if ":" in credentials else "***@") + rest
    return _redactQuery(f"{scheme}://{rest}")


_URL_IN_TEXT = re.compile(r"\S*://\S*")


def redactText(text: str) -> str:
    """
    C{text} (a message) with every URL in it shown without its passwords;
    the punctuation that closes a quoted URL is kept.
    """

    def redact(match: re.Match[str]) -> str:
        url = match.group(0).rstrip("'\"),:;.")
        return redactURL(url) + match.group(0)[len(url) :]

    return _URL_IN_TEXT.sub(redact, text)


def parseRegistryURL(url: object) -> RegistryURL:
    """
    Parse and check a registry URL.

    @raise ValueError: naming the part of the URL that is wrong.
    """
    parsed = _parse(url)
    query = dict(parse_qsl(urlsplit(str(url)).query, keep_blank_values=True))
    if "secrets" not in query:
        return parsed
    if not query["secrets"]:
        raise _bad(str(url), "option secrets", "needs the path of a secrets file")
    return attrs.evolve(parsed, secrets=query["secrets"])


def _parse(url: object) -> RegistryURL:
    if not isinstance(url, str) or not url:
        raise ValueError(f"invalid registry URL {url!r}: must be a non-empty string")
    if len(url) > 2048 or not url.isprintable():
        raise _bad(url, "the URL", "must be at most 2048 printable characters")
    try:
        parts = urlsplit(url)
        # A sentinel URL lists several host:port pairs, which urlsplit cannot
        # read; a plugin's scheme (etcd's lists members) reads its own.
        scheme = parts.scheme.lower()
        port = None if scheme in _SENTINEL_SCHEMES or scheme not in _SCHEMES else parts.port
    except ValueError as e:
        # urllib's words may quote a piece of the password: not with credentials.
        why = "does not parse" + (
            " (percent-encode ':', '/', '?', '#' and '@' in a user or password)"
            if "@" in url
            else f": {e}"
        )
        raise _bad(url, "the address", why) from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        return _pluginURL(url, parts.scheme)
    query: dict[str, str] = {}
    for raw in parts.query.split("&"):
        name = raw.partition("=")[0]
        if unquote_plus(name) != name:  # else sentinel%5Fpassword= would be shown
            raise _bad(url, f"option {_redact(name)!r}", "must not be percent-encoded")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _QUERY[scheme]:
            allowed = ", ".join(sorted(_QUERY[scheme])) or "none"
            raise _bad(url, f"option {key!r}", f"is unknown (allowed: {allowed})")
        query[key] = value
    display = _redact(url)
    options: dict[str, Any] = {"timeout": _timeout(url, query.get("timeout"))}
    if parts.username is not None:
        options["username"] = unquote(parts.username) or None
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise _bad(url, "memory://", "takes no host or path")
        return RegistryURL(scheme, display)
    if scheme == "sqlite":
        return _sqlite(url, parts.netloc, unquote(parts.path), query, options["timeout"])
    if scheme == "redis+unix":
        return _unix(url, parts.netloc, parts.path, query, options)
    for key in _TLS_OPTIONS & set(query):
        options[key] = query[key]
    if ("cert" in options) != ("key" in options):
        raise _bad(url, "options cert and key", "go together")
    if scheme in _SENTINEL_SCHEMES:
        options["sentinelUsername"] = query.get("sentinel_username") or None
        options["sentinelPassword"] = query.get("sentinel_password")
        return _sentinel(url, scheme, parts.netloc.rpartition("@")[2], parts.path, options)
    if not parts.hostname:
        raise _bad(url, "the host", "is missing")
    db = _db(url, parts.path.lstrip("/") or None)
    return RegistryURL(
        scheme,
        display,
        host=parts.hostname,
        port=port if port is not None else 6379,
        db=db,
        **options,
    )


def _pluginURL(url: str, scheme: str) -> RegistryURL:
    """
    A URL of a scheme that a plugin offers (see L{txmasse.registry.plugins}).
    """
    from txmasse.registry.plugins import pluginSchemes, schemePlugin

    try:
        plugin = schemePlugin(scheme)
    except ValueError as e:
        raise _bad(url, f"scheme {scheme!r}:", str(e)) from None
    if plugin is None:
        known = ", ".join([*_SCHEMES, *pluginSchemes()])
        raise _bad(url, f"scheme {scheme!r}", f"is not one of {known}")
    try:
        parsed = plugin.parseURL(url)
    except ValueError as e:
        raise ValueError(redactText(str(e))) from None
    if not isinstance(parsed, RegistryURL) or parsed.scheme != scheme.lower():
        raise ValueError(
            f"invalid registry URL {_redact(url)!r}: the {scheme}:// plugin returned {parsed!r}, "
            f"not a RegistryURL of its scheme"
        )
    return parsed


def parseGenericURL(
    url: str,
    options: frozenset[str] | set[str] = frozenset(),
    defaultPort: int | None = None,
    needsHost: bool = True,
) -> RegistryURL:
    """
    The usual reading of C{SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/PATH][?OPTIONS]}
    for a plugin's L{IRegistryScheme.parseURL<txmasse.registry.plugins.IRegistryScheme.parseURL>}:
    host, port, path, user and password (percent-decoded), C{timeout=}
    (seconds, checked, default 2), C{secrets=} (signed records), and the
    plugin's own C{options} in C{extra}, any other option refused.

    @raise ValueError: naming the bad part, the password hidden.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad(url, "the address", "does not parse") from None
    query: dict[str, str] = {}
    allowed = {"timeout", "secrets", *options}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise _bad(url, f"option {key!r}", f"is unknown (allowed: {known})")
        query[key] = value
    if needsHost and not parts.hostname:
        raise _bad(url, "the host", "is missing")
    return RegistryURL(
        parts.scheme.lower(),
        _redact(url),
        host=parts.hostname or "",
        port=port if port is not None else (defaultPort or 0),
        path=unquote(parts.path),
        username=None if parts.username is None else unquote(parts.username) or None,
        password=None if parts.password is None else unquote(parts.password),
        timeout=_timeout(url, query.get("timeout")),
        extra={key: value for key, value in query.items() if key in options},
    )


def _sqlite(url: str, netloc: str, path: str, query: dict[str, str], timeout: float) -> RegistryURL:
    """
    C{sqlite:///abs/path.db} (absolute) or C{sqlite:rel/path.db} (relative
    to the working directory).
    """
    if netloc:
        raise _bad(
            url,
            "a host",
            "is not allowed: use sqlite:///absolute/path.db or sqlite:relative/path.db",
        )
    if not path or path.endswith("/"):
        raise _bad(url, "the database path", "is missing (sqlite:///absolute/path.db)")
    if path == ":memory:":
        raise _bad(url, "the database path", "':memory:' is not shared: use memory://")
    poll = None
    if "poll" in query:
        try:
            poll = checkNumber(query["poll"], f"poll {query['poll']!r}", low=0.01, high=60)
        except ValueError as e:
            raise _bad(url, "", str(e)) from None
    return RegistryURL("sqlite", _redact(url), path=path, timeout=timeout, poll=poll)


def _unix(
    url: str, netloc: str, path: str, query: dict[str, str], options: dict[str, Any]
) -> RegistryURL:
    """
    C{redis+unix://[[USER:]PASSWORD@]/path/to/redis.sock[?db=N]}: a UNIX
    socket has no host, so the userinfo is all there may be before the path;
    without a colon it is the password alone (as in C{requirepass}).
    """
    credentials, at, host = netloc.rpartition("@")
    if host:
        raise _bad(
            url,
            f"host {host!r}",
            "is not allowed: a UNIX socket has a path only "
            "(redis+unix://[USER:]PASSWORD@/path/to/redis.sock)",
        )
    if not path or path.endswith("/"):
        raise _bad(url, "the socket path", "is missing (redis+unix:///path/to/redis.sock)")
    if at and ":" not in credentials:
        options = {**options, "username": None, "password": unquote(credentials)}
    if at and not options.get("password"):
        raise _bad(url, "the password", "is empty (redis+unix://[USER:]PASSWORD@/path)")
    db = _db(url, query.get("db"))
    return RegistryURL("redis+unix", _redact(url), path=unquote(path), db=db, **options)


def _sentinel(
    url: str, scheme: str, hosts: str, path: str, options: dict[str, Any]
) -> RegistryURL:
    """
    C{redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db]}:
    the sentinels to ask, in order, where master C{MASTER} is now; with
    C{rediss+sentinel}, over verified TLS to the sentinels and the master.
    """
    sentinels = []
    for address in hosts.split(","):
        host, port = _hostPort(url, address)
        sentinels.append((host, port))
    name, _, db = path.lstrip("/").partition("/")
    name = unquote(name)
    if not name:
        raise _bad(url, "the master name", "is missing (redis+sentinel://host:26379/MASTER)")
    if not _MASTER_NAME.fullmatch(name):
        raise _bad(url, f"master name {name!r}", "must be letters, digits, '.', '_' or '-'")
    return RegistryURL(
        scheme,
        _redact(url),
        sentinels=tuple(sentinels),
        master=name,
        db=_db(url, db or None),
        **options,
    )


def _hostPort(url: str, address: str) -> tuple[str, int]:
    """
    One sentinel's C{host[:port]} or C{[ipv6][:port]}.
    """
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad(url, f"sentinel address {address!r}", "does not parse")
        portText = rest[1:] if rest else None
    else:
        host, colon, portText = address.partition(":")
        if not colon:
            portText = None
    if not host:
        raise _bad(url, f"sentinel address {address!r}", "has no host")
    if portText is None:
        return host, DEFAULT_SENTINEL_PORT
    if not isDigits(portText) or not 0 < int(portText) < 65536:
        raise _bad(url, f"sentinel port {portText!r}", "must be a number, 1 to 65535")
    return host, int(portText)


def _timeout(url: str, value: str | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        return checkNumber(value, f"timeout {value!r}", low=0, above=True, high=3600)
    except ValueError as e:
        raise _bad(url, "", str(e)) from None


def _db(url: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not isDigits(value) or int(value) > 65535:
        raise _bad(url, f"database {value!r}", "must be a whole number")
    return int(value)
