"""Run a private mosquitto 2.0 broker on loopback for the test-suite (and bench/).

By default the broker gets one plain listener and several TLS listeners (good
mTLS, server-auth-only TLS and three deliberately broken server identities),
each on its own ephemeral port on 127.0.0.1. Everything (config, log,
persistence database) lives in a private directory.

``bench/run.py`` runs the same class with ``listeners=("port", "mtls_port")``
(or only ``"port"``, then no PKI is needed), its own ``settings`` and a
``preexec_fn`` that pins the broker to a core.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no cryptography needed to run a plain broker
    from .certs import Pki

__all__ = ["HOST", "Mosquitto", "MosquittoError", "find_mosquitto", "free_ports"]

#: The only address the test-suite may use.
HOST = "127.0.0.1"

_FALLBACK_BINARY = "/usr/sbin/mosquitto"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
#: Every listener, by the name of its port attribute ("port" is the plain one).
LISTENERS = (
    "port",
    "mtls_port",
    "tls_port",
    "wrong_host_port",
    "expired_port",
    "fake_ca_port",
)

#: Global settings written to mosquitto.conf; ``Mosquitto(settings=...)`` overrides them.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "per_listener_settings": "false",
    "allow_anonymous": "true",
    # We run as root; without this mosquitto drops privileges to the
    # `mosquitto` user and then cannot read the 0600 key files.
    "user": "root",
    "log_type": "all",
    "log_timestamp": "true",
    "log_timestamp_format": "%Y-%m-%dT%H:%M:%S",
    "connection_messages": "true",
    "max_inflight_messages": "100",
    "max_queued_messages": "10000",
}


class MosquittoError(RuntimeError):
    """Raised when the broker cannot be found, started or stopped."""


def find_mosquitto() -> str:
    """Return the path of the mosquitto binary, or raise :class:`MosquittoError`."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_FALLBACK_BINARY, os.X_OK):
        return _FALLBACK_BINARY
    raise MosquittoError(
        "mosquitto binary not found on PATH nor at /usr/sbin/mosquitto; "
        "install it (e.g. `apt-get install mosquitto`) to run the broker tests"
    )


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct currently-free TCP ports on 127.0.0.1.

    All probe sockets are held open together so the kernel cannot hand out
    the same ephemeral port twice; they are closed before returning.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """A mosquitto broker subprocess bound to ephemeral loopback ports.

    Attributes (all ``int`` ports on :data:`HOST`):

    ``port``
        Plain MQTT, anonymous access.
    ``mtls_port``
        TLS with the good server cert; client certificate signed by the test
        CA required.
    ``tls_port``
        TLS with the good server cert; no client certificate required.
    ``wrong_host_port``
        Server cert valid for ``evil.example`` only (client cert required).
    ``expired_port``
        Expired server cert (client cert required).
    ``fake_ca_port``
        Server cert issued by a root with the real CA's subject but a
        different key (client cert required).

    A listener left out of ``listeners`` is not opened and its port is 0.
    Ports are chosen once, in the constructor, so :meth:`restart` brings the
    broker back on exactly the same ports.
    """

    host: str = HOST

    def __init__(
        self,
        pki: Pki | None,
        directory: str | os.PathLike[str] | None = None,
        *,
        persistence: bool = False,
        extra_config: str = "",
        listeners: Iterable[str] = LISTENERS,
        settings: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """Prepare (but do not start) a broker.

        :param pki: certificates from :func:`tests.support.certs.make_pki`
            (may be None when ``listeners`` is only ``("port",)``).
        :param directory: working directory for config/log/persistence; a new
            temporary directory is created when omitted.
        :param persistence: enable on-disk persistence in ``directory`` so
            that sessions and queued messages survive :meth:`restart`.
        :param extra_config: extra global config lines appended *before* the
            listener sections.
        :param listeners: the listeners to open (names from :data:`LISTENERS`,
            which must include ``"port"``).
        :param settings: global settings replacing or adding to
            :data:`DEFAULT_SETTINGS`.
        :param preexec_fn: run in the broker's process before it executes
            (e.g. to pin it to a CPU or raise its file-descriptor limit).
        """
        self.binary = find_mosquitto()
        self.listeners = tuple(name for name in LISTENERS if name in set(listeners))
        unknown = set(listeners) - set(LISTENERS)
        if unknown or "port" not in self.listeners:
            raise ValueError(f"listeners must include 'port' and be among {LISTENERS}: {sorted(unknown)}")
        if pki is None and self.listeners != ("port",):
            raise ValueError("TLS listeners need a pki")
        self.pki = pki
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.preexec_fn = preexec_fn
        if directory is None:
            directory = pathlib.Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.extra_config = extra_config
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.stderr_path = self.directory / "mosquitto.stderr"
        self._process: subprocess.Popen[bytes] | None = None
        self._choose_ports()

    # ------------------------------------------------------------------ ports

    port: int
    mtls_port: int
    tls_port: int
    wrong_host_port: int
    expired_port: int
    fake_ca_port: int

    def _choose_ports(self) -> None:
        for name in LISTENERS:
            setattr(self, name, 0)
        for name, value in zip(self.listeners, free_ports(len(self.listeners))):
            setattr(self, name, value)

    @property
    def ports(self) -> dict[str, int]:
        """Mapping of listener attribute name to port number (opened listeners only)."""
        return {name: getattr(self, name) for name in self.listeners}

    # ----------------------------------------------------------------- config

    def config_text(self) -> str:
        """Return the mosquitto.conf content for the current ports/options."""
        pki = self.pki
        lines = ["# generated by tests/support/mosquitto.py", f"log_dest file {self.log_path}"]
        lines += [f"{key} {value}" for key, value in self.settings.items()]
        if self.persistence:
            lines += [
                "persistence true",
                # persistence_location must end with a slash.
                f"persistence_location {self.directory}/",
                "persistence_file mosquitto.db",
            ]
        else:
            lines.append("persistence false")
        if self.extra_config:
            lines.append(self.extra_config.rstrip("\n"))

        lines += ["", f"listener {self.port} {HOST}", "protocol mqtt"]

        def tls_listener(name: str, cert: pathlib.Path, key: pathlib.Path, require: bool) -> None:
            if name not in self.listeners:
                return
            assert pki is not None
            port = getattr(self, name)
            lines.extend(
                [
                    "",
                    f"listener {port} {HOST}",
                    "protocol mqtt",
                    f"cafile {pki.ca_cert}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    f"require_certificate {'true' if require else 'false'}",
                    "tls_version tlsv1.2",
                ]
            )

        if pki is not None:
            tls_listener("mtls_port", pki.server_cert, pki.server_key, True)
            tls_listener("tls_port", pki.server_cert, pki.server_key, False)
            tls_listener("wrong_host_port", pki.wrong_host_cert, pki.wrong_host_key, True)
            tls_listener("expired_port", pki.expired_server_cert, pki.expired_server_key, True)
            tls_listener("fake_ca_port", pki.fake_server_cert, pki.fake_server_key, True)
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the broker process, if started."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Spawn the broker and wait (up to 10 s) until every port accepts TCP.

        Raises :class:`MosquittoError` (including the log) on failure.
        """
        if self.running:
            raise MosquittoError("mosquitto is already running")
        self.config_path.write_text(self.config_text())
        with open(self.stderr_path, "ab") as err:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        pending = list(self.ports.values())
        while pending:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise MosquittoError(f"mosquitto exited early with code {code}\n{self._diagnostics()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise MosquittoError(
                    f"mosquitto did not open ports {pending} within {_START_TIMEOUT}s\n"
                    f"{self._diagnostics()}"
                )
            pending = [p for p in pending if not _port_open(p)]
            if pending:
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` to the broker and wait for it to exit.

        If it has not exited after 5 s it is SIGKILLed. Returns the exit code
        (``None`` if the broker was not running). Use ``signal.SIGKILL`` to
        simulate a crash (no persistence save).
        """
        proc = self._process
        if proc is None:
            return None
        self._process = None
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_STOP_TIMEOUT)
        return proc.returncode

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop (with ``sig``) and start again on the same ports."""
        self.stop(sig)
        self.start()

    # ---------------------------------------------------------------- logging

    def log_text(self) -> str:
        """Return the broker log file contents ('' if not yet created)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 5.0, *, start: int = 0) -> bool:
        """Poll the log until ``needle`` appears after offset ``start``.

        Returns True if found within ``timeout`` seconds, else False.
        """
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.log_text()[start:]:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _diagnostics(self) -> str:
        try:
            stderr = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            stderr = ""
        return (
            f"--- config ({self.config_path}) ---\n{self.config_text()}"
            f"--- stderr ---\n{stderr}"
            f"--- log ({self.log_path}) ---\n{self.log_text()}"
        )

    # -------------------------------------------------------- context manager

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {state} {self.ports} dir={self.directory}>"
