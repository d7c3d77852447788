"""Throw-away test PKI generated at test time with :mod:`cryptography`.

Nothing produced here is ever committed: :func:`make_pki` writes every file
into a caller-supplied (temporary) directory and returns a :class:`Pki`
describing the paths.

This is the one place of the test suite that makes keys, certificates and CSRs
(the fake Fleet Provisioning service of :mod:`support.aws_fakes` signs with
:func:`make_leaf` too): :func:`rsa_key`, :func:`ec_key`, :func:`make_ca`,
:func:`make_leaf`, :func:`make_csr`, :func:`load_ca`, :func:`key_pem`,
:func:`cert_pem`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from dataclasses import dataclass
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_COMMON_NAME",
    "CLIENT_COMMON_NAME",
    "CLIENT_KEY_PASSWORD",
    "GARBAGE_PEM",
    "Pki",
    "cert_pem",
    "ec_key",
    "key_pem",
    "load_ca",
    "make_ca",
    "make_csr",
    "make_leaf",
    "make_pki",
    "rsa_key",
    "write_pkcs12",
]

#: Password protecting :attr:`Pki.client_key_encrypted`.
CLIENT_KEY_PASSWORD = "test-key-password"
#: Common name of the test root CA (also used, verbatim, by the fake root).
CA_COMMON_NAME = "awsiot_rs test CA"
#: Common name of the client (device) certificates.
CLIENT_COMMON_NAME = "test-device"
#: Contents of :attr:`Pki.garbage_pem`: PEM armour around non-base64 junk.
GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n"

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]  # Union: evaluated on 3.9 too
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]

#: RSA keys as PKCS#1 PEM, EC keys as SEC1 PEM (what AWS IoT hands out).
PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL
PKCS8 = serialization.PrivateFormat.PKCS8


@dataclass(frozen=True)
class Pki:
    """Paths of every PEM file written by :func:`make_pki`."""

    directory: pathlib.Path
    #: Test root CA ("awsiot_rs test CA").
    ca_cert: pathlib.Path
    ca_key: pathlib.Path
    #: Server leaf for localhost / 127.0.0.1, signed by the CA.
    server_cert: pathlib.Path
    server_key: pathlib.Path
    #: Server leaf for "evil.example" only, signed by the CA.
    wrong_host_cert: pathlib.Path
    wrong_host_key: pathlib.Path
    #: Server leaf for localhost / 127.0.0.1 that expired 10 days ago.
    expired_server_cert: pathlib.Path
    expired_server_key: pathlib.Path
    #: Client leaf ("test-device"); key is RSA 2048 in PKCS#1 PEM.
    client_cert: pathlib.Path
    client_key: pathlib.Path
    #: The same client key as unencrypted PKCS#8 PEM.
    client_key_pkcs8: pathlib.Path
    #: The same client key as encrypted PKCS#8 PEM (password CLIENT_KEY_PASSWORD).
    client_key_encrypted: pathlib.Path
    #: Client leaf with an EC P-256 key in SEC1 PEM.
    client_ec_cert: pathlib.Path
    client_ec_key: pathlib.Path
    #: Unrelated RSA key (PKCS#1) not matching client_cert.
    other_key: pathlib.Path
    #: A second, unrelated CA and a client leaf signed by it.
    other_ca_cert: pathlib.Path
    other_ca_key: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path
    #: A root with the same subject as the real CA but a different key, and a
    #: localhost / 127.0.0.1 server leaf signed by it.
    fake_ca_cert: pathlib.Path
    fake_ca_key: pathlib.Path
    fake_server_cert: pathlib.Path
    fake_server_key: pathlib.Path
    #: A file with PEM armour but no valid base64 in it.
    garbage_pem: pathlib.Path


# --------------------------------------------------------------------------
# building blocks (also used by support.aws_fakes and the tests)
# --------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def key_pem(
    key: PrivateKey,
    fmt: serialization.PrivateFormat = PKCS1,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> bytes:
    """The private key as PEM (default: PKCS#1 / SEC1, unencrypted)."""
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: PrivateKey, common_name: str) -> bytes:
    """A PEM certificate signing request for ``CN=common_name``, signed by ``key``."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_ca(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> tuple[x509.Certificate, PrivateKey]:
    """A CA certificate and its unencrypted RSA or EC key, from PEM files."""
    cert = x509.load_pem_x509_certificate(pathlib.Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(pathlib.Path(key_path).read_bytes(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TypeError("the CA key must be RSA or EC")
    return cert, key


def _write(path: pathlib.Path, data: bytes, *, private: bool = False) -> pathlib.Path:
    """Write ``data`` to ``path``; private files end up with mode 0600."""
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _write_cert(path: pathlib.Path, cert: x509.Certificate) -> pathlib.Path:
    return _write(path, cert_pem(cert))


def _write_key(
    path: pathlib.Path,
    key: PrivateKey,
    fmt: serialization.PrivateFormat,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> pathlib.Path:
    return _write(path, key_pem(key, fmt, encryption), private=True)


def make_ca(
    common_name: str,
    key: rsa.RSAPrivateKey,
) -> x509.Certificate:
    """Self-signed root CA valid from now-1 day to now+10 days."""
    now = _now()
    name = _name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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


def make_leaf(
    *,
    subject: str | x509.Name,
    public_key: PublicKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    eku: x509.ObjectIdentifier,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """End-entity certificate for ``public_key`` signed by ``ca_key``.

    ``subject`` is a common name or a whole name; validity defaults to now-1 day ..
    now+10 days.
    """
    now = _now()
    if not_before is None:
        not_before = now - datetime.timedelta(days=1)
    if not_after is None:
        not_after = now + datetime.timedelta(days=10)
    is_client = eku == ExtendedKeyUsageOID.CLIENT_AUTH
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject) if isinstance(subject, str) else subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange needs keyEncipherment; harmless otherwise.
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=not is_rsa and not is_client,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _server_leaf(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    **kwargs: object,
) -> x509.Certificate:
    return make_leaf(
        subject="localhost",
        public_key=key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
        **kwargs,  # type: ignore[arg-type]
    )


def _client_leaf(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: PrivateKey,
) -> x509.Certificate:
    return make_leaf(
        subject=CLIENT_COMMON_NAME,
        public_key=key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def make_pki(directory: pathlib.Path) -> Pki:
    """Generate the complete test PKI into ``directory`` and return its paths.

    All files are PEM. Private-key files are chmod 0600. The directory is
    created if it does not exist.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    pkcs1, pkcs8 = PKCS1, PKCS8  # RSA -> PKCS#1, EC -> SEC1
    now = _now()

    # Root CA.
    ca_key = rsa_key()
    ca_cert = make_ca(CA_COMMON_NAME, ca_key)

    # Good server.
    server_key = rsa_key()
    server_cert = _server_leaf(ca_cert, ca_key, server_key)

    # Server whose name does not match localhost / 127.0.0.1.
    wrong_host_key = rsa_key()
    wrong_host_cert = make_leaf(
        subject="evil.example",
        public_key=wrong_host_key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        dns_names=("evil.example",),
    )

    # Expired server.
    expired_key = rsa_key()
    expired_cert = _server_leaf(
        ca_cert,
        ca_key,
        expired_key,
        not_before=now - datetime.timedelta(days=20),
        not_after=now - datetime.timedelta(days=10),
    )

    # RSA client (device) certificate.
    client_key = rsa_key()
    client_cert = _client_leaf(ca_cert, ca_key, client_key)

    # EC P-256 client certificate.
    client_ec_key = ec_key()
    client_ec_cert = _client_leaf(ca_cert, ca_key, client_ec_key)

    # Unrelated key.
    other_key = rsa_key()

    # Second CA + client signed by it.
    other_ca_key = rsa_key()
    other_ca_cert = make_ca("awsiot_rs other test CA", other_ca_key)
    other_client_key = rsa_key()
    other_client_cert = _client_leaf(other_ca_cert, other_ca_key, other_client_key)

    # Fake root: same subject as the real CA, different key.
    fake_ca_key = rsa_key()
    fake_ca_cert = make_ca(CA_COMMON_NAME, fake_ca_key)
    fake_server_key = rsa_key()
    fake_server_cert = _server_leaf(fake_ca_cert, fake_ca_key, fake_server_key)

    return Pki(
        directory=directory,
        ca_cert=_write_cert(d / "ca.crt", ca_cert),
        ca_key=_write_key(d / "ca.key", ca_key, pkcs1),
        server_cert=_write_cert(d / "server.crt", server_cert),
        server_key=_write_key(d / "server.key", server_key, pkcs1),
        wrong_host_cert=_write_cert(d / "wrong_host.crt", wrong_host_cert),
        wrong_host_key=_write_key(d / "wrong_host.key", wrong_host_key, pkcs1),
        expired_server_cert=_write_cert(d / "expired_server.crt", expired_cert),
        expired_server_key=_write_key(d / "expired_server.key", expired_key, pkcs1),
        client_cert=_write_cert(d / "client.crt", client_cert),
        client_key=_write_key(d / "client.key", client_key, pkcs1),
        client_key_pkcs8=_write_key(d / "client.pkcs8.key", client_key, pkcs8),
        client_key_encrypted=_write_key(
            d / "client.encrypted.key",
            client_key,
            pkcs8,
            serialization.BestAvailableEncryption(CLIENT_KEY_PASSWORD.encode()),
        ),
        client_ec_cert=_write_cert(d / "client_ec.crt", client_ec_cert),
        client_ec_key=_write_key(d / "client_ec.key", client_ec_key, pkcs1),
        other_key=_write_key(d / "other.key", other_key, pkcs1),
        other_ca_cert=_write_cert(d / "other_ca.crt", other_ca_cert),
        other_ca_key=_write_key(d / "other_ca.key", other_ca_key, pkcs1),
        other_client_cert=_write_cert(d / "other_client.crt", other_client_cert),
        other_client_key=_write_key(d / "other_client.key", other_client_key, pkcs1),
        fake_ca_cert=_write_cert(d / "fake_ca.crt", fake_ca_cert),
        fake_ca_key=_write_key(d / "fake_ca.key", fake_ca_key, pkcs1),
        fake_server_cert=_write_cert(d / "fake_server.crt", fake_server_cert),
        fake_server_key=_write_key(d / "fake_server.key", fake_server_key, pkcs1),
        garbage_pem=_write(d / "garbage.pem", GARBAGE_PEM.encode()),
    )


def write_pkcs12(directory: pathlib.Path, pki: Pki, password: str | None) -> pathlib.Path:
    """Bundle client cert + key + CA into a PKCS#12 file and return its path.

    With ``password`` the bundle is encrypted (BestAvailableEncryption),
    otherwise it is written unencrypted. The file name reflects which.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    data = pkcs12.serialize_key_and_certificates(
        name=CLIENT_COMMON_NAME.encode(),
        key=key,  # type: ignore[arg-type]
        cert=cert,
        cas=[ca],
        encryption_algorithm=encryption,
    )
    name = "client.p12" if password is None else "client.encrypted.p12"
    return _write(directory / name, data, private=True)
