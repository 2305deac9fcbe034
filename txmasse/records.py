"""
What the registry stores about a peer, the rules its names follow, and the
glob patterns that select names.

Every value that comes from outside (a user, an endpoint string, another
process writing to the registry) passes through the validators here, so the
rest of txmasse can trust a L{PeerRecord} it holds.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.logger import Logger

log = Logger()

NAME_RULE = "a letter or digit, then up to 127 letters, digits, '.', '_' or '-'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

MAX_ENDPOINTS = 16
MAX_ENDPOINT_LENGTH = 1024
MAX_METADATA = 64
MAX_METADATA_VALUE = 1024
MAX_HOST_LENGTH = 255
MAX_RECORD_BYTES = 32 * 1024
_ENDPOINT = re.compile(r"[a-z][a-z0-9+.-]*:[\x20-\x7e]*")
_HOST = re.compile(rf"[\x21-\x7e]{{1,{MAX_HOST_LENGTH}}}")
MAX_SIGNATURE_LENGTH = 256
_SIGNATURE = re.compile(rf"[A-Za-z0-9+/=_-]{{16,{MAX_SIGNATURE_LENGTH}}}")


def _shown(value: object) -> str:
    """
    A value quoted for an error message, cut short if it is long.
    """
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validateName(value: object, what: str = "name") -> str:
    """
    Return C{value} if it is a valid peer name, namespace or instance id.

    @raise ValueError: naming the value and the rule it breaks.
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise ValueError(f"invalid {what} {_shown(value)}: must be {NAME_RULE}")
    return value


def _validateNamespace(instance: object, attribute: object, value: str) -> None:
    validateName(value, "namespace")


def _validateName(instance: object, attribute: object, value: str) -> None:
    validateName(value, "name")


def _validateInstance(instance: object, attribute: object, value: str) -> None:
    validateName(value, "instance id")


def _toEndpoints(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"endpoints must be a list of descriptions, not {_shown(value)}")
    endpoints = tuple(value)
    if not 1 <= len(endpoints) <= MAX_ENDPOINTS:
        raise ValueError(f"a record needs 1 to {MAX_ENDPOINTS} endpoints, got {len(endpoints)}")
    for description in endpoints:
        if (
            not isinstance(description, str)
            or len(description) > MAX_ENDPOINT_LENGTH
            or _ENDPOINT.fullmatch(description) is None
        ):
            raise ValueError(
                f"invalid endpoint description {_shown(description)}: must look like "
                f"'tcp:host=10.0.0.7:port=4312' (printable ASCII, at most "
                f"{MAX_ENDPOINT_LENGTH} characters)"
            )
    return endpoints


_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
"""What a metadata value may not hold: a value is shown in tables and logs,
where a line break (U+2028 and U+2029 too), an escape sequence or a change
of text direction would forge rows, drive the terminal or hide what
follows."""


def _toMetadata(value: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"metadata must be a mapping of str to str, not {_shown(value)}")
    if len(value) > MAX_METADATA:
        raise ValueError(f"at most {MAX_METADATA} metadata entries, got {len(value)}")
    for key, item in value.items():
        validateName(key, "metadata key")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE or _CONTROL.search(item):
            raise ValueError(
                f"invalid metadata value for {key!r}: must be a str of at most "
                f"{MAX_METADATA_VALUE} characters, none of them a control character, "
                f"got {_shown(item)}"
            )
    return MappingProxyType(dict(value))


def _validateHost(instance: object, attribute: object, value: str) -> None:
    if not isinstance(value, str) or _HOST.fullmatch(value) is None:
        raise ValueError(
            f"invalid host identity {_shown(value)}: must be 1 to "
            f"{MAX_HOST_LENGTH} printable ASCII characters without spaces"
        )


def _validateTime(instance: object, attribute: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"invalid registration time {_shown(value)}")


def _validateSignature(instance: object, attribute: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or _SIGNATURE.fullmatch(value) is None):
        raise ValueError(
            f"invalid signature {_shown(value)}: must be 16 to {MAX_SIGNATURE_LENGTH} "
            "hex or base64 characters"
        )


