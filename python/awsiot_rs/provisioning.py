"""AWS IoT fleet provisioning over MQTT: CreateKeysAndCertificate, CreateCertificateFromCsr,
RegisterThing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import topics
from ._files import write_atomically
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
        write_atomically(key_path, self.private_key.encode())
        write_atomically(cert_path, self.certificate_pem.encode())
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
