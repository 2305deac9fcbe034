"""
RPC by name, in one process: schemas (found, published, read back, refused),
method URIs, argument values, the provides= option, and in-process calls.
"""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python import usage

from tests.rpc_peer import Add, Count, Greet, Greeter, GreetingRefused
from txmasse import MasseServerEndpoint, MemoryRegistry, PeerRecord
from txmasse.rpc import (
    RPC,
    NoProvider,
    Proxy,
    PublishedError,
    Schema,
    SchemaError,
    commandFromSchema,
    describeCommand,
    describeCommands,
    parseURI,
    published,
    readSchema,
    schemaMetadata,
    schemaOf,
)
from txmasse.rpc.schema import MAX_SCHEMA_BYTES, respondedCommands
from txmasse.rpc.values import parsePairs, toJSON
from txmasse.service import Options

# Schemas


def test_describe_command() -> None:
    schema = describeCommand(Count)
    assert schema.toJSON() == {
        "a": [
            ["items", {"ListOf": "Integer"}],
            ["scale", "Float", True],
            ["exact", "Boolean", True],
        ],
        "r": [["total", "Float"], ["pid", "Integer"]],
    }
    assert describeCommand(Greet).errors == ("GREETING_REFUSED",)


def test_responders_found_on_the_class() -> None:
    """
    The commands a protocol class answers come from its Command.responder
    declarations, inherited ones included; AMP's own StartTLS is left out.
    """
    assert respondedCommands(Greeter) == [Count, Greet]

    class More(Greeter):
        @Add.responder
        def add(self, a: int, b: int) -> dict[str, int]:
            return {"sum": a + b}

    assert respondedCommands(More) == [Add, Count, Greet]
    assert respondedCommands(amp.AMP) == []
    assert respondedCommands(int) == []


class Unpublishable(amp.Command):
    arguments = [(b"where", amp.Path())]


class Odd(amp.AMP):
    @Unpublishable.responder
    def odd(self, where: object) -> dict[str, object]:
        return {}

    @Add.responder
    def add(self, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}


def test_unpublishable_command() -> None:
    """
    A command whose types cannot be published: named in the error when
    declared; left out with a warning when found by looking.
    """
    with pytest.raises(SchemaError, match="'Unpublishable' argument field 'where': AMP type Path"):
        describeCommand(Unpublishable)
    with capturedLogs() as events:
        metadata = published(Factory.forProtocol(Odd))
    warnings = [str(event.get("error")) for event in events]
    schema = readSchema(metadata)
    assert schema is not None and list(schema.commands) == ["Add"]
    assert any("Unpublishable" in warning for warning in warnings)


def test_round_trip_through_a_record() -> None:
    metadata = published(Factory.forProtocol(Greeter))
    record = PeerRecord("dev", "greeter", ["tcp:host=127.0.0.1:port=1"], metadata)
    back = PeerRecord.fromJSON(record.toJSON())
    schema = schemaOf(back)
    assert schema is not None
    assert schema.commands["Greet"] == describeCommand(Greet)
    assert schema.commands["Count"] == describeCommand(Count)


def test_not_amp_publishes_nothing() -> None:
    assert published(Factory.forProtocol(amp.AMP)) == {}
    assert published(Factory()) == {}


def test_large_schema_in_parts() -> None:
    """
    A schema longer than one metadata value is published in parts and read
    back whole; one over the bound is refused.
    """
    commands = [
        type(
            f"Command{i}",
            (amp.Command,),
            {"arguments": Count.arguments, "response": Count.response},
        )
        for i in range(40)
    ]
    metadata = schemaMetadata(describeCommands(commands))
    assert len(metadata) > 2 and "amp.commands.1" in metadata
    record = PeerRecord("dev", "big", ["tcp:host=127.0.0.1:port=1"], metadata)
    schema = readSchema(record.metadata)
    assert schema is not None and len(schema.commands) == 40
    many = [
        type(f"C{i}", (amp.Command,), {"arguments": Count.arguments, "response": Count.response})
        for i in range(64)
    ]
    with pytest.raises(SchemaError, match=f"over the {MAX_SCHEMA_BYTES}"):
        schemaMetadata(describeCommands(many))


def _schemaText(commands: Any) -> str:
    return json.dumps({"v": 1, "c": commands})


@pytest.mark.parametrize(
    "metadata, part",
    [
        ({"amp.commands": "{nope"}, "schema is not JSON"),
        ({"amp.commands": '{"v": 2, "c": {}}'}, "schema must be an object"),
        ({"amp.commands": _schemaText({"Greet": {"a": [["name", "Banana"]], "r": []}})},
         "command 'Greet' arguments field 'name': unknown type 'Banana'"),
        ({"amp.commands": _schemaText({"Greet": {"a": [["not valid", "Unicode"]], "r": []}})},
         "field name 'not valid'"),
        ({"amp.commands": _schemaText({"Gr/eet": {"a": [], "r": []}})}, "invalid command name"),
        ({"amp.commands": _schemaText({"Greet": {"a": [], "r": [["x", {"ListOf": 3}]]}})},
         "command 'Greet' response field 'x'"),
        ({"amp.commands": _schemaText({"Greet": {"a": [], "r": [], "e": [1]}})}, "'e' must be"),
        ({"amp.commands.1": "{}"}, "without its first part"),
        ({"amp.commands": "{}", "amp.commands.2": "x"}, "part 'amp.commands.2' does not follow"),
    ],
)  # fmt: skip
def test_garbage_schema(metadata: dict[str, str], part: str) -> None:
    with pytest.raises(SchemaError, match=part.replace("(", r"\(").replace("[", r"\[")):
        readSchema(metadata)


