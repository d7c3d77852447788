"""HTTP CONNECT proxies for the proxy tests, loopback only.

- :class:`Tinyproxy`: Debian's ``tinyproxy`` (installed by the Makefile) in the foreground with a
  generated configuration, optionally with Basic authentication: the independent, real proxy.
- :class:`ScriptedProxy`: an asyncio CONNECT proxy that answers with a chosen status (403, 502,
  ...), or relays and can cut every tunnel: for refusals and reconnects a real proxy cannot be
  told to produce on cue. It records each CONNECT request head.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import subprocess
import time

from .mosquitto import free_ports

HOST = "127.0.0.1"


class Tinyproxy:
    """``tinyproxy -d`` on a free loopback port. ``log_text()`` reads its log."""

    def __init__(self, directory: pathlib.Path, *, user: str | None = None, password: str | None = None) -> None:
        exe = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not pathlib.Path(exe).exists():
            raise RuntimeError("tinyproxy is not installed (make install-deps installs it with apt-get)")
        self.exe = exe
        self.directory = directory
        self.port = free_ports(1)[0]
        self.log = directory / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            f"Listen {HOST}",
            "Timeout 30",
            "MaxClients 64",
            f"Allow {HOST}",
            f"LogFile \"{self.log}\"",
            "LogLevel Info",
            "DisableViaHeader Yes",
        ]
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        self.conf = directory / "tinyproxy.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Tinyproxy:
        self._proc = subprocess.Popen(
            [self.exe, "-d", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"tinyproxy exited with {self._proc.returncode}: {self.log_text()}")
                time.sleep(0.05)
        raise RuntimeError("tinyproxy did not start listening within 10 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}{HOST}:{self.port}"

    def __enter__(self) -> Tinyproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ScriptedProxy:
    """An asyncio CONNECT proxy. ``status`` None relays (200); otherwise every CONNECT is
    answered with that status line and closed. ``requests`` holds each request head (text);
    ``cut()`` aborts every open tunnel."""

    def __init__(self, status: str | None = None) -> None:
        self.status = status
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}{HOST}:{self.port}"

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            text = head.decode("latin-1")
            self.requests.append(text)
            if self.status is not None:
                writer.write(self.status.encode() + b"\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            target = text.split(" ", 2)[1]
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(HOST if host == "localhost" else host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            self._writers += [writer, up_writer]

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, asyncio.CancelledError):
                    pass
                finally:
                    dst.close()

            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)
