"""
Reading PEM files: certificates and private keys for peer TLS and for
verified TLS to Redis, read the same way with the same errors.
"""

from __future__ import annotations

import re

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)




@attrs.frozen
class Spelling:
    """
    How an error message names an option, as the user wrote it: C{cert=PATH}
    in an endpoint string or a URL, C{--cert PATH} on a command line.
    """

    flags: bool = False

    def name(self, option: str) -> str:
        return f"--{option}" if self.flags else f"{option}="

    def given(self, option: str, value: str) -> str:
        return f"--{option} {value}" if self.flags else f"{option}={value}"


OPTIONS = Spelling()
"""Options as in C{masse:} endpoint strings and registry URLs."""

FLAGS = Spelling(flags=True)
"""Options as in the C{masse} command and C{twistd masse}."""


def readPEM(option: str, path: str, spelling: Spelling = OPTIONS) -> bytes:
    """
    The bytes of the file that option C{option} names.

    @raise ValueError: naming the option and file when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        given = spelling.given(option, path)
        raise ValueError(f"{given}: cannot read it ({e.strerror or e})") from None


def loadCertificates(
    option: str, path: str, data: bytes, spelling: Spelling = OPTIONS
) -> list[x509.Certificate]:
    """
    Every PEM certificate in C{data}, in order.

    @raise ValueError: if it holds none.
    """
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{spelling.given(option, path)}: no PEM certificate in it") from None


_KEY_BLOCK = re.compile(rb"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def loadPrivateKey(
    option: str, path: str, data: bytes, spelling: Spelling = OPTIONS
) -> SigningKey | None:
    """
    The first PEM private key in C{data}, or C{None} if it has none.
    """
    block = _KEY_BLOCK.search(data)
    if block is None:
        return None
    given = spelling.given(option, path)
    try:
        key = serialization.load_pem_private_key(block.group(0), password=None)
    except TypeError:
        raise ValueError(f"{given}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{given}: the PEM private key in it is unreadable") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise ValueError(f"{given}: a {type(key).__name__} cannot sign for TLS")
    return key


def publicBytes(key: CertificatePublicKeyTypes) -> bytes:
    """
    C{key} as DER bytes: what to compare to tell whether a private key
    matches a certificate.
    """
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
