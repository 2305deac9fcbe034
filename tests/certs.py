"""
Certificates made on the fly for TLS tests: a CA and certificates it signs.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attrs.frozen
class Authority:
    """
    A certificate authority whose files live in C{directory}.
    """

    directory: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str = "txmasse test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        authority = cls(directory, name, key, certificate)
        authority.caPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return authority

    @property
    def caPath(self) -> Path:
        return self.directory / f"{self.name.replace(' ', '-')}.pem"

    def issue(self, common: str, sans: list[str] | None = None) -> tuple[Path, Path]:
        """
        Issue a certificate for C{common}; C{sans} default to it (an IP
        address or a DNS name). Returns the certificate and key paths.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        names: list[x509.GeneralName] = []
        for san in [common] if sans is None else sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = self.directory / f"{common}-{x509.random_serial_number() % 10**6}"
        # Not with_suffix: a name such as db.t would lose its ".t..." part.
        certPath, keyPath = Path(f"{stem}.crt"), Path(f"{stem}.key")
        certPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        keyPath.write_bytes(_pem(key))
        return certPath, keyPath
