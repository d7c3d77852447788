"""What an AWS IoT service (shadow, jobs, fleet provisioning) may ask of its client: one
correlated request and one subscription. The services hold a ``Requester`` instead of the
``Client``, so they depend on this small interface, not on the client module."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, Tuple

if TYPE_CHECKING:
    from .subscription import Callback, Subscription

__all__ = ["RequestFn", "Requester", "Response", "SubscribeFn"]

#: A service answer: ``(accepted, document, client_token)``.
Response = Tuple[bool, Any, Optional[str]]  # typing aliases: evaluated at import, also on 3.9


class RequestFn(Protocol):
    """Publishes ``payload`` (JSON, or CBOR with ``cbor=True``) to ``topic`` after subscribing
    to ``accepted``/``rejected``, and returns the answer. With ``use_token`` the request carries
    a unique ``clientToken`` that the answer must echo; ``timeout=None`` is the client's
    ``operation_timeout``."""

    def __call__(
        self,
        topic: str,
        payload: dict[str, Any] | None,
        accepted: str,
        rejected: str,
        *,
        use_token: bool = ...,
        timeout: float | None = ...,
        cbor: bool = ...,
    ) -> Awaitable[Response]: ...


class SubscribeFn(Protocol):
    """Subscribes to ``topic_filter`` (returns after SUBACK), like ``Client.subscribe``."""

    def __call__(
        self, topic_filter: str, /, *, qos: int = ..., callback: Callback | None = ...
    ) -> Awaitable[Subscription]: ...


@dataclass(frozen=True)
class Requester:
    """A service's link to its client: ``request`` and ``subscribe``, nothing else."""

    request: RequestFn
    subscribe: SubscribeFn
