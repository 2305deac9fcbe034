"""
RPC by name over AMP: what each peer provides is published in its record,
commands are named by URI (C{masse://NS/PEER/COMMAND}), and called on one
instance, on every match, through a proxy that reconnects by name, or
in-process for a peer this process serves.
"""

from txmasse.rpc.calls import RPC, describe, providers, schemaOf
from txmasse.rpc.errors import (
    CallInterrupted,
    NoProvider,
    ProxyUnavailable,
    PublishedError,
    RemoteCallFailed,
    RPCError,
    SchemaMismatch,
)
from txmasse.rpc.proxy import Proxy
from txmasse.rpc.publish import checkProvides, loadProvides, published
from txmasse.rpc.schema import (
    MAX_SCHEMA_BYTES,
    CommandSchema,
    Field,
    Schema,
    SchemaError,
    commandFromSchema,
    describeCommand,
    describeCommands,
    readSchema,
    schemaMetadata,
)
from txmasse.rpc.uri import MethodURI, parseURI

__all__ = [
    "MAX_SCHEMA_BYTES",
    "RPC",
    "CallInterrupted",
    "CommandSchema",
    "Field",
    "MethodURI",
    "NoProvider",
    "Proxy",
    "ProxyUnavailable",
    "PublishedError",
    "RPCError",
    "RemoteCallFailed",
    "Schema",
    "SchemaError",
    "SchemaMismatch",
    "checkProvides",
    "commandFromSchema",
    "describe",
    "describeCommand",
    "describeCommands",
    "loadProvides",
    "parseURI",
    "providers",
    "published",
    "readSchema",
    "schemaMetadata",
    "schemaOf",
]
