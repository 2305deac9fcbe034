"""
What the dashboard shows of a record, as JSON: the one place that knows
where health and drain state live in a record.
"""

from __future__ import annotations

from typing import Any

from txmasse.records import PeerRecord

HEALTH_STATES = ("passing", "warning", "critical")


def health(record: PeerRecord) -> tuple[str, str | None]:
    """
    The instance's health state and its reason: C{passing} for records that
    carry none (every record until peers publish health checks).
    """
    state: Any = getattr(record, "health", None)
    if state is None:
        return "passing", None
    reason = getattr(state, "reason", None)
    state = getattr(state, "state", state)
    if not isinstance(state, str) or state not in HEALTH_STATES:
        return "critical", f"unreadable health state {state!r}"
    return state, reason if isinstance(reason, str) else None


def draining(record: PeerRecord) -> bool:
    """
    Whether the instance is out of rotation (records without drain state
    are not).
    """
    return getattr(record, "draining", False) is True


def recordJSON(record: PeerRecord, expiresIn: float | None = None) -> dict[str, Any]:
    """
    The record as the page and C{/api/peers} show it; C{expiresIn} is the
    seconds its lease had left when read, if known.
    """
    state, reason = health(record)
    return {
        "namespace": record.namespace,
        "name": record.name,
        "instance": record.instance,
        "endpoints": list(record.endpoints),
        "metadata": dict(record.metadata),
        "host": record.host,
        "registered": record.registered,
        "expiresIn": None if expiresIn is None else round(expiresIn, 3),
        "health": state,
        "reason": reason,
        "draining": draining(record),
    }
