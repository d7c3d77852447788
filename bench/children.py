"""The benchmark's child processes: pinning to CPU cores, file-descriptor limits, and
:class:`Child`, a worker (``workers.py``, ``native/mosq_recv``) that speaks the JSON-lines
protocol on its stdout and has a deadline for everything."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


class ChildError(RuntimeError):
    """A child failed, exited early or missed its deadline: the measurement has an error."""


def cores() -> tuple[int | None, int | None]:
    """(broker/helper core, client core), or (None, None) when there is one core only."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def raise_nofile(wanted: int = 0) -> None:
    """Raises this process's ``RLIMIT_NOFILE``: the soft limit to the hard one, and both to
    ``wanted`` when that is higher and the process may (root). Never fails."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and wanted > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
                return
            except (ValueError, OSError):
                pass
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def pin_fn(core: int | None, nofile: int = 0) -> Callable[[], None] | None:
    """A ``preexec_fn``: pins the child to ``core`` and, with ``nofile``, raises its
    file-descriptor limit (see ``raise_nofile``)."""
    if core is None and not nofile:
        return None

    def preexec() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        if nofile:
            raise_nofile(nofile)

    return preexec


class Child:
    """A child process that speaks the workers' JSON-lines protocol on stdout and takes
    lines on stdin. Its stderr goes to a log file, whose tail is quoted in errors."""

    def __init__(self, name: str, argv: list[str], log_dir: str, core: int | None,
                 nofile: int = 0) -> None:
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=pin_fn(core, nofile),
            start_new_session=True,  # its own process group: kill() takes its children too
            cwd=HERE,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def stderr_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``event``; raises ``ChildError`` on timeout,
        exit, or a ``result`` with an error while waiting for something else."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{self.name}: no '{event}' within {timeout:.0f} s"
                                 f"\n{self.stderr_tail()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=5)
                raise ChildError(f"{self.name}: exited ({self.proc.returncode}) before "
                                 f"'{event}'\n{self.stderr_tail()}")
            try:
                msg: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue  # not ours: ignore stray stdout
            if not isinstance(msg, dict):
                continue
            if msg.get("event") == event:
                return msg
            if msg.get("event") == "result" and msg.get("error"):
                raise ChildError(f"{self.name}: {msg['error']}\n{self.stderr_tail()}")

    def send(self, line: str = "stop") -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self, timeout: float = 10.0) -> None:
        """Waits for a clean exit, then kills the process group."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()

    def kill(self) -> None:
        """Kills the process group (if it still runs) and closes the log."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        self._log.close()
