"""
Transports as plugins: a server endpoint of a new kind can listen under a
name once a plugin says how clients reach what it listens on.

A server endpoint's port reports its address (C{getHost()}); txmasse
publishes, for each, the client endpoint description that reaches it:
C{tcp:} for TCP, C{unix:} for a UNIX socket. For any other address, an
L{IMasseTransport} plugin (a Twisted plugin, found with
L{getPlugins<twisted.plugin.getPlugins>} in a C{twisted/plugins}
directory, beside the endpoint parsers of the same transport) is asked.
Clients then choose among transports with C{proto=}, as for the built-in
ones.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface


class IMasseTransport(Interface):
    """
    How clients reach a port listened on by one kind of server endpoint:
    the counterpart of Twisted's endpoint string parsers. The object must
    also provide L{IPlugin<twisted.plugin.IPlugin>}.
    """

    prefix: str = Attribute("The client endpoint prefix it describes (e.g. 'xor').")

    def describe(address: IAddress, host: str) -> str | None:  # noqa: N805
        """
        The client endpoint description that reaches C{address}, as
        C{clientFromString} reads it (with this plugin's C{prefix}); C{None}
        if C{address} is not of this transport's kind.

        @param host: the host to publish for it: C{advertise=} if given,
            else the local address that routes to the registry's host.
        @raise ValueError: an address of this kind that cannot be reached.
        """


def describeAddress(address: IAddress, host: str) -> str | None:
    """
    What the first plugin that knows C{address}'s kind describes it as;
    C{None} if none does.
    """
    for plugin in getPlugins(IMasseTransport):
        description = plugin.describe(address, host)
        if description is not None:
            return str(description)
    return None
