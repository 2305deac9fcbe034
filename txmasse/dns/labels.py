"""
How txmasse names become DNS names, and back.

DNS names are case-insensitive and dotted; txmasse names are
case-sensitive and may hold dots. So a name (or instance id) is a label
only if it has no dot and at most 63 characters, and it is the label of
its lowercase form: C{DB} answers as C{db}. Two live names (or instances)
that fold to one label are ambiguous, and refused rather than guessed.
Namespaces cannot be listed cheaply, so a namespace label is taken as
written: only lowercase namespaces are reachable by DNS.
"""

from __future__ import annotations

import functools
import re

import attrs

MAX_LABEL = 63
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL = re.compile(rb"[a-z0-9][a-z0-9_-]{0,62}")


def labelOf(name: str) -> str | None:
    """
    The DNS label for a txmasse name or instance id, or C{None} when it
    cannot be one (it holds a dot, or is longer than 63 characters).
    """
    if "." in name or len(name) > MAX_LABEL:
        return None
    return name.lower()


def checkDomain(domain: str) -> str:
    """
    The zone's domain in canonical form (lowercase, no trailing dot).

    @raise ValueError: naming the bad label.
    """
    text = domain.strip().lower().removesuffix(".")
    if not text:
        raise ValueError(f"--domain {domain!r}: must name a zone, such as 'masse'")
    if len(text) > 200:
        raise ValueError(f"--domain {domain!r}: longer than 200 characters")
    for label in text.split("."):
        if _DOMAIN_LABEL.fullmatch(label) is None:
            raise ValueError(
                f"--domain {domain!r}: bad label {label!r} (letters, digits and inner "
                "'-', 1 to 63 characters)"
            )
    return text


@attrs.frozen
class Target:
    """
    What a query name inside the zone asks about.

    @ivar kind: C{apex} (the domain itself), C{namespace} (C{NS.DOMAIN}),
        C{services} (C{_tcp.NS.DOMAIN}), C{name} (C{NAME.NS.DOMAIN}),
        C{service} (C{_NAME._tcp.NS.DOMAIN}), C{instance}
        (C{INSTANCE.NAME.NS.DOMAIN}), or C{none} for a name that cannot
        exist in the zone.
    """

    kind: str
    namespace: str = ""
    name: str = ""
    instance: str = ""


NOWHERE = Target("none")


@functools.lru_cache(maxsize=4096)
def parseQueryName(qname: bytes, domain: bytes) -> Target | None:
    """
    Where C{qname} points in the zone C{domain} (lowercase, no trailing
    dot); C{None} if it is outside the zone. Remembered: resolvers ask the
    same few names over and over.
    """
    name = qname.lower().removesuffix(b".")
    if name == domain:
        return Target("apex")
    if not name.endswith(b"." + domain):
        return None
    labels = name[: -len(domain) - 1].split(b".")
    labels.reverse()
    namespace = labels[0]
    if _LABEL.fullmatch(namespace) is None:
        return NOWHERE
    ns = namespace.decode("ascii")
    if len(labels) == 1:
        return Target("namespace", ns)
    if len(labels) == 2:
        if labels[1] == b"_tcp":
            return Target("services", ns)
        return _named("name", ns, labels[1])
    if len(labels) == 3:
        if labels[1] == b"_tcp" and labels[2].startswith(b"_"):
            return _named("service", ns, labels[2][1:])
        if _LABEL.fullmatch(labels[2]) is None:
            return NOWHERE
        target = _named("instance", ns, labels[1])
        return attrs.evolve(target, instance=labels[2].decode("ascii")) if target.name else NOWHERE
    return NOWHERE


def _named(kind: str, namespace: str, label: bytes) -> Target:
    if _LABEL.fullmatch(label) is None:
        return NOWHERE
    return Target(kind, namespace, label.decode("ascii"))