HEALTH_STATES = ("passing", "warning", "critical")
"""An instance's health, best first; a record that says none is C{passing}."""

MAX_REASON = 200
_REASON = re.compile(rf"[\x20-\x7e]{{0,{MAX_REASON}}}")


def _validateHealth(instance: object, attribute: object, value: str) -> None:
    if value not in HEALTH_STATES:
        states = ", ".join(HEALTH_STATES)
        raise ValueError(f"invalid health {_shown(value)}: must be one of {states}")


def _validateReason(instance: object, attribute: object, value: str) -> None:
    if not isinstance(value, str) or _REASON.fullmatch(value) is None:
        raise ValueError(
            f"invalid health reason {_shown(value)}: must be at most {MAX_REASON} "
            "printable ASCII characters"
        )


def _validateDraining(instance: object, attribute: object, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"invalid draining {_shown(value)}: must be True or False")


_FRESHNESS = re.compile(r"[0-9a-f.]{1,128}")


def _validateFreshness(instance: object, attribute: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or _FRESHNESS.fullmatch(value) is None):
        raise ValueError(f"invalid freshness stamp {_shown(value)}: 1 to 128 of 0-9 a-f .")


def _readMachineId() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            machineId = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return machineId if re.fullmatch(r"[0-9a-f]{32}", machineId) else ""


@functools.cache
def localHostIdentity() -> str:
    """
    Identify this machine: hostname plus machine id where the OS has one.

    Two processes with the same identity share a filesystem, so one may
    reach the other over a UNIX socket. Read once per process: every
    record and every connect asks.
    """
    hostname = re.sub(r"[^\x21-\x7e]", "_", socket.gethostname())[:200] or "localhost"
    machineId = _readMachineId()
    return f"{hostname}/{machineId}" if machineId else hostname


def newInstanceId() -> str:
    """
    A fresh, unique instance id for one registration.
    """
    return uuid.uuid4().hex


