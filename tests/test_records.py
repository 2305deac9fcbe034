"""
Names, records and patterns: what is accepted, what is refused and how.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import RedisServer
from txmasse.records import MAX_RECORD_BYTES, Glob, PeerRecord, validateName

GOOD = ["db", "db-server-1", "A", "9", "a.b_c-d", "x" * 128]
BAD = ["", "-db", ".db", "_db", "db server", "db:1", "db/1", "db*", "é", "x" * 129, "db\n", None, 7]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name: str) -> None:
    assert validateName(name) == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names_name_the_value_and_the_rule(name: Any) -> None:
    with pytest.raises(ValueError) as caught:
        validateName(name, "namespace")
    message = str(caught.value)
    assert message.startswith(f"invalid namespace {name!r}"[:40])
    assert "letter or digit" in message


def test_record_round_trip_and_immutability() -> None:
    record = PeerRecord("dev", "db", ["tcp:host=10.0.0.7:port=4312"], {"role": "primary"})
    again = PeerRecord.fromJSON(record.toJSON())
    assert again == record and hash(again) == hash(record)
    with pytest.raises(AttributeError):
        record.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.metadata["role"] = "x"  # type: ignore[index]
    assert record.instance != PeerRecord("dev", "db", ["tcp:host=a:port=1"]).instance


def test_parsing_is_remembered_for_the_same_bytes_but_never_for_garbage() -> None:
    data = PeerRecord("dev", "db", ["tcp:host=a:port=1"]).toJSON()
    assert PeerRecord.fromJSON(data) is PeerRecord.fromJSON(data)  # immutable: safe to share
    metadata = {f"k{i}": "v" * 1000 for i in range(3)}
    big = PeerRecord("dev", "db", ["tcp:host=a:port=1"], metadata).toJSON()
    assert PeerRecord.fromJSON(big) == PeerRecord.fromJSON(big)
    garbage = data.replace(b'"db"', b'"d*b"')
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid name"):
            PeerRecord.fromJSON(garbage)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"endpoints": []}, "1 to 16 endpoints"),
        ({"endpoints": "tcp:host=a:port=1"}, "list of descriptions"),
        ({"endpoints": ["no-prefix"]}, "invalid endpoint description"),
        ({"endpoints": ["tcp:host=a\nport=1"]}, "invalid endpoint description"),
        ({"metadata": {"bad key": "v"}}, "invalid metadata key"),
        ({"metadata": {"k": 1}}, "invalid metadata value"),
        ({"metadata": {"k": "v" * 2000}}, "invalid metadata value"),
        ({"metadata": {"k": "1\nweb  fake  tcp:host=6.6.6.6"}}, "none of them a control character"),
        ({"metadata": {"k": "abc\u202edcba"}}, "invalid metadata value for 'k'"),
        ({"metadata": {"k": "a\u2028web  fake"}}, "invalid metadata value for 'k'"),
        ({"metadata": {"k": "\x1b[31mred"}}, "invalid metadata value for 'k'"),
        ({"host": "two words"}, "invalid host identity"),
        ({"registered": -1}, "invalid registration time"),
        ({"instance": "x/y"}, "invalid instance id"),
    ],
)
def test_bad_records(change: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"namespace": "dev", "name": "db", "endpoints": ["tcp:host=a:port=1"]}
    with pytest.raises(ValueError, match=message):
        PeerRecord(**{**fields, **change})


def test_garbage_records_are_refused() -> None:
    good = json.loads(PeerRecord("dev", "db", ["tcp:host=a:port=1"]).toJSON())
    for garbage in [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        json.dumps({**good, "ns": "../x"}).encode(),
        json.dumps({**good, "ep": [1]}).encode(),
        b" " * (MAX_RECORD_BYTES + 1),
    ]:
        with pytest.raises(ValueError):
            PeerRecord.fromJSON(garbage)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@settings(max_examples=300)
def test_any_bytes_parse_or_raise_value_error(data: bytes) -> None:
    try:
        PeerRecord.fromJSON(data)
    except ValueError:
        pass


@pytest.mark.parametrize(
    "pattern, prefix",
    [("db-*", "db-"), ("db", "db"), ("*", ""), ("d?b", "d"), ("db-[12]x", "db-")],
)
def test_glob_literal_prefix(pattern: str, prefix: str) -> None:
    assert Glob(pattern).prefix == prefix


@pytest.mark.parametrize(
    "pattern", ["", "db-[", "db]", "a:b", "a{b}", "[]", "[z-a]", "a\\*", "a/b"]
)
def test_bad_globs(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"pattern|range"):
        Glob(pattern)


NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)
PATTERNS = st.lists(
    st.sampled_from(["*", "?", "a", "b", "1", ".", "-", "_", "[ab]", "[^a]", "[a-c]", "[!.]"]),
    min_size=1,
    max_size=6,
).map("".join)


def test_lua_and_python_globs_agree(redis_server: RedisServer) -> None:
    """
    Redis filters names with the Lua pattern, the memory registry with the
    regular expression: both must select the same names.
    """

    @given(PATTERNS, st.lists(NAMES, min_size=1, max_size=20))
    @settings(max_examples=200, deadline=None)
    def agree(pattern: str, names: list[str]) -> None:
        glob = Glob(pattern)
        script = (
            "local out = {} for i, n in ipairs(ARGV) do "
            "if string.find(n, KEYS[1]) then out[#out+1] = n end end return out"
        )
        inLua = redis_server.command("EVAL", script, 1, glob.luaPattern, *names)
        assert [n.decode() for n in inLua] == [n for n in names if glob.matches(n)]

    agree()


def test_metadata_may_hold_any_text_but_control_characters() -> None:
    text = "Zürich\u00a0Ost, \u200dzone: 東京"  # a no-break space and a zero-width joiner too
    stored = PeerRecord("dev", "db", ["tcp:host=h:port=1"], {"site": text})
    assert PeerRecord.fromJSON(stored.toJSON()).metadata["site"] == text
