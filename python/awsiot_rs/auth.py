"""Authentication methods for AWS IoT Core."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Union

from . import _native
from .errors import ConfigError

__all__ = [
    "Credentials",
    "CredentialsProvider",
    "CustomAuth",
    "MtlsAuth",
    "PathLike",
    "SigV4Auth",
    "read_pem_file",
]

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

    def __init__(self, cert: PathLike, key: PathLike, *, key_password: str | bytes | None = None) -> None:
        cert_pem = read_pem_file(cert, "certificate")
        key_pem = read_pem_file(key, "private key")
        if key_password is not None:
            pw = key_password.encode() if isinstance(key_password, str) else bytes(key_password)
            key_pem = _native.decrypt_key(key_pem, pw)
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

    @classmethod
    def from_pkcs12(cls, path: PathLike, password: str | bytes | None = None) -> MtlsAuth:
        """Builds the auth from a PKCS#12 bundle (``.pfx`` / ``.p12``) holding the device
        certificate, its chain and the private key. A wrong password raises ``ConfigError``."""
        try:
            with open(path, "rb") as f:
                der = f.read()
        except FileNotFoundError:
            raise ConfigError(f"PKCS#12 file {os.fspath(path)!r} does not exist") from None
        except OSError as e:
            raise ConfigError(f"PKCS#12 file {os.fspath(path)!r} cannot be read: {e.strerror}") from None
        pw = password.encode() if isinstance(password, str) else password
        cert_pem, key_pem = _native.load_pkcs12(der, pw)
        self = cls.__new__(cls)
        self._init(cert_pem, key_pem, f"pkcs12={os.fspath(path)!r}")
        return self

    @property
    def cert_pem(self) -> bytes:
        """The certificate chain (PEM)."""
        return self._cert_pem

    def _native_options(self) -> dict[str, Any]:
        """``_native.ClientRef``'s ``mtls=`` keyword argument."""
        return {"mtls": (self._cert_pem, self._key_pem)}

    def __repr__(self) -> str:
        # Never show key material: only where it came from.
        return f"MtlsAuth({self._source})"


@dataclass(frozen=True)
class Credentials:
    """AWS credentials for SigV4 (what a ``credentials`` callable returns).

    ``expiry`` (a ``datetime`` or POSIX seconds) lets the client reuse them until 5 minutes
    before they expire; without it the callable is asked before every connection attempt.
    ``repr()`` never shows the secret key or the session token.
    """

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiry: datetime | float | None = None

    def expiry_timestamp(self) -> float | None:
        """``expiry`` as POSIX seconds."""
        if self.expiry is None:
            return None
        if isinstance(self.expiry, datetime):
            e = self.expiry if self.expiry.tzinfo else self.expiry.replace(tzinfo=timezone.utc)
            return e.timestamp()
        return float(self.expiry)


#: A ``credentials`` provider: plain or ``async`` callable returning :class:`Credentials`.
CredentialsProvider = Callable[[], Union[Credentials, Awaitable[Credentials]]]


class SigV4Auth:
    """MQTT over WebSocket (``wss://<endpoint>/mqtt``) signed with AWS SigV4 (IAM users or
    roles, STS or Cognito identity-pool credentials).

    Credentials come from ``access_key``/``secret_key``/``session_token``; or from
    ``credentials``, a plain or async callable returning :class:`Credentials`, called on the
    event loop before every connection attempt (so temporary credentials refresh on
    reconnect); or else from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_SESSION_TOKEN``. A provider that raises makes that attempt fail with ``AuthError``.
    """

    __slots__ = ("_keys", "provider", "region")

    def __init__(
        self,
        region: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        credentials: CredentialsProvider | None = None,
    ) -> None:
        _native.ClientRef.check_auth(sigv4=(region, None))
        self.region = region
        self.provider = credentials
        self._keys: tuple[str, str, str | None] | None = None
        if credentials is not None:
            if not callable(credentials):
                raise ConfigError("credentials must be a callable returning Credentials")
            if access_key or secret_key or session_token:
                raise ConfigError("give either access_key/secret_key or credentials, not both")
            return
        if access_key is None and secret_key is None:
            access_key = os.environ.get("AWS_ACCESS_KEY_ID")
            secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
            session_token = session_token or os.environ.get("AWS_SESSION_TOKEN") or None
        if not access_key or not secret_key:
            raise ConfigError(
                "SigV4Auth needs credentials: access_key and secret_key, a credentials callable, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        self._keys = (access_key, secret_key, session_token)

    def _native_options(self) -> dict[str, Any]:
        """``_native.ClientRef``'s ``sigv4=`` keyword argument (keys ``None``: the callable)."""
        return {"sigv4": (self.region, self._keys)}

    def __repr__(self) -> str:
        source = "callable" if self.provider is not None else f"access_key={self._keys[0]!r}" if self._keys else "?"
        return f"SigV4Auth(region={self.region!r}, {source})"


class CustomAuth:
    """An AWS IoT custom authorizer.

    Over MQTT (TCP, port 443, ALPN ``mqtt``) the authorizer fields (name, signature, and the
    token under ``token_key_name``) travel in the CONNECT user name as a percent-encoded query
    string appended to ``username``; ``password`` is passed through. With ``websockets=True`` they go where ``credentials_in``
    says: ``"headers"`` (upgrade request headers, the default), ``"query"`` (upgrade URL) or
    ``"username"``; ``headers``/``query`` add anything else to the upgrade request.
    ``repr()`` never shows the token, signature or password.
    """

    __slots__ = (
        "authorizer_name", "token_key_name", "_token", "_signature", "username", "_password",
        "headers", "query", "websockets", "credentials_in",
    )

    def __init__(
        self,
        *,
        authorizer_name: str | None = None,
        token_key_name: str | None = None,
        token: str | None = None,
        signature: str | None = None,
        username: str | None = None,
        password: str | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        websockets: bool = False,
        credentials_in: Literal["headers", "query", "username"] = "headers",
    ) -> None:
        self.authorizer_name = authorizer_name
        self.token_key_name = token_key_name
        self._token = token
        self._signature = signature
        self.username = username
        self._password = password
        self.headers = dict(headers or {})
        self.query = dict(query or {})
        self.websockets = bool(websockets)
        self.credentials_in = credentials_in
        # The core checks the combination (and says where each field goes).
        _native.ClientRef.check_auth(**self._native_options())

    def _native_options(self) -> dict[str, Any]:
        """``_native.ClientRef``'s ``custom_auth=`` keyword argument: the values; the field
        names and where they go are the core's business."""
        return {
            "custom_auth": {
                "authorizer_name": self.authorizer_name,
                "signature": self._signature,
                "token_key_name": self.token_key_name,
                "token": self._token,
                "username": self.username,
                "password": self._password,
                "headers": list(self.headers.items()),
                "query": list(self.query.items()),
                "websockets": self.websockets,
                "credentials_in": self.credentials_in,
            }
        }

    def __repr__(self) -> str:
        return (
            f"CustomAuth(authorizer_name={self.authorizer_name!r}, token_key_name={self.token_key_name!r}, "
            f"websockets={self.websockets}, credentials_in={self.credentials_in!r})"
        )