def test_garbage_schema_skipped_with_warning() -> None:
    record = PeerRecord("dev", "junk", ["tcp:host=127.0.0.1:port=1"], {"amp.commands": "[1"})
    with capturedLogs() as events:
        assert schemaOf(record) is None
    warnings = [
        e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"
    ]
    assert warnings and "dev/junk" in warnings[0]["who"]


def test_schema_command_classes() -> None:
    """
    A command built from a schema encodes as the original does, and an
    answer that does not fit its schema fails naming the field.
    """
    built = commandFromSchema(describeCommand(Count))
    arguments = {"items": [1, 2], "scale": 0.5}
    protocol = amp.AMP()
    assert built.makeArguments(arguments, protocol) == Count.makeArguments(arguments, protocol)
    lying = commandFromSchema(
        Schema.fromJSON(_schemaText({"Greet": {"a": [], "r": [["greeting", "Integer"]]}})).commands[
            "Greet"
        ]
    )
    with pytest.raises(Exception, match="response 'greeting' is not Integer"):
        lying.parseResponse(amp.AmpBox(greeting=b"hello"), protocol)


# URIs


def test_parse_uri() -> None:
    uri = parseURI("masse://dev/greeter/Greet")
    assert (uri.namespace, uri.peer, uri.command, uri.isGlob) == ("dev", "greeter", "Greet", False)
    assert parseURI("masse://dev/greeter?/Greet").isGlob
    assert parseURI("masse://dev/*/Greet").peer == "*"
    assert str(parseURI("masse://dev/g*", command=False)) == "masse://dev/g*"


