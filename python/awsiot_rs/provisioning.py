"""AWS IoT fleet provisioning over MQTT: CreateKeysAndCertificate, CreateCertificateFromCsr,
RegisterThing."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import topics
from .auth import MtlsAuth, PathLike
from .errors import ConfigError, ProvisioningRejected

if TYPE_CHECKING:
    from ._requests import Requester

__all__ = [
    "CreateCertificateFromCsrResponse",
    "CreateKeysAndCertificateResponse",
    "FleetProvisioning",
    "RegisterThingResponse",
]


def _fsync_dir(directory: str) -> None:
    """Makes a rename in ``directory`` durable (where directories can be opened)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # pragma: no cover - not on POSIX
        return
    fd = os.open(directory, os.O_RDONLY | flags | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: PathLike, data: bytes) -> None:
    """Atomically replaces ``path`` with a regular file holding ``data``, readable by the owner
    only (0600).

    The data goes to a new temporary file in the same directory (``O_CREAT | O_EXCL |
    O_NOFOLLOW``: never an existing file or a symlink), which is fsynced and renamed over
    ``path``; the directory is fsynced after. A symlink planted at ``path`` is replaced, never
    followed, and a crash or a failed write leaves the previous file intact.
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    flags = (
        os.O_WRONLY | os.O_CREAT | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 64 random bits
        raise FileExistsError(f"cannot create a temporary file next to {target!r}")
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@dataclass(frozen=True)
class CreateKeysAndCertificateResponse:
    """A new certificate and its private key (the key is never shown by ``repr``)."""

    certificate_id: str
    certificate_pem: str
    private_key: str = field(repr=False)
    certificate_ownership_token: str = field(repr=False)

    def save(self, cert_path: PathLike, key_path: PathLike) -> MtlsAuth:
        """Writes the certificate and the key (both mode 0600) and returns the ``MtlsAuth``
        to reconnect with.

        Each file is replaced atomically (temporary file, fsync, rename, directory fsync): a
        crash or a failed write leaves any previous file intact, and a symlink at either path
        is replaced, never followed. The key is written first (AWS keeps no copy of it).
        Failures raise ``OSError``."""
        _write_private(key_path, self.private_key.encode())
        _write_private(cert_path, self.certificate_pem.encode())
        return MtlsAuth(cert_path, key_path)


@dataclass(frozen=True)
class CreateCertificateFromCsrResponse:
    """A certificate signed from your CSR (your key never left the device)."""

    certificate_id: str
    certificate_pem: str
    certificate_ownership_token: str = field(repr=False)


@dataclass(frozen=True)
class RegisterThingResponse:
    """The registered thing and the template's device configuration."""

    thing_name: str
    device_configuration: dict[str, Any]


class FleetProvisioning:
    """The fleet provisioning MQTT API (``client.fleet_provisioning()``).

    Subscribes to each operation's ``/accepted`` and ``/rejected`` topics (waiting for SUBACK)
    before publishing; the service echoes no token, so one request per operation is in flight
    at a time. ``/rejected`` raises :class:`ProvisioningRejected`. The full flow (claim
    certificate → new keys → register → reconnect as the new thing) is in the README.
    """

    def __init__(self, requester: Requester, fmt: str = "json") -> None:
        if fmt not in ("json", "cbor"):
            raise ConfigError(f"fmt must be 'json' or 'cbor', not {fmt!r}")
        self._requester = requester
        self.fmt = fmt

    async def _call(
        self, op: str, payload: dict[str, Any] | None, template: str | None, timeout: float | None
    ) -> dict[str, Any]:
        def t(suffix: str) -> str:
            return topics.fleet_provisioning(op + suffix, template=template, fmt=self.fmt)

        ok, doc, _ = await self._requester.request(
            t(""), payload, t("/accepted"), t("/rejected"), use_token=False, timeout=timeout,
            cbor=self.fmt == "cbor",
        )
        if not ok:
            raise ProvisioningRejected(doc.get("statusCode"), doc.get("errorCode"), str(doc.get("errorMessage", "")))
        return dict(doc)

    async def create_keys_and_certificate(self, *, timeout: float | None = None) -> CreateKeysAndCertificateResponse:
        """AWS creates a key pair and a certificate (state ``PENDING_ACTIVATION`` until
        ``register_thing``; the ownership token expires after 1 hour)."""
        d = await self._call("create", {}, None, timeout)
        return CreateKeysAndCertificateResponse(
            d["certificateId"], d["certificatePem"], d["privateKey"], d["certificateOwnershipToken"]
        )

    async def create_certificate_from_csr(
        self, csr_pem: str | bytes, *, timeout: float | None = None
    ) -> CreateCertificateFromCsrResponse:
        """AWS signs your certificate signing request."""
        csr = csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem
        d = await self._call("create-from-csr", {"certificateSigningRequest": csr}, None, timeout)
        return CreateCertificateFromCsrResponse(d["certificateId"], d["certificatePem"], d["certificateOwnershipToken"])

    async def register_thing(
        self,
        template_name: str,
        parameters: dict[str, str] | None = None,
        *,
        certificate_ownership_token: str,
        timeout: float | None = None,
    ) -> RegisterThingResponse:
        """Registers the thing with a provisioning template and activates the certificate."""
        payload = {"certificateOwnershipToken": certificate_ownership_token, "parameters": dict(parameters or {})}
        d = await self._call("provision", payload, template_name, timeout)
        return RegisterThingResponse(d["thingName"], dict(d.get("deviceConfiguration", {})))
