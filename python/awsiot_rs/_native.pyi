"""Type stubs for the Rust extension ``awsiot_rs._native`` (private; use ``awsiot_rs``)."""

from os import PathLike
from typing import Any, TypedDict, final

from typing_extensions import Unpack  # typing.Unpack is 3.11+; a stub import, never run

from awsiot_rs.config import OfflineQueue, PolicyViolationCheck, Reconnect, Will

__version__: str

@final
class Notifier:
    """One per asyncio loop: batched results from the Rust core, signalled through a socket
    (``fileno()``, Unix) or, if ``threadsafe`` (always off Unix), through ``wait()``."""

    def __new__(cls, threadsafe: bool = False) -> Notifier: ...
    @property
    def threadsafe(self) -> bool:
        """Whether the loop is woken through ``wait()`` (no file descriptor)."""
    def fileno(self) -> int:
        """The file descriptor to watch with ``loop.add_reader``; ``NotImplementedError`` for a
        threadsafe notifier."""
    def wait(self) -> bool:
        """Threadsafe notifiers: blocks (GIL released) until the notifier goes from idle to
        signalled (``True``, once per transition) or is closed (``False``)."""
    def close(self) -> None:
        """Threadsafe notifiers: ``wait()`` returns ``False`` from now on."""
    def drain(self) -> list[tuple[Any, ...]]:
        """Takes every pending item: ``("ops", [token, ...])`` (completed with ``None``),
        ``("op", token, ok, value)``, ``("ready", source)``,
        ``("connected", client, session_present, reconnect)``,
        ``("disconnected", client, reason, exception_or_None)``,
        ``("credentials", client, request)`` (unpacked by ``Dispatcher._dispatch``)."""

@final
class Message:
    """A message received from the broker (immutable)."""

    @property
    def topic(self) -> str:
        """Topic the message was published to."""
    @property
    def payload(self) -> bytes:
        """Payload bytes."""
    @property
    def qos(self) -> int:
        """QoS it was delivered with (0 or 1)."""
    @property
    def retain(self) -> bool:
        """Retained flag."""
    @property
    def dup(self) -> bool:
        """DUP flag (possibly a redelivery)."""
    def __new__(
        cls, topic: str, payload: bytes | None = None, qos: int = 0, retain: bool = False, dup: bool = False
    ) -> Message: ...
    def text(self) -> str:
        """The payload decoded as UTF-8."""
    def json(self) -> Any:
        """The payload parsed as JSON."""
    def matches(self, topic_filter: str) -> bool:
        """Whether the topic matches ``topic_filter`` (MQTT wildcards)."""
    def _repr_html_(self) -> str:
        """Jupyter's view: topic, flags, size and a short escaped preview of the payload."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class SubscriptionRef:
    """Native side of one subscription queue."""

    @property
    def id(self) -> int:
        """The id reported by ``Notifier.drain`` as ``("ready", id)``."""
    @property
    def dropped(self) -> int:
        """Messages dropped from this queue (QoS 0 overflow)."""
    def __len__(self) -> int: ...
    def pop_batch(self, max: int) -> tuple[list[Message], int]:
        """Up to ``max`` messages, and the queue state: 0 open, 1 paused and empty (the client
        is disconnected), 2 closed and empty."""
    @property
    def error(self) -> Exception | None:
        """The exception the subscription ended with, if it did not end on purpose."""
    def close(self, token: int | None = None) -> None:
        """Ends the subscription; future ``token`` completes at UNSUBACK."""

class _AuthOptions(TypedDict, total=False):
    """The auth objects as ``ClientRef`` takes them (``MtlsAuth._native_options()``, ...)."""

    mtls: tuple[bytes, bytes]
    sigv4: tuple[str, tuple[str, str, str | None] | None]  # keys, or None for the callable
    custom_auth: dict[str, Any]

class _ClientOptions(_AuthOptions, total=False):
    """``ClientRef``'s keyword arguments: ``Client(...)``'s, the auth object as above and the
    will's payload as bytes."""

    port: int | None
    client_id: str | None
    tls: bool
    ca_pem: bytes | None
    alpn: list[str] | None
    username: str | None
    password: str | None
    keep_alive: float
    clean_session: bool
    will: Will | None
    limits: str
    operation_timeout: float
    connect_timeout: float
    reconnect: Reconnect | None
    offline_queue: OfflineQueue
    log_file: str | PathLike[str] | None
    inflight: int
    max_subscriptions: int | None
    policy_violation: PolicyViolationCheck | None
    proxy: str | None