@pytest.mark.parametrize(
    "text, part",
    [
        ("http://dev/greeter/Greet", "scheme 'http' is not 'masse'"),
        ("dev/greeter/Greet", "must look like masse://NS/PEER/COMMAND"),
        ("masse://dev/greeter", "the command is missing"),
        ("masse:///greeter/Greet", "the namespace is missing"),
        ("masse://dev//Greet", "the peer is missing"),
        ("masse://d v/greeter/Greet", "invalid namespace 'd v'"),
        ("masse://dev/gr@eter/Greet", "invalid peer name 'gr@eter'"),
        ("masse://dev/gr[eter/Greet", "invalid pattern 'gr[eter'"),
        ("masse://dev/greeter/Gr:eet", "invalid command name 'Gr:eet'"),
        ("masse://dev/greeter/Greet/more", "unexpected part 'more'"),
    ],
)
def test_bad_uri(text: str, part: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseURI(text)
    assert part in str(caught.value) and "\n" not in str(caught.value)


# Values


def test_parse_pairs() -> None:
    schema = describeCommand(Count)
    assert parsePairs(schema, ["items=[1, 2]", "scale=2.5", "exact=yes"]) == {
        "items": [1, 2],
        "scale": 2.5,
        "exact": True,
    }
    stamp = commandFromSchema(
        Schema.fromJSON(
            _schemaText(
                {"T": {"a": [["at", "DateTime"], ["d", "Decimal"], ["b", "String"]], "r": []}}
            )
        ).commands["T"]
    )
    values = parsePairs(stamp.published, ["at=2026-01-02T03:04:05+00:00", "d=1.50", "b=x"])
    assert values["at"] == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert values["d"] == decimal.Decimal("1.50") and values["b"] == b"x"
    assert toJSON(values) == {"at": "2026-01-02T03:04:05+00:00", "d": "1.50", "b": "x"}


@pytest.mark.parametrize(
    "pairs, part",
    [
        (["items=abc"], "Count: argument 'items' must be ListOf(Integer) (JSON), got 'abc'"),
        (['items=[1, "x"]'], "argument 'items'[1] must be Integer, got 'x'"),
        (["items=[1]", "scale=fast"], "argument 'scale' must be Float, got 'fast'"),
        (["items=[1]", "exact=maybe"], "argument 'exact' must be Boolean"),
        (["scale=1"], "missing argument 'items'"),
        (["items=[1]", "size=3"], "unknown argument 'size' (arguments: items, scale, exact)"),
        (["items"], "argument 'items' must be NAME=VALUE"),
        (["items=[1]", "items=[2]"], "argument 'items' given twice"),
    ],
)
def test_bad_pairs(pairs: list[str], part: str) -> None:
    with pytest.raises(ValueError) as caught:
        parsePairs(describeCommand(Count), pairs)
    assert part in str(caught.value)


def test_datetime_needs_offset() -> None:
    schema = Schema.fromJSON(_schemaText({"T": {"a": [["at", "DateTime"]], "r": []}})).commands["T"]
    with pytest.raises(ValueError, match="argument 'at' must be DateTime"):
        parsePairs(schema, ["at=2026-01-02T03:04:05"])


# The provides= option


def test_provides_option() -> None:
    endpoint = serverFromString(
        reactor,
        "masse:calc:registry=memory\\://:provides=tests.rpc_peer.Add,tests.rpc_peer.Greeter",
    )
    assert isinstance(endpoint, MasseServerEndpoint)
    assert endpoint.provides[0] is Add


@pytest.mark.parametrize(
    "value, part",
    [
        ("nomodule_xyz.Add", "cannot load 'nomodule_xyz.Add'"),
        ("builtins.int", "<class 'int'> is not an AMP Command class"),
        ("tests.rpc_peer.Add,", "has an empty item"),
        ("tests.test_rpc.Unpublishable", "AMP type Path cannot be published"),
    ],
)
def test_bad_provides(value: str, part: str) -> None:
    with pytest.raises(ValueError) as caught:
        serverFromString(reactor, f"masse:calc:registry=memory\\://:provides={value}")
    assert part in str(caught.value) and "invalid masse: endpoint" in str(caught.value)


# Calls in this process


@pytest_twisted.ensureDeferred
async def test_local_invocation() -> None:
    """
    A peer this process serves is left out unless asked for, then called
    in-process with the same semantics as over the wire: arguments checked,
    errors mapped to the command's exceptions (or carrying the peer's
    message), answers parsed.
    """
    registry = MemoryRegistry(reactor)
    endpoint = MasseServerEndpoint(
        reactor,
        "greeter",
        "dev",
        registry,
        endpoint=serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
    )
    port = await endpoint.listen(Factory.forProtocol(Greeter))
    try:
        with pytest.raises(NoProvider, match="1 served by this process left out"):
            await RPC(registry, reactor).call("masse://dev/greeter/Greet", name="Alice")
        rpc = RPC(registry, reactor, includeSelf=True)
        answer = await rpc.call("masse://dev/greeter/Greet", name="Alice")
        assert answer["greeting"].startswith("hi there, Alice")
        total = await rpc.call("masse://dev/gree*/Count", items=[1, 2, 3], scale=2.0)
        assert total["total"] == 12.0
        with pytest.raises(GreetingRefused, match="will not greet 'nobody'"):
            await rpc.call("masse://dev/greeter/Greet", Greet, name="nobody")
        with pytest.raises(PublishedError, match="will not greet 'nobody'") as caught:
            await rpc.call("masse://dev/greeter/Greet", name="nobody")
        assert caught.value.code == "GREETING_REFUSED"
        with pytest.raises(ValueError, match="argument 'name' must be Unicode, got 3"):
            await rpc.call("masse://dev/greeter/Greet", name=3)
        with pytest.raises(NoProvider, match="provides 'Add' \\(they provide: Count, Greet\\)"):
            await rpc.call("masse://dev/greeter/Add", a=1, b=2)
        with pytest.raises(ValueError, match="command class Add is 'Add', not 'Greet'"):
            await rpc.call("masse://dev/greeter/Greet", Add, a=1, b=2)
        answers = await rpc.callAll("masse://dev/*/Greet", name="Bob")
        assert [a["greeting"][:12] for a in answers.values()] == ["hi there, Bo"]  # type: ignore[index]
        assert [r.name for r in await rpc.providers("Count", "dev")] == ["greeter"]
    finally:
        await port.stopListening()  # type: ignore[misc]


def test_twistd_provides_option() -> None:
    base = ["--name", "calc", "--factory", "tests.rpc_peer:greeterFactory"]
    options = Options()
    options.parseOptions([*base, "--provides", "tests.rpc_peer.Add", "--registry", "memory://"])
    assert options["provides"] == (Add,)
    with pytest.raises(usage.UsageError, match=r"provides: cannot load 'tests\.rpc_peer\.Nope'"):
        Options().parseOptions([*base, "--provides", "tests.rpc_peer.Nope"])


@pytest.mark.parametrize(
    "make, part",
    [
        (lambda r: RPC(r, reactor, timeout=float("nan")), "timeout=nan"),
        (lambda r: RPC(r, reactor, pick="best"), "pick='best': must be one of"),
        (lambda r: RPC(r, reactor, proto="tcp"), "proto='tcp'"),
        (lambda r: Proxy("masse://dev", r, reactor), "the peer is missing (masse://NS/PEER)"),
        (lambda r: Proxy("masse://dev/g/Greet", r, reactor), "unexpected part 'Greet'"),
        (lambda r: Proxy("masse://dev/g", r, reactor, timeout=0), "timeout=0"),
    ],
)
def test_bad_options(make: Any, part: str) -> None:
    with pytest.raises(ValueError) as caught:
        make(MemoryRegistry(reactor))
    assert part in str(caught.value)
