"""Authentication methods for AWS IoT Core."""

from __future__ import annotations

import os
from typing import Union

from . import _native
from .errors import ConfigError

__all__ = ["MtlsAuth", "PathLike", "read_pem_file"]

PathLike = Union[str, "os.PathLike[str]"]


def read_pem_file(path: PathLike, what: str) -> bytes:
    """Reads a PEM file, raising ``ConfigError`` naming ``what`` and the path when it cannot."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {os.fspath(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {os.fspath(path)!r} is a directory") from None
    except OSError as e:
        raise ConfigError(f"{what} file {os.fspath(path)!r} cannot be read: {e.strerror}") from None


class MtlsAuth:
    """Mutual TLS with an X.509 device certificate (MQTT on port 8883, or 443 with ALPN
    ``x-amzn-mqtt-ca``, offered automatically).

    ``cert`` and ``key`` are PEM file paths. The key may be PKCS#1 (``RSA PRIVATE KEY``, as AWS
    issues them), PKCS#8 or SEC1 (EC). Unreadable files, malformed PEM and a key that does not
    belong to the certificate raise ``ConfigError`` here, before any network I/O.
    """

    __slots__ = ("_cert_pem", "_key_pem", "_source")

    def __init__(self, cert: PathLike, key: PathLike) -> None:
        cert_pem = read_pem_file(cert, "certificate")
        key_pem = read_pem_file(key, "private key")
        self._init(cert_pem, key_pem, f"cert={os.fspath(cert)!r}, key={os.fspath(key)!r}")

    def _init(self, cert_pem: bytes, key_pem: bytes, source: str) -> None:
        _native.check_identity(cert_pem, key_pem)
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._source = source

    @classmethod
    def from_pem(cls, cert_pem: bytes | str, key_pem: bytes | str) -> MtlsAuth:
        """Builds the auth from PEM contents instead of files."""
        self = cls.__new__(cls)
        c = cert_pem.encode() if isinstance(cert_pem, str) else bytes(cert_pem)
        k = key_pem.encode() if isinstance(key_pem, str) else bytes(key_pem)
        self._init(c, k, "from_pem")
        return self

    @property
    def cert_pem(self) -> bytes:
        """The certificate chain (PEM)."""
        return self._cert_pem

    def _key(self) -> bytes:
        return self._key_pem

    def __repr__(self) -> str:
        # Never show key material: only where it came from.
        return f"MtlsAuth({self._source})"