@attrs.frozen
class PeerRecord:
    """
    One registered instance of a peer: where it can be reached, and a few
    facts about it.

    @ivar endpoints: client endpoint descriptions, in the peer's order of
        preference, e.g. C{"tcp:host=10.1.2.3:port=4312"}.
    @ivar host: identity of the machine the peer runs on (see
        L{localHostIdentity}).
    @ivar registered: when the record was made, in seconds since the epoch.
    @ivar signature: in a namespace with a shared secret, the HMAC that
        L{txmasse.registry.signed.SignedRegistry} checks; else C{None}. Not
        compared: records that say the same are equal however signed.
    @ivar health: C{passing}, C{warning} or C{critical}, as the peer's own
        checks last found (see L{txmasse.health}); clients skip C{critical}
        instances and try C{warning} ones last.
    @ivar reason: a few words on why, for C{warning} and C{critical}.
    @ivar draining: out of rotation: no client opens a new connection to
        it, open ones go on.
    @ivar drainChanged: when C{draining} last changed (seconds since the
        epoch; 0 for never): the newer decision wins when the peer and
        C{masse drain} both write the record.
    @ivar freshness: in such a namespace, the holder's signed stamp of the
        lease's expiry, renewed by its heartbeats; not part of the JSON
        (the store keeps it beside it) and not compared.
    """

    namespace: str = attrs.field(validator=_validateNamespace)
    name: str = attrs.field(validator=_validateName)
    endpoints: tuple[str, ...] = attrs.field(converter=_toEndpoints)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_toMetadata, hash=False)
    instance: str = attrs.field(factory=newInstanceId, validator=_validateInstance)
    host: str = attrs.field(factory=localHostIdentity, validator=_validateHost)
    registered: float = attrs.field(factory=time.time, validator=_validateTime)
    signature: str | None = attrs.field(default=None, validator=_validateSignature, eq=False)
    health: str = attrs.field(default="passing", validator=_validateHealth)
    reason: str = attrs.field(default="", validator=_validateReason)
    draining: bool = attrs.field(default=False, validator=_validateDraining)
    drainChanged: float = attrs.field(default=0.0, validator=_validateTime)

    @property
    def usable(self) -> bool:
        """
        Whether a client may open a new connection to this instance.
        """
        return self.health != "critical" and not self.draining

    @property
    def state(self) -> str:
        """
        The state as C{masse ls} shows it: C{draining}, C{passing},
        C{warning: REASON} or C{critical: REASON}.
        """
        if self.draining:
            return "draining"
        if self.health == "passing" or not self.reason:
            return self.health
        return f"{self.health}: {self.reason}"
    freshness: str | None = attrs.field(
        default=None, validator=_validateFreshness, eq=False, repr=False
    )

    def toJSON(self) -> bytes:
        """
        Serialise, for the registry's store; the signature only when set, so
        that a record without one serialises as it always did.
        """
        fields: dict[str, object] = {
            "ns": self.namespace,
            "name": self.name,
            "id": self.instance,
            "ep": list(self.endpoints),
            "meta": dict(self.metadata),
            "host": self.host,
            "t": self.registered,
        }
        if self.signature is not None:
            fields["sig"] = self.signature
        # Written only when they say something: a passing record that was
        # never drained reads the same to a txmasse that predates them.
        if self.health != "passing" or self.reason:
            fields["hs"] = self.health
            fields["hr"] = self.reason
        if self.draining or self.drainChanged:
            fields["dr"] = self.draining
            fields["dt"] = self.drainChanged
        return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode("ascii")

    @classmethod
    def fromJSON(cls, data: bytes | str) -> PeerRecord:
        """
        Parse what L{toJSON} wrote, refusing anything else.

        Fields this version does not know (written by a newer txmasse) are
        ignored; health or drain fields that are garbage make the record
        C{critical}, with a logged warning, rather than unreadable.

        @raise ValueError: for garbage, wrong types, missing fields, and
            records larger than L{MAX_RECORD_BYTES}.
        """
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
        if len(data) <= _REMEMBERED_SIZE and cls is PeerRecord:
            return _parseRemembered(data)
        return cls._parse(data)

    @classmethod
    def _parse(cls, data: bytes | str) -> PeerRecord:
        try:
            fields: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"record is not JSON: {e}") from None
        except RecursionError:  # "[[[[...": small, but deeper than Python's stack
            raise ValueError("record is not JSON: nested too deeply") from None
        expected = {"ns", "name", "id", "ep", "meta", "host", "t"}
        if not isinstance(fields, dict) or not expected <= set(fields):
            raise ValueError(
                f"record must be an object with at least the fields {sorted(expected)}"
            )
        return cls(
            **_stateOf(fields),
            namespace=fields["ns"],
            name=fields["name"],
            endpoints=fields["ep"],
            metadata=fields["meta"],
            instance=fields["id"],
            host=fields["host"],
            registered=fields["t"],
            signature=fields.get("sig"),
        )


def _stateOf(fields: dict[str, Any]) -> dict[str, Any]:
    """
    The health and drain fields of a parsed record, as L{PeerRecord}
    arguments; garbage there is C{critical} (and logged), never an error:
    an instance that cannot say it is well is not used.
    """
    state: dict[str, Any] = {}
    if "hs" in fields or "hr" in fields:
        state["health"], state["reason"] = fields.get("hs", "passing"), fields.get("hr", "")
    if "dr" in fields or "dt" in fields:
        state["draining"], state["drainChanged"] = fields.get("dr", False), fields.get("dt", 0.0)
    try:
        for field, validate in (
            ("health", _validateHealth),
            ("reason", _validateReason),
            ("draining", _validateDraining),
            ("drainChanged", _validateTime),
        ):
            if field in state:
                validate(None, None, state[field])
    except ValueError as e:
        log.warn(
            "record of instance {instance!r}: garbage health or drain state, counted as "
            "critical: {error}",
            instance=_shown(fields.get("id")),
            error=str(e),
        )
        return {"health": "critical", "reason": "garbage health state in the record"}
    return state


