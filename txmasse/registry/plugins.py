"""
Registries as plugins: a package adds a URL scheme, and every place that
takes a registry URL (C{registryFromURL}, C{masse:...:registry=},
C{twistd masse --registry}, C{masse --registry}) accepts it.

A scheme is announced with a packaging entry point in the group
C{txmasse.registries}, named after the scheme, pointing at an object that
provides L{IRegistryScheme}::

    [project.entry-points."txmasse.registries"]
    sql = "masse_sql:scheme"

Entry points rather than Twisted's plugin directories: finding them imports
nothing but the scheme asked for, they work with every way of installing a
package (editable ones included, which hide C{twisted/plugins}), and the
standard library reads them (C{importlib.metadata}). L{registerScheme} adds
one in-process, for applications and tests that do not package theirs.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from zope.interface import Attribute, Interface

ENTRY_POINT_GROUP = "txmasse.registries"

_registered: dict[str, Any] = {}
_found: dict[str, Any] | None = None


class IRegistryScheme(Interface):
    """
    One registry URL scheme: how to read its URLs and open its registries.
    """

    scheme: str = Attribute("The URL scheme, lower case, e.g. 'sql'.")

    def parseURL(url: str) -> Any:  # noqa: N805
        """
        Check C{url} and return it parsed: a
        L{RegistryURL<txmasse.registry.url.RegistryURL>} (see
        L{parseGenericURL<txmasse.registry.url.parseGenericURL>}, which does
        the usual work), whose C{display} is the URL without its password.

        @raise ValueError: naming the bad part (passwords in the message
            are hidden by the caller).
        """

    def fromURL(reactor: Any, parsed: Any) -> Any:  # noqa: N805
        """
        A new registry (an L{IRegistry<txmasse.registry.IRegistry>}) for
        C{parsed}; txmasse shares it per URL and process.
        """


def registerScheme(plugin: Any) -> None:
    """
    Make C{plugin} (an L{IRegistryScheme}) answer for its scheme in this
    process, before and above any entry point of the same name.

    @raise ValueError: if it does not provide L{IRegistryScheme}.
    """
    if not IRegistryScheme.providedBy(plugin):
        raise ValueError(f"{plugin!r} does not provide IRegistryScheme")
    _registered[str(plugin.scheme).lower()] = plugin


def schemePlugin(scheme: str) -> Any | None:
    """
    The plugin for C{scheme}, registered or found as an entry point; else
    C{None}.

    @raise ValueError: if the entry point cannot be loaded, or what it
        names does not provide L{IRegistryScheme}.
    """
    scheme = scheme.lower()
    if scheme in _registered:
        return _registered[scheme]
    point = _entryPoints().get(scheme)
    if point is None:
        return None
    try:
        plugin = point.load()
    except Exception as e:
        raise ValueError(
            f"the registry plugin for {scheme}:// ({point.value}) failed to load: {e}"
        ) from None
    if not IRegistryScheme.providedBy(plugin):
        raise ValueError(f"the registry plugin {point.value} does not provide IRegistryScheme")
    _registered[scheme] = plugin
    return plugin


def pluginSchemes() -> list[str]:
    """
    The schemes plugins offer here, sorted.
    """
    return sorted({*_registered, *_entryPoints()})


def _entryPoints() -> dict[str, Any]:
    global _found
    if _found is None:
        _found = {point.name.lower(): point for point in entry_points(group=ENTRY_POINT_GROUP)}
    return _found
