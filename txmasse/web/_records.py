"""
What the dashboard shows of a record, as JSON: the one place that knows
where health and drain state live in a record.
"""

from __future__ import annotations

from typing import Any

from txmasse.records import PeerRecord


def health(record: PeerRecord) -> tuple[str, str | None]:
    """
    The instance's health state and its reason (C{None} when it gives none);
    records from peers without checks are C{passing}.
    """
    return record.health, record.reason or None


def draining(record: PeerRecord) -> bool:
    """
    Whether the instance is out of rotation.
    """
    return record.draining


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