_REMEMBERED_SIZE = 2048


@functools.lru_cache(maxsize=1024)
def _parseRemembered(data: bytes | str) -> PeerRecord:
    """
    Records are immutable, and a registry returns the same bytes for one
    until it changes: each is parsed and validated once, not on every
    lookup. Errors are not remembered (garbage is refused each time).
    """
    return PeerRecord._parse(data)


_GLOB_CHARS = re.compile(r"[A-Za-z0-9._\-*?\[\]!^]{1,256}")


def isPattern(name: str) -> bool:
    """
    Whether C{name} is a glob with wildcards (C{db-*}) rather than one name.
    """
    return "*" in name or "?" in name or "[" in name


@attrs.frozen
class Glob:
    """
    A name pattern in Redis glob syntax: C{*}, C{?}, C{[abc]}, C{[a-z]},
    C{[^abc]} (or C{[!abc]}).

    Only name characters and these wildcards are allowed, so a pattern can
    never reach past the names of its own namespace.
    """

    pattern: str
    prefix: str = attrs.field(init=False)
    regex: re.Pattern[str] = attrs.field(init=False, eq=False, repr=False)
    luaPattern: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        tokens = _tokenize(self.pattern)
        prefix = ""
        for kind, text in tokens:
            if kind != "literal":
                break
            prefix += text
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(
            self, "regex", re.compile("".join(_toRegex(kind, text) for kind, text in tokens))
        )
        object.__setattr__(
            self, "luaPattern", "^" + "".join(_toLua(kind, text) for kind, text in tokens) + "$"
        )

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


def _tokenize(pattern: object) -> list[tuple[str, str]]:
    """
    Split a glob into literal characters, wildcards and [...] classes.
    """
    if not isinstance(pattern, str) or _GLOB_CHARS.fullmatch(pattern) is None:
        raise ValueError(
            f"invalid pattern {_shown(pattern)}: use name characters and the "
            "wildcards *, ? and [...], at most 256 characters"
        )
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char in "*?":
            tokens.append((char, char))
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1)
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            members = body[1:] if negate else body
            if end < 0 or not members or re.fullmatch(r"[A-Za-z0-9._-]+", members) is None:
                raise ValueError(
                    f"invalid pattern {_shown(pattern)}: '[' at {i} needs name "
                    "characters and a closing ']'"
                )
            tokens.append(("^class" if negate else "class", members))
            i = end + 1
        elif char in "]!^":
            raise ValueError(f"invalid pattern {_shown(pattern)}: stray {char!r} at {i}")
        else:
            tokens.append(("literal", char))
            i += 1
    return tokens


def _classRanges(members: str) -> list[str]:
    """
    Members of a class as single characters and 'a-z' ranges.
    """
    parts: list[str] = []
    i = 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == "-":
            low, high = members[i], members[i + 2]
            if not (low.isalnum() and high.isalnum()) or low > high:
                raise ValueError(f"invalid range {low}-{high} in pattern class [{members}]")
            parts.append(f"{low}-{high}")
            i += 3
        else:
            parts.append(members[i])
            i += 1
    return parts


def _toRegex(kind: str, text: str) -> str:
    if kind == "*":
        return ".*"
    if kind == "?":
        return "."
    if kind == "literal":
        return re.escape(text)
    body = "".join(part if len(part) == 3 else re.escape(part) for part in _classRanges(text))
    return f"[{'^' if kind == '^class' else ''}{body}]"


def _luaEscape(char: str) -> str:
    return char if char.isalnum() else "%" + char


def _toLua(kind: str, text: str) -> str:
    if kind == "*":
        return ".*"
    if kind == "?":
        return "."
    if kind == "literal":
        return _luaEscape(text)
    body = "".join(part if len(part) == 3 else _luaEscape(part) for part in _classRanges(text))
    return f"[{'^' if kind == '^class' else ''}{body}]"
