"""
How a record's freshness stamp is stored beside it.

In a signed namespace a holder stamps its record at every heartbeat with a
signature over the lease's expiry (L{txmasse.registry.signed}); the stamp
is not part of the record (it is not signed by the record's signature, nor
compared), so the store keeps it in front of the record's JSON:
C{STAMP JSON}. A record without a stamp is stored as its JSON alone, as it
always was. The stamp holds no space and never starts with a brace.
"""

from __future__ import annotations

import re

import attrs

from txmasse.records import PeerRecord

_STAMP = re.compile(rb"[0-9a-f.]{1,128}")


def stored(record: PeerRecord) -> bytes:
    """
    What the store keeps for C{record}: its JSON, after its stamp if it has one.
    """
    data = record.toJSON()
    if record.freshness is None:
        return data
    return record.freshness.encode("ascii") + b" " + data


def unstamped(data: bytes) -> tuple[str | None, bytes]:
    """
    Split what the store keeps into the stamp (C{None} if none) and the JSON.

    @raise ValueError: if what stands before the JSON is not a stamp.
    """
    if data[:1] == b"{":
        return None, data
    stamp, _, rest = data.partition(b" ")
    if _STAMP.fullmatch(stamp) is None or rest[:1] != b"{":
        raise ValueError("garbage before the record's JSON, where a freshness stamp belongs")
    return stamp.decode("ascii"), rest


PARSED_KEPT = 4096
"""Records kept parsed, by what the store holds: the same bytes come back
at every lookup and event of an instance, and parsing and checking them
costs a cold connect more than a tenth of its registry round trip."""

_parsed: dict[bytes, PeerRecord] = {}


def parsed(data: bytes | str) -> PeerRecord:
    """
    The record the store keeps as C{data}, with its stamp as C{freshness}
    (records are immutable, so the same bytes give the same record).

    @raise ValueError: for garbage (see L{PeerRecord.fromJSON}).
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    record = _parsed.get(raw)
    if record is None:
        stamp, body = unstamped(raw)
        record = PeerRecord.fromJSON(body)
        if stamp is not None:
            record = attrs.evolve(record, freshness=stamp)
        if len(_parsed) >= PARSED_KEPT:
            _parsed.clear()
        _parsed[raw] = record
    return record
