"""
The live dashboard of a registry, as a C{twisted.web} resource (and the
C{masse web} command): see C{docs/web.md}.

L{DashboardResource} loads on first use, so that the C{masse} command's
other subcommands do not pay for C{twisted.web} and C{prometheus_client}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txmasse.web._resource import DashboardResource

__all__ = ["DashboardResource"]


def __getattr__(name: str) -> Any:
    if name == "DashboardResource":
        from txmasse.web._resource import DashboardResource

        return DashboardResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
