"""A private certificate authority for tests: a CA the system does not trust and a server
certificate for 127.0.0.1 it signed, so HTTPS upstreams (and the mirror's own HTTPS) can be
tested without the internet."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class PrivateCA:
    ca_file: Path  # the CA certificate (PEM): what a client must trust
    cert_file: Path  # the server's certificate chain (PEM)
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def self_signed_ca(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    """A CA certificate for `key`, signed by itself, valid from 5 minutes ago for a day."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_pem(
    path: Path, item: x509.Certificate | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> None:
    pem = serialization.Encoding.PEM
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(pem))
    else:
        path.write_bytes(
            item.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def make_private_ca(
    directory: Path,
    *,
    extra_ips: Sequence[str] = (),
    extra_names: Sequence[str] = (),
    key_type: Literal["ec", "rsa"] = "ec",
) -> PrivateCA:
    """Write a CA and a server certificate for 127.0.0.1/localhost into `directory`; the
    certificate is also valid for `extra_ips` and `extra_names`, and its key is ECDSA P-256
    or (`key_type="rsa"`) RSA 2048."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = self_signed_ca(ca_key, "mirror test CA")
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    alt_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips]
    alt_names += [x509.DNSName(name) for name in extra_names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca = PrivateCA(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
    )
    write_pem(ca.ca_file, ca_cert)
    write_pem(ca.cert_file, cert)
    write_pem(ca.key_file, key)
    return ca