@final
class ClientRef:
    """Native client handle."""

    def __new__(cls, endpoint: str, **options: Unpack[_ClientOptions]) -> ClientRef:
        """Builds the configuration (the core checks every value; ``ConfigError`` names what
        was wrong) and the client."""
    @staticmethod
    def check_auth(**auth: Unpack[_AuthOptions]) -> None:
        """Checks auth options on their own (raised where the auth object is built)."""
    @staticmethod
    def default_alpn(port: int, **auth: Unpack[_AuthOptions]) -> list[str]:
        """The ALPN protocols offered on ``port`` when ``alpn`` is not given."""
    @property
    def port(self) -> int:
        """The port (given, or derived from the auth and ``tls``)."""
    @property
    def client_id(self) -> str: ...
    @property
    def is_connected(self) -> bool: ...
    @property
    def session_present(self) -> bool: ...
    @property
    def state(self) -> str:
        """``closed``, ``connecting``, ``connected``, ``reconnecting`` or ``closing``."""
    def bind(self, notifier: Notifier, token: int) -> None:
        """Routes results and lifecycle events through ``notifier``."""
    def connect(self, token: int) -> None: ...
    def disconnect(self, token: int) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, token: int | None = None) -> None: ...
    def publish_many(
        self,
        items: list[tuple[str, bytes]],
        qos: int,
        retain: bool,
        token: int | None = None,
        offset: int = 0,
    ) -> int:
        """Queues many publishes; returns how many were queued (fewer only when full)."""
    def busy(self) -> bool:
        """Whether the submission queue is full."""
    def wait_writable(self, token: int) -> None:
        """Future ``token`` completes when the submission queue has room again."""
    def subscribe(self, filters: list[str], qos: int, queue_size: int, token: int) -> SubscriptionRef: ...
    def messages(self, queue_size: int) -> SubscriptionRef: ...
    def unsubscribe(self, filters: list[str], token: int) -> None: ...
    def validate_subscribe(self, filters: list[str], qos: int) -> None: ...
    def request(
        self,
        topic: str,
        payload: str | None,
        accepted: str,
        rejected: str,
        use_token: bool,
        timeout: float,
        token: int,
        cbor: bool = False,
    ) -> None:
        """A correlated service request; future ``token`` gets ``(accepted, json_text, client_token)``."""
    def stats(self) -> dict[str, int]: ...

def matches(topic_filter: str, topic_name: str) -> bool: ...
def validate_topic(topic_name: str, limits: str = "aws") -> None: ...
def validate_filter(topic_filter: str, limits: str = "aws") -> None: ...
def check_identity(cert_pem: bytes, key_pem: bytes) -> None: ...
def check_ca(ca_pem: bytes) -> int: ...
def shutdown(timeout: float = 1.0) -> None: ...
def after_fork_in_child() -> None: ...
def provide_credentials(
    request: int, access_key: str, secret_key: str, session_token: str | None = None, expiry: float | None = None
) -> None: ...
def fail_credentials(request: int, message: str) -> None: ...
def decrypt_key(key_pem: bytes, password: bytes) -> bytes: ...
def load_pkcs12(der: bytes, password: bytes | None = None) -> tuple[bytes, bytes]: ...
def presign_url(
    host: str,
    port: int,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str | None = None,
    time: float | None = None,
    expires: float = 300.0,
) -> str: ...
def set_log_level(level: int) -> None: ...
def drain_logs() -> list[tuple[int, str, str]]: ...
def dropped_logs() -> int: ...

@final
class LocalCoreRef:
    """Native handle of one embedded AWS IoT Core (``awsiot_rs.local.LocalIoTCore``)."""

    @staticmethod
    def start(
        host: str,
        mqtt_port: int,
        alpn_port: int,
        custom_auth_port: int,
        wss_port: int,
        limits: str,
        qos2: str,
        persistent_session_expiry: float,
    ) -> LocalCoreRef:
        """Blocking (GIL released): creates the CA and binds the four listeners.
        ``ConfigError`` for a bad value, ``OSError`` for a port in use."""
    def stop(self) -> None:
        """Blocking (GIL released), idempotent: closes every connection, frees every port."""
    @property
    def ports(self) -> dict[str, int]:
        """``{"mqtt", "alpn", "custom_auth", "wss"}``: the bound ports."""
    @property
    def ca_pem(self) -> bytes:
        """The core's CA certificate (PEM)."""
    def register_thing(self, thing_name: str, attributes_json: str | None = None) -> tuple[bytes, bytes, str]:
        """A thing and an ACTIVE certificate: ``(cert_pem, key_pem, certificate_id)``."""
    def certificate_status(self, certificate_id: str, status: str) -> None:
        """``ACTIVE``, ``INACTIVE`` or ``REVOKED``; ``KeyError`` for an unknown id."""
    def add_credentials(self, access_key: str, secret_key: str, session_token: str | None = None) -> None: ...
    def add_authorizer(self, name: str, token_key_name: str | None = None, signing: bool = False) -> None: ...
    def next_authorizer_request(self, timeout: float) -> tuple[int, dict[str, object]] | None:
        """Blocking up to ``timeout`` (GIL released): the next question to an authorizer, or
        None on timeout or once the core is stopped."""
    def answer_authorizer(
        self,
        request_id: int,
        allow: bool,
        principal_id: str | None = None,
        disconnect_after: float | None = None,
        error: str | None = None,
    ) -> None:
        """Answers an authorizer request (``error``: deny with that reason); ignored once
        the core stopped waiting for it."""
    def add_provisioning_template(
        self, name: str, body_json: str, claim_thing: str | None = None
    ) -> tuple[bytes, bytes, str]:
        """Adds a template; returns the claim certificate ``(cert_pem, key_pem, certificate_id)``."""
    def add_job(self, thing_name: str, job_id: str, document_json: str) -> None: ...
    def shadow_document(self, thing_name: str, shadow_name: str | None = None) -> str | None: ...
    def job_execution(self, thing_name: str, job_id: str) -> str | None: ...
    def events_follow(self) -> int:
        """A cursor at the end of the event log (publish events are recorded from now on)."""
    def events_read(self, cursor: int, max: int, timeout: float) -> tuple[list[str], int, int, bool]:
        """Blocking up to ``timeout`` (GIL released): ``(events as JSON, next cursor, missed,
        closed)``."""
    def events_release(self) -> None:
        """Ends one ``events_follow()``."""
    def disconnect(self, client_id: str, reason: str) -> bool: ...
    def connected_clients(self) -> list[str]: ...
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None: ...
    def counters(self) -> tuple[int, int]:
        """``(routed, dropped)``."""
