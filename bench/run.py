#!/usr/bin/env python3
"""Benchmark: awsiot_rs against paho-mqtt, gmqtt, a raw asyncio client and the mosquitto C
clients, on a private mosquitto broker on 127.0.0.1. Throughput and CPU per message (QoS 0/1,
64 B and 16 KiB, plain and mutual TLS), round-trip latency, and K concurrent connections in
one process (time, RSS per connection, delivery).

    python bench/run.py [--quick] [--scenarios a,b] [--clients a,b] [--out bench/results]

What it does (see bench/README.md for the details of each scenario):

1. starts ``/usr/sbin/mosquitto`` on a free ephemeral port of 127.0.0.1 (plus a mutual-TLS
   listener on a second one, with a throw-away PKI from ``tests/support/certs.py``) with a
   generated config and a raised file-descriptor limit, pinned to the first CPU core;
2. for every scenario, client and repetition, starts one worker process
   (``bench/workers.py``, or the C receiver ``native/mosq_recv.c`` compiled at start) pinned
   to the second core, plus the helper processes the scenario needs (pinned with the
   broker), and collects their JSON results;
3. takes the median of the repetitions and prints Markdown tables (throughput, latency,
   scale, targets), then writes ``results-<stamp>.json`` / ``.md`` and ``latest.json`` /
   ``latest.md`` to ``--out``.

Every child has a deadline and is killed past it; the broker is killed at the end, also on
errors and Ctrl-C. Nothing listens anywhere but 127.0.0.1, and no port is fixed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS_PY = os.path.join(HERE, "workers.py")
HOST = "127.0.0.1"
MOSQUITTO = "/usr/sbin/mosquitto"

#: The measured client libraries. ``raw`` (pure-Python ceiling), ``mosquitto_pub`` and
#: ``libmosquitto`` (``native/mosq_recv.c``; native C references) are references, not peers.
PEERS = ("paho", "gmqtt")
CLIENTS = ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub", "libmosquitto")
NATIVE_SRC = os.path.join(HERE, "native", "mosq_recv.c")


@dataclass(frozen=True)
class Scenario:
    """One row of a result table."""

    name: str
    #: Which runner drives it: "pub_qos0" | "pub_qos1" | "recv" | "latency" | "scale".
    kind: str
    clients: tuple[str, ...]
    description: str
    #: Row whose peer numbers the ratio columns use when this row has no peer of its own
    #: (e.g. awsiot_rs-only API variants).
    compare_to: str | None = None
    #: The worker function (``workers.py`` scenario name) when not ``name``.
    worker: str | None = None
    #: Payload in bytes when not ``--payload``; such rows send ``--big-messages`` messages.
    payload: int | None = None
    #: Over the broker's mutual-TLS listener.
    tls: bool = False
    #: ``scale``: number of connections.
    count: int = 0
    #: ``--scenarios`` accepts this name for every row of the group.
    group: str | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("pub_qos0", "pub_qos0", ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub"),
             "publish N QoS 0; ends when an independent subscriber has all N"),
    Scenario("pub_qos0_await", "pub_qos0", ("awsiot_rs",),
             "awsiot_rs with `await publish(qos=0)` instead of `publish_nowait`",
             compare_to="pub_qos0"),
    Scenario("pub_qos0_many", "pub_qos0", ("awsiot_rs",),
             "awsiot_rs with `await publish_many(batch, qos=0)` (batches of 1000)",
             compare_to="pub_qos0"),
    Scenario("pub_qos1", "pub_qos1", ("awsiot_rs", "paho", "gmqtt", "raw"),
             "publish N QoS 1 in windows of 1000; ends at the last PUBACK"),
    Scenario("pub_qos1_nowait", "pub_qos1", ("awsiot_rs",),
             "awsiot_rs with `publish_nowait(qos=1)`, then polls stats() until all acked",
             compare_to="pub_qos1"),
    Scenario("pub_qos1_many", "pub_qos1", ("awsiot_rs",),
             "awsiot_rs with `await publish_many(batch, qos=1)` (batches of --window)",
             compare_to="pub_qos1"),
    Scenario("recv_qos0_iter", "recv", ("awsiot_rs",),
             "receive N QoS 0 with `async for msg in sub`; first to last message",
             compare_to="recv_qos0_cb"),
    Scenario("recv_qos0_cb", "recv", ("awsiot_rs", "paho", "gmqtt", "raw", "libmosquitto"),
             "receive N QoS 0 with a per-message callback; first to last message"),
    Scenario("pub_qos0_mtls", "pub_qos0",
             ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub"),
             "`pub_qos0` over mutual TLS (client certificate) to the broker's TLS listener",
             worker="pub_qos0", tls=True),
    Scenario("pub_qos0_16k", "pub_qos0", ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub"),
             "`pub_qos0` with 16 KiB payloads (N = --big-messages)",
             worker="pub_qos0", payload=16384, group="payload_16k"),
    Scenario("pub_qos1_16k", "pub_qos1", ("awsiot_rs", "paho", "gmqtt", "raw"),
             "`pub_qos1` with 16 KiB payloads (N = --big-messages)",
             worker="pub_qos1", payload=16384, group="payload_16k"),
    Scenario("latency", "latency", ("awsiot_rs", "paho", "gmqtt", "raw"),
             "round trip of one QoS 0 message to a topic the client subscribes to, one at a "
             "time (awsiot_rs: callback resolves a future)"),
    Scenario("latency_iter", "latency", ("awsiot_rs",),
             "`latency` with awsiot_rs receiving through `async for` (`__anext__`)",
             compare_to="latency"),
    Scenario("scale_1k", "scale", ("awsiot_rs", "raw", "gmqtt"),
             "1 000 connections in one process, each subscribed to its own topic",
             worker="scale", count=1000, group="scale"),
    Scenario("scale_10k", "scale", ("awsiot_rs", "raw", "gmqtt"),
             "10 000 connections in one process, each subscribed to its own topic",
             worker="scale", count=10000, group="scale"),
)

THROUGHPUT_KINDS = ("pub_qos0", "pub_qos1", "recv")
#: Native (C) references: not peers, not the pure-Python ceiling.
NATIVE = ("mosquitto_pub", "libmosquitto")
#: Where ``tests/support/certs.py`` (the throw-away PKI for ``pub_qos0_mtls``) lives.
TESTS_DIR = os.path.join(os.path.dirname(HERE), "tests")


# -- processes ------------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


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


def _pin_fn(core: int | None, nofile: int = 0) -> Callable[[], None] | None:
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
            preexec_fn=_pin_fn(core, nofile),
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
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def free_port() -> int:
    """An ephemeral port the kernel just gave out on 127.0.0.1 (released for the broker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """A private mosquitto on 127.0.0.1:<free port>, plus a mutual-TLS listener on a second
    free port when given a PKI (``tls``: paths ``ca_cert``, ``server_cert``, ``server_key``).
    ``nofile``: the file-descriptor limit it needs (connections + some)."""

    def __init__(self, work_dir: str, core: int | None, tls: Any = None,
                 nofile: int = 0) -> None:
        self.work_dir = work_dir
        self.core = core
        self.tls = tls
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tls_port = 0
        self.log_path = os.path.join(work_dir, "mosquitto.log")

    def start(self) -> None:
        last_error = ""
        for _ in range(3):  # the port could be taken between free_port() and bind
            self.port = free_port()
            self.tls_port = free_port() if self.tls is not None else 0
            if self.tls_port == self.port:
                continue
            conf = os.path.join(self.work_dir, "mosquitto.conf")
            lines = [
                f"listener {self.port} {HOST}",
                "max_connections -1",
            ]
            if self.tls is not None:
                lines += [
                    f"listener {self.tls_port} {HOST}",
                    "max_connections -1",
                    f"cafile {self.tls.ca_cert}",
                    f"certfile {self.tls.server_cert}",
                    f"keyfile {self.tls.server_key}",
                    "require_certificate true",
                ]
            lines += [
                "allow_anonymous true",
                "max_inflight_messages 100",
                "max_queued_messages 1000000",
                "user root",
                "persistence false",
                "log_type error",
                "set_tcp_nodelay true",
                "log_dest stderr",
            ]
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [MOSQUITTO, "-c", conf],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    preexec_fn=_pin_fn(self.core, self.nofile),
                    start_new_session=True,
                )
            if self._wait_ready(10.0):
                return
            last_error = self._log_tail()
            self.stop()
        raise RuntimeError(f"mosquitto did not start: {last_error}")

    def nofile_limit(self) -> int | None:
        """The broker's soft file-descriptor limit (from ``/proc/<pid>/limits``)."""
        try:
            with open(f"/proc/{self.proc.pid}/limits") as f:  # type: ignore[union-attr]
                for line in f:
                    if line.startswith("Max open files"):
                        return int(line.split()[3])
        except (OSError, ValueError, IndexError, AttributeError):
            pass
        return None

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                for port in (self.port, self.tls_port):
                    if port:
                        with socket.create_connection((HOST, port), timeout=0.5):
                            pass
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-1000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


# -- one measurement --------------------------------------------------------------------------


@dataclass
class Run:
    """One (scenario, client, repetition) measurement, normalised. For ``latency`` a
    "message" is a round trip; for ``scale`` it is a connection (``msg_per_s`` =
    connections opened per second, ``us_cpu_per_msg`` = CPU per connection)."""

    scenario: str
    client: str
    rep: int
    messages: int  # N asked for
    count: int = 0  # messages that made it (received / acked)
    seconds: float = 0.0
    cpu_s: float = 0.0  # client process CPU over the measured section
    msg_per_s: float = 0.0
    us_cpu_per_msg: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs the scenarios against one broker."""

    def __init__(self, args: argparse.Namespace, work_dir: str, helper_core: int | None,
                 client_core: int | None, pki: Any = None) -> None:
        self.args = args
        self.work_dir = work_dir
        self.helper_core, self.client_core = helper_core, client_core
        self.pki = pki
        self.nofile = args.scale_max + 1024
        self.broker = Broker(work_dir, self.helper_core, tls=pki, nofile=self.nofile)
        self.children: list[Child] = []
        self.seq = 0
        self.mosquitto_pub = shutil.which("mosquitto_pub")
        self.mosq_recv: str | None = None  # set by build_native()
        self._lines_files: dict[tuple[int, int], str] = {}

    # per-scenario parameters

    def messages(self, sc: Scenario) -> int:
        if sc.kind == "latency":
            return int(self.args.round_trips)
        if sc.kind == "scale":
            return sc.count
        if sc.payload is not None:
            return int(self.args.big_messages)
        return int(self.args.messages)

    def payload(self, sc: Scenario) -> int:
        return sc.payload if sc.payload is not None else int(self.args.payload)

    def tls_opts(self, sc: Scenario) -> dict[str, Any]:
        if not sc.tls:
            return {}
        if self.pki is None:
            raise ChildError("no PKI for the mTLS listener (see the start-up message)")
        return {"port": self.broker.tls_port, "ca": self.pki.ca_cert,
                "cert": self.pki.client_cert, "key": self.pki.client_key}

    # children

    def _spawn(self, name: str, client: str, scenario: str, core: int | None,
               nofile: int = 0, **opts: Any) -> Child:
        self.seq += 1
        opts.setdefault("port", self.broker.port)
        argv = [sys.executable, WORKERS_PY, client, scenario]
        if core is not None:
            argv += ["--core", str(core)]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        child = Child(f"{self.seq:03d}-{name}", argv, self.work_dir, core, nofile)
        self.children.append(child)
        return child

    def worker(self, client: str, sc: Scenario, topic: str, **opts: Any) -> Child:
        scenario = sc.worker or sc.name
        opts = {"messages": self.messages(sc), "payload": self.payload(sc),
                "timeout": self.args.timeout, **self.tls_opts(sc), **opts}
        return self._spawn(f"{client}-{sc.name}", client, scenario, self.client_core,
                           nofile=self.nofile if sc.kind == "scale" else 0, topic=topic,
                           **opts)

    def native_recv(self, sc: Scenario, topic: str) -> Child:
        """``native/mosq_recv`` (libmosquitto, C): the receive side's native reference."""
        if self.mosq_recv is None:
            raise ChildError("native/mosq_recv is not built")
        self.seq += 1
        argv = [self.mosq_recv, str(self.broker.port), topic, str(self.messages(sc)),
                str(self.args.timeout), f"bench-libmosquitto-{os.getpid()}"]
        child = Child(f"{self.seq:03d}-libmosquitto-{sc.name}", argv, self.work_dir,
                      self.client_core)
        self.children.append(child)
        return child

    def helper(self, role: str, sc: Scenario, topic: str, **opts: Any) -> Child:
        opts = {"messages": self.messages(sc), "payload": self.payload(sc),
                "timeout": self.args.timeout, **opts}
        return self._spawn(f"helper-{role}", "helper", role, self.helper_core, topic=topic,
                           **opts)

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
            try:
                child._log.close()
            except OSError:
                pass
        self.children.clear()

    # runners: each fills a Run or raises ChildError

    def run_one(self, sc: Scenario, client: str, rep: int) -> Run:
        run = Run(sc.name, client, rep, self.messages(sc))
        topic = f"bench/{sc.name}/{client}/{rep}/{os.getpid()}"
        try:
            if not self.broker.alive():
                raise ChildError("the broker is not running")
            {"pub_qos0": self._pub_qos0, "pub_qos1": self._pub_qos1, "recv": self._recv,
             "latency": self._latency, "scale": self._scale}[sc.kind](sc, client, topic, run)
        except ChildError as e:
            run.error = str(e)
        finally:
            self.cleanup()
        got = run.extra.get("affinity")
        if got is not None and self.client_core is not None and got != [self.client_core]:
            print(f"  warning: {client} ran on cores {got}, not [{self.client_core}]",
                  file=sys.stderr)
        if run.seconds > 0 and not run.msg_per_s:
            run.msg_per_s = run.count / run.seconds
        return run

    def _pub_qos0(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """Subscriber helper first; publisher; measure ends when the subscriber has N."""
        margin = 20.0
        n = run.messages
        sub = self.helper("sub", sc, topic, idle=self.args.idle)
        sub.expect("ready", 20)
        if client == "mosquitto_pub":
            pub_res = self._mosquitto_pub(sc, topic)
            sub_res = sub.expect("result", self.args.timeout + margin)
        else:
            pub = self.worker(client, sc, topic)
            pub.expect("ready", 30)
            # The subscriber ends on its own: all N, --idle without messages, or --timeout.
            sub_res = sub.expect("result", self.args.timeout + margin)
            pub.send("stop")
            pub_res = pub.expect("result", 30)
            pub.close()
        sub.close()
        run.count = sub_res["received"]
        run.seconds = sub_res["t_last"] - pub_res["t0"] if run.count else 0.0
        run.cpu_s = pub_res["cpu_s"]
        run.us_cpu_per_msg = run.cpu_s / n * 1e6
        submit = pub_res.get("t_sent", 0) - pub_res["t0"]
        run.extra = {
            "subscriber_end": sub_res.get("end_reason"),
            "submit_s": submit,
            "submit_msg_per_s": n / submit if submit > 0 else None,
            "cpu_submit_s": pub_res.get("cpu_sent_s"),
            **{k: pub_res[k] for k in ("queue_full_retries", "stats", "affinity") if k in pub_res},
        }
        if run.count < n:
            run.error = (f"subscriber received {run.count} of {n} "
                         f"({sub_res.get('end_reason')})")

    def _lines_file(self, sc: Scenario) -> str:
        """N payload lines for ``mosquitto_pub -l`` (one file per N and payload size)."""
        key = (self.messages(sc), self.payload(sc))
        path = self._lines_files.get(key)
        if path is None:
            path = os.path.join(self.work_dir, f"lines-{key[0]}x{key[1]}.txt")
            payload = bytes(65 + i % 26 for i in range(key[1]))
            with open(path, "wb") as f:
                f.write((payload + b"\n") * key[0])
            self._lines_files[key] = path
        return path

    def _native_tls_args(self, sc: Scenario) -> list[str]:
        tls = self.tls_opts(sc)
        if not tls:
            return ["-p", str(self.broker.port)]
        return ["-p", str(tls["port"]), "--cafile", str(tls["ca"]), "--cert", str(tls["cert"]),
                "--key", str(tls["key"])]

    def _wait_native(self, proc: subprocess.Popen[bytes], what: str,
                     deadline: float) -> tuple[float, Any]:
        """Waits for a native client with ``wait4`` (its rusage); kills it past
        ``deadline``. Returns (end time, rusage)."""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return time.monotonic(), usage
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise ChildError(f"{what}: timeout")
            time.sleep(0.002)

    def _mosquitto_pub(self, sc: Scenario, topic: str) -> dict[str, Any]:
        """``mosquitto_pub -l`` with N lines on stdin, timed and its CPU read from outside
        (``wait4`` rusage)."""
        argv = [self.mosquitto_pub or "mosquitto_pub", "-h", HOST, *self._native_tls_args(sc),
                "-t", topic, "-q", "0", "-l", "-i", f"bench-mosquitto_pub-{os.getpid()}"]
        with open(self._lines_file(sc), "rb") as stdin, \
                open(os.path.join(self.work_dir, "mosquitto_pub.log"), "ab") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdin=stdin, stdout=log, stderr=log,
                                    preexec_fn=_pin_fn(self.client_core),
                                    start_new_session=True)
        t1, usage = self._wait_native(proc, "mosquitto_pub", t0 + self.args.timeout + 20)
        if proc.returncode:
            raise ChildError(f"mosquitto_pub exited with {proc.returncode}")
        return {"t0": t0, "t_sent": t1, "cpu_s": usage.ru_utime + usage.ru_stime}

    def _pub_qos1(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker alone: it times N publishes to their PUBACKs."""
        pub = self.worker(client, sc, topic, window=self.args.window,
                          inflight=self.args.inflight)
        pub.expect("ready", 30)
        res = pub.expect("result", self.args.timeout + 30)
        pub.close()
        run.count = res.get("completed") or 0
        run.seconds = res["seconds"]
        run.cpu_s = res["cpu_s"]
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {k: res[k] for k in ("stats", "queue_full_retries", "affinity") if k in res}
        if res.get("error") or run.count < run.messages:
            run.error = res.get("error") or f"{run.count} of {run.messages} acknowledged"

    def _recv(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker subscribes; a helper publishes N; first to last message in the
        worker's code."""
        if client == "libmosquitto":
            sub = self.native_recv(sc, topic)
        else:
            sub = self.worker(client, sc, topic)
        sub.expect("ready", 30)
        pub = self.helper("pub", sc, topic, rate=self.args.recv_rate)
        pub.expect("ready", 20)
        pub_res = pub.expect("result", self.args.timeout + 20)
        res = sub.expect("result", self.args.timeout + 30)
        pub.close()
        sub.close()
        run.count = res["received"]
        run.seconds = res["t_last"] - res["t_first"] if run.count > 1 else 0.0
        run.cpu_s = res["cpu_s"]
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {
            "publisher_s": pub_res["t_sent"] - pub_res["t0"],
            "latency_first_s": res["t_first"] - pub_res["t0"] if run.count else None,
            **{k: res[k] for k in ("stats", "affinity") if k in res},
        }
        if run.count < run.messages:
            run.error = f"received {run.count} of {run.messages} (QoS 0 drops or timeout)"

    def _latency(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker alone: subscribes to its topic, then N round trips of one QoS 0
        message (after ``--warmup``)."""
        w = self.worker(client, sc, topic, warmup=self.args.warmup)
        w.expect("ready", 30)
        res = w.expect("result", self.args.timeout + 30)
        w.close()
        run.count = res.get("round_trips") or 0
        run.seconds = res["seconds"]
        run.cpu_s = res["cpu_s"]
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {k: res[k] for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us",
                                         "switches_per_rt", "stats", "affinity") if k in res}
        if res.get("error") or run.count < run.messages:
            run.error = res.get("error") or f"{run.count} of {run.messages} round trips"

    def _scale(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker opens K connections (connect + subscribe to ``<topic>/<i>``) and
        reports time, CPU and RSS; a helper then publishes one message to each topic and the
        worker counts which connections got theirs."""
        k = sc.count
        timeout = max(self.args.timeout, 120.0)
        w = self.worker(client, sc, topic, count=k, concurrency=self.args.scale_concurrency,
                        idle=self.args.scale_settle, timeout=timeout)
        ready = w.expect("ready", timeout + 60)
        opened = ready.get("opened", 0)
        if opened:
            pub = self.helper("pub_each", sc, topic, count=k, payload=16)
            pub.expect("ready", 20)
            pub.expect("result", timeout)
            pub.close()
        w.send("published")
        res = w.expect("result", timeout + 90)
        w.close(timeout=30)
        run.count = res.get("opened", 0)
        run.seconds = res.get("connect_s", 0.0)
        run.cpu_s = res.get("connect_cpu_s", 0.0)
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {key: res.get(key) for key in (
            "kib_per_conn", "rss0_kib", "rss1_kib", "rss2_kib", "delivered", "duplicates",
            "arrived", "deliver_s", "close_s", "close_error", "threads", "fds", "nofile",
            "affinity")}
        run.extra["broker_nofile"] = self.broker.nofile_limit()
        if res.get("error"):
            run.error = res["error"]
            run.extra["connect_failed"] = True
        elif (res.get("delivered") or 0) < k:
            arrived = res.get("arrived")
            note = f"; the library received {arrived}" if arrived is not None else ""
            run.error = f"delivered {res.get('delivered')} of {k} messages to the application{note}"


# -- aggregation and report -------------------------------------------------------------------

#: Per-run ``extra`` numbers whose median (over the runs that measured something) goes into
#: the summary.
_MEDIAN_EXTRAS = ("submit_msg_per_s", "queue_full_retries", "p50_us", "p90_us", "p99_us",
                  "max_us", "mean_us", "switches_per_rt", "kib_per_conn", "rss0_kib", "rss1_kib", "arrived",
                  "deliver_s", "close_s", "threads", "broker_nofile")


def summarize(runs: list[Run]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scenario: {client: summary}}`` with medians over the repetitions. Runs with
    errors still count if they measured something (their error is listed)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sc in SCENARIOS:
        for client in sc.clients:
            rs = [r for r in runs if r.scenario == sc.name and r.client == client]
            if not rs:
                continue
            good = [r for r in rs if r.seconds > 0 and r.count > 0]
            s: dict[str, Any] = {
                "reps": len(rs),
                "ok_reps": sum(1 for r in rs if not r.error),
                "errors": [r.error for r in rs if r.error],
                "min_count": min((r.count for r in rs), default=0),
                "messages": rs[0].messages,
            }
            if sc.kind == "scale":
                delivered = [r.extra.get("delivered") or 0 for r in rs]
                s["min_delivered"] = min(delivered)
                s["connect_failed"] = any(r.extra.get("connect_failed") for r in rs)
            if good:
                s["msg_per_s"] = statistics.median(r.msg_per_s for r in good)
                s["msg_per_s_min"] = min(r.msg_per_s for r in good)
                s["msg_per_s_max"] = max(r.msg_per_s for r in good)
                s["us_cpu_per_msg"] = statistics.median(r.us_cpu_per_msg for r in good)
                s["seconds"] = statistics.median(r.seconds for r in good)
                s["seconds_min"] = min(r.seconds for r in good)
                s["seconds_max"] = max(r.seconds for r in good)
                for key in _MEDIAN_EXTRAS:
                    vals = [r.extra[key] for r in good if r.extra.get(key) is not None]
                    if vals:
                        s[key] = statistics.median(vals)
                if sc.kind == "latency":
                    s["p50_us_min"] = min(r.extra.get("p50_us", 0) for r in good)
                    s["p50_us_max"] = max(r.extra.get("p50_us", 0) for r in good)
            out.setdefault(sc.name, {})[client] = s
    return out


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _fmt_us(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _fmt_num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _peer_row(summary: dict[str, dict[str, dict[str, Any]]], sc: Scenario,
              refs: tuple[str, ...]) -> tuple[dict[str, dict[str, Any]], str]:
    """The clients of ``refs`` in ``sc``'s row, or in its ``compare_to`` row when it has
    none (then the note names that row)."""
    row = summary.get(sc.name, {})
    if not any(c in row for c in refs) and sc.compare_to:
        return summary.get(sc.compare_to, {}), f" vs {sc.compare_to}"
    return row, ""


def _best(peers: dict[str, dict[str, Any]], key: str, lowest: bool) -> str | None:
    have = {c: s for c, s in peers.items() if s.get(key)}
    if not have:
        return None
    pick = min if lowest else max
    return pick(have, key=lambda c: have[c][key])


def _ratios(summary: dict[str, dict[str, dict[str, Any]]], sc: Scenario,
            refs: tuple[str, ...]) -> str:
    """"thr ×a (peer) · CPU ×b (peer)": awsiot_rs throughput / best ref's, and awsiot_rs
    CPU per message / lowest ref's (below 1 = awsiot_rs uses less)."""
    mine = summary.get(sc.name, {}).get("awsiot_rs", {})
    row, note = _peer_row(summary, sc, refs)
    peers = {c: row[c] for c in refs if c in row and "msg_per_s" in row[c]}
    best_thr = _best(peers, "msg_per_s", lowest=False)
    best_cpu = _best(peers, "us_cpu_per_msg", lowest=True)
    if "msg_per_s" not in mine or best_thr is None or best_cpu is None:
        return "–"
    thr = mine["msg_per_s"] / peers[best_thr]["msg_per_s"]
    cpu_ratio = mine["us_cpu_per_msg"] / peers[best_cpu]["us_cpu_per_msg"]
    return f"thr ×{thr:.2f} ({best_thr}) · CPU ×{cpu_ratio:.2f} ({best_cpu}){note}"


def _ratio(mine: float | None, ref: float | None) -> float | None:
    return mine / ref if mine and ref else None


def _fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"×{v:.2f}"


def _throughput_table(summary: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any],
                      lines: list[str]) -> bool:
    scs = [sc for sc in SCENARIOS if sc.kind in THROUGHPUT_KINDS and sc.name in summary]
    if not scs:
        return False
    cols = [c for c in ("awsiot_rs", "paho", "gmqtt", "raw")
            if any(c in summary[sc.name] for sc in scs)]
    native = any(c in summary[sc.name] for sc in scs for c in NATIVE)
    header = ["scenario", "N × payload"]
    for c in cols:
        header += [f"{c} msg/s", f"{c} µs/msg"]
    if native:
        header += ["native msg/s", "native µs/msg"]
    header += ["awsiot_rs vs best peer (paho, gmqtt)", "awsiot_rs vs raw",
               "awsiot_rs vs native"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    incomplete = False

    def cell(s: dict[str, Any] | None) -> list[str]:
        nonlocal incomplete
        if not s:
            return ["–", "–"]
        if "msg_per_s" not in s:
            return ["failed", "–"]
        mark = ""
        if s["min_count"] < s["messages"]:
            mark = "*"
            incomplete = True
        return [_fmt_rate(s["msg_per_s"]) + mark, _fmt_us(s["us_cpu_per_msg"])]

    for sc in scs:
        row = summary[sc.name]
        n = next(iter(row.values()))["messages"]
        payload = sc.payload if sc.payload is not None else meta["payload"]
        label = f"`{sc.name}`" + (" (mTLS)" if sc.tls else "")
        cells = [label, f"{n:,} × {_fmt_size(payload)}"]
        for c in cols:
            cells += cell(row.get(c))
        if native:
            nat = next((row[c] for c in NATIVE if c in row), None)
            cells += cell(nat)
        cells.append(_ratios(summary, sc, PEERS))
        cells.append(_ratios(summary, sc, ("raw",)))
        cells.append(_ratios(summary, sc, NATIVE))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if native:
        lines.append("native = `mosquitto_pub -l` (publish rows) / `native/mosq_recv.c` "
                     "(`recv_qos0_cb`: libmosquitto, C, counting in its message callback).")
    if incomplete:
        lines.append("\\* at least one run did not get all N messages (see the details).")
    lines.append("")
    return True


def _latency_table(summary: dict[str, dict[str, dict[str, Any]]], lines: list[str]) -> bool:
    scs = [sc for sc in SCENARIOS if sc.kind == "latency" and sc.name in summary]
    if not scs:
        return False
    lines.append("| scenario | client | p50 µs | p90 µs | p99 µs | mean µs | round trips/s | "
                 "CPU µs/round trip | context switches/round trip | p50 vs raw | p99 vs raw | "
                 "p50 vs best peer | CPU vs best peer |")
    lines.append("|" + "---|" * 13)
    for sc in scs:
        row = summary[sc.name]
        base = row if "raw" in row else summary.get(sc.compare_to or "", {})
        raw = base.get("raw", {})
        peers = {c: base[c] for c in PEERS if c in base and "p50_us" in base[c]}
        best_p50 = _best(peers, "p50_us", lowest=True)
        best_cpu = _best(peers, "us_cpu_per_msg", lowest=True)
        for client, s in row.items():
            if "p50_us" not in s:
                lines.append(f"| `{sc.name}` | {client} | failed | | | | | | | | | | |")
                continue
            vs_peer = vs_cpu = "–"
            if client == "awsiot_rs" and best_p50:
                vs_peer = (f"{_fmt_ratio(_ratio(s['p50_us'], peers[best_p50]['p50_us']))} "
                           f"({best_p50})")
            if client == "awsiot_rs" and best_cpu:
                vs_cpu = (f"{_fmt_ratio(_ratio(s['us_cpu_per_msg'], peers[best_cpu]['us_cpu_per_msg']))} "
                          f"({best_cpu})")
            lines.append(
                f"| `{sc.name}` | {client} | {_fmt_num(s['p50_us'])} | "
                f"{_fmt_num(s.get('p90_us'))} | {_fmt_num(s.get('p99_us'))} | "
                f"{_fmt_num(s.get('mean_us'))} | {_fmt_rate(s.get('msg_per_s'))} | "
                f"{_fmt_us(s.get('us_cpu_per_msg'))} | {_fmt_num(s.get('switches_per_rt'))} | "
                f"{_fmt_ratio(_ratio(s['p50_us'], raw.get('p50_us')))} | "
                f"{_fmt_ratio(_ratio(s.get('p99_us'), raw.get('p99_us')))} | {vs_peer} | {vs_cpu} |")
    lines.append("")
    return True


def _scale_table(summary: dict[str, dict[str, dict[str, Any]]], lines: list[str]) -> bool:
    scs = [sc for sc in SCENARIOS if sc.kind == "scale" and sc.name in summary]
    if not scs:
        return False
    lines.append("| K | client | connect + subscribe all, s | connections/s | CPU µs/connection | "
                 "RSS before → after, MiB | KiB/connection | delivered (min of runs) | "
                 "time vs raw | KiB/conn vs raw | time vs best peer | KiB/conn vs best peer |")
    lines.append("|" + "---|" * 12)
    for sc in scs:
        row = summary[sc.name]
        raw = row.get("raw", {})
        peers = {c: row[c] for c in PEERS if c in row and row[c].get("seconds")
                 and not row[c].get("connect_failed")}
        best_t = _best(peers, "seconds", lowest=True)
        best_m = _best(peers, "kib_per_conn", lowest=True)
        for client, s in row.items():
            if s.get("skipped"):
                lines.append(f"| {sc.count:,} | {client} | skipped: {s['skipped']} "
                             "| | | | | | | | | |")
                continue
            if "seconds" not in s:
                err = (s["errors"][0].splitlines()[0] if s["errors"] else "failed")[:120]
                lines.append(f"| {sc.count:,} | {client} | failed: {err} | | | | | | | | | |")
                continue
            failed = " (failed)" if s.get("connect_failed") else ""
            vs_t = vs_m = "–"
            if client == "awsiot_rs" and best_t:
                vs_t = f"{_fmt_ratio(_ratio(s['seconds'], peers[best_t]['seconds']))} ({best_t})"
            if client == "awsiot_rs" and best_m:
                vs_m = (f"{_fmt_ratio(_ratio(s.get('kib_per_conn'), peers[best_m]['kib_per_conn']))}"
                        f" ({best_m})")
            rss = (f"{s.get('rss0_kib', 0) / 1024:.0f} → {s.get('rss1_kib', 0) / 1024:.0f}"
                   if s.get("rss1_kib") else "–")
            lines.append(
                f"| {sc.count:,} | {client}{failed} | {s['seconds']:.2f} "
                f"({s['seconds_min']:.2f}–{s['seconds_max']:.2f}) | "
                f"{_fmt_rate(s.get('msg_per_s'))} | {_fmt_num(s.get('us_cpu_per_msg'), 0)} | "
                f"{rss} | {_fmt_num(s.get('kib_per_conn'))} | "
                f"{s.get('min_delivered', 0):,}/{sc.count:,} | "
                f"{_fmt_ratio(_ratio(s['seconds'], raw.get('seconds')))} | "
                f"{_fmt_ratio(_ratio(s.get('kib_per_conn'), raw.get('kib_per_conn')))} | "
                f"{vs_t} | {vs_m} |")
    lines.append("")
    lines.append("delivered = connections whose application code (callback) got the one "
                 "message published to its topic after all were subscribed.")
    lines.append("")
    return True


def targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the project's performance targets; met is None when
    not measured."""
    out: list[tuple[str, str, bool | None]] = []

    def get(sc: str, client: str, key: str) -> float | None:
        return summary.get(sc, {}).get(client, {}).get(key)

    def ratio_target(label: str, sc: str, ref: str, key: str, limit: float,
                     at_least: bool) -> None:
        mine, theirs = get(sc, "awsiot_rs", key), get(sc, ref, key)
        r = _ratio(mine, theirs)
        if r is None:
            out.append((label, "not measured", None))
            return
        out.append((label, f"×{r:.2f} ({_fmt_num(mine, 2)} vs {ref} {_fmt_num(theirs, 2)})",
                    r >= limit if at_least else r <= limit))

    ratio_target("QoS 0 publish ≥ 0.95× native (`pub_qos0`, msg/s)", "pub_qos0",
                 "mosquitto_pub", "msg_per_s", 0.95, True)
    ratio_target("QoS 0 receive ≥ 0.95× native (`recv_qos0_cb`, msg/s)", "recv_qos0_cb",
                 "libmosquitto", "msg_per_s", 0.95, True)
    ratio_target("mTLS QoS 0 publish ≥ 0.95× native (`pub_qos0_mtls`, msg/s)",
                 "pub_qos0_mtls", "mosquitto_pub", "msg_per_s", 0.95, True)
    ratio_target("QoS 1 publish ≥ raw writer (`pub_qos1`, msg/s)", "pub_qos1", "raw",
                 "msg_per_s", 1.0, True)
    ratio_target("QoS 1 publish ≥ raw writer (`pub_qos1_16k`, msg/s)", "pub_qos1_16k", "raw",
                 "msg_per_s", 1.0, True)
    for sc in SCENARIOS:
        if sc.kind not in THROUGHPUT_KINDS or sc.compare_to or sc.name not in summary:
            continue
        row = summary[sc.name]
        peers = {c: row[c] for c in PEERS if c in row and row[c].get("us_cpu_per_msg")}
        best = _best(peers, "us_cpu_per_msg", lowest=True)
        if best:
            ratio_target(f"CPU/msg ≤ 0.5× best peer (`{sc.name}`)", sc.name, best,
                         "us_cpu_per_msg", 0.5, False)
    ratio_target("latency p50 ≤ 1.2× raw (`latency`)", "latency", "raw", "p50_us", 1.2, False)
    big = next((sc for sc in sorted(SCENARIOS, key=lambda s: -s.count)
                if sc.kind == "scale" and "awsiot_rs" in summary.get(sc.name, {})), None)
    if big is not None:
        s = summary[big.name]["awsiot_rs"]
        kib = s.get("kib_per_conn")
        out.append((f"{big.count:,} connections: ≤ 10 KiB RSS per connection",
                    f"{_fmt_num(kib)} KiB" if kib is not None else "not measured",
                    None if kib is None else kib <= 10.0))
        ratio_target(f"{big.count:,} connections: connect-all ≤ 2× raw", big.name, "raw",
                     "seconds", 2.0, False)
        d = s.get("min_delivered")
        out.append((f"{big.count:,} connections: every one receives its message",
                    f"{d:,}/{big.count:,} (min of runs)" if d is not None else "not measured",
                    None if d is None else d >= big.count))
    return out


def markdown(summary: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any],
             runs: list[Run]) -> str:
    v = meta["versions"]
    lines = [
        f"{meta['cpu']}, {meta['cpu_count']} cores (client on core {meta['client_core']}, "
        f"broker and helpers on core {meta['helper_core']}); Python {meta['python']}; "
        f"awsiot_rs {v.get('awsiot_rs')}, paho-mqtt {v.get('paho-mqtt')}, gmqtt "
        f"{v.get('gmqtt')}, {v.get('mosquitto')}. Median of {meta['repeat']} runs. "
        f"`{meta['command']}`.",
        "",
    ]
    if any(sc.kind in THROUGHPUT_KINDS and sc.name in summary for sc in SCENARIOS):
        lines += ["### Throughput and CPU", "",
                  "msg/s end to end; µs/msg = client process CPU (user + sys, all threads) per "
                  "message.", ""]
        _throughput_table(summary, meta, lines)
    if any(sc.kind == "latency" and sc.name in summary for sc in SCENARIOS):
        lines += ["### Round-trip latency", "",
                  f"{meta['round_trips']:,} round trips after {meta['warmup']} warm-up, "
                  f"{meta['payload']} B QoS 0 to the client's own subscription; percentiles of "
                  "each run, then the median over runs.", ""]
        _latency_table(summary, lines)
    if any(sc.kind == "scale" and sc.name in summary for sc in SCENARIOS):
        lines += ["### Connection scale", "",
                  f"K connections in one process, at most {meta['scale_concurrency']} "
                  "connecting at once; each connects and subscribes to its own topic. Time and "
                  "CPU of the whole connect + subscribe phase; RSS growth (`VmRSS`) over it "
                  "divided by K.", ""]
        _scale_table(summary, lines)
    tg = targets(summary)
    if tg:
        lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
        for label, measured, met in tg:
            mark = "–" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {label} | {measured} | {mark} |")
        lines.append("")
    lines.append("Scenarios: " + "; ".join(f"`{s.name}`: {s.description}" for s in SCENARIOS
                                           if s.name in summary))
    lines.append("")
    lines.append("<details><summary>Details (spread, publish-call rate, errors)</summary>")
    lines.append("")
    lines.append("| scenario | client | msg/s median (min–max) | µs/msg | min count | "
                 "publish calls/s | QueueFullError retries | errors |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for sc in SCENARIOS:
        for c, s in summary.get(sc.name, {}).items():
            rng = (f"{_fmt_rate(s.get('msg_per_s'))} ({_fmt_rate(s.get('msg_per_s_min'))}–"
                   f"{_fmt_rate(s.get('msg_per_s_max'))})")
            errs = "; ".join(sorted(set(e.splitlines()[0] for e in s["errors"])))[:200]
            if s.get("skipped"):
                errs = f"skipped: {s['skipped']}"
            lines.append(f"| {sc.name} | {c} | {rng} | {_fmt_us(s.get('us_cpu_per_msg'))} | "
                         f"{s['min_count']}/{s['messages']} | "
                         f"{_fmt_rate(s.get('submit_msg_per_s'))} | "
                         f"{s.get('queue_full_retries', '–')} | {errs or '–'} |")
    lines.append("")
    lines.append("</details>")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("awsiot_rs", "paho-mqtt", "gmqtt"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001
            out[dist] = None
    try:
        first = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True,
                               timeout=10).stdout.splitlines()[0]
        out["mosquitto"] = first.strip()
    except Exception:  # noqa: BLE001
        out["mosquitto"] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="awsiot_rs throughput, CPU, latency and connection-scale benchmark against "
                    "paho-mqtt, gmqtt, a raw asyncio client and the mosquitto C clients, on a "
                    "private local mosquitto.")
    p.add_argument("--quick", action="store_true",
                   help="N = 20000 instead of 100000, --big-messages 2000, --scale-max 1000")
    p.add_argument("--messages", "-n", type=int, default=None, help="messages per run (N)")
    p.add_argument("--payload", type=int, default=64, help="payload bytes (default 64)")
    p.add_argument("--big-messages", type=int, default=None,
                   help="messages per run of the 16 KiB rows (default 5000, 2000 with --quick)")
    p.add_argument("--round-trips", type=int, default=1000,
                   help="latency: measured round trips per run")
    p.add_argument("--warmup", type=int, default=100,
                   help="latency: unmeasured round trips first")
    p.add_argument("--scale-max", type=int, default=None,
                   help="scale: largest K (connections); rows are 1000, 10000 and this K "
                        "(default 10000, 1000 with --quick)")
    p.add_argument("--scale-concurrency", type=int, default=100,
                   help="scale: connection attempts in progress at once (mosquitto's listen "
                        "backlog is 100)")
    p.add_argument("--scale-settle", type=float, default=2.0,
                   help="scale: after the last publish, wait this long without a new "
                        "delivery before counting")
    p.add_argument("--repeat", type=int, default=3, help="runs per (scenario, client)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated subset, e.g. pub_qos0,latency; groups: "
                        "payload_16k, scale")
    p.add_argument("--clients", default=None, help="comma-separated subset of " +
                   ",".join(CLIENTS))
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a measured section may take before it gives up")
    p.add_argument("--idle", type=float, default=5.0,
                   help="pub_qos0: the subscriber stops after this long without a message")
    p.add_argument("--window", type=int, default=1000,
                   help="pub_qos1: publishes submitted and awaited together")
    p.add_argument("--inflight", type=int, default=100,
                   help="pub_qos1: un-acked QoS 1 limit for awsiot_rs and paho")
    p.add_argument("--recv-rate", type=float, default=0.0,
                   help="recv_qos0_*: load publisher rate in msg/s (0 = unpaced)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    a = p.parse_args(argv)
    if a.messages is None:
        a.messages = 20_000 if a.quick else 100_000
    if a.big_messages is None:
        a.big_messages = 2_000 if a.quick else 5_000
    if a.scale_max is None:
        a.scale_max = 1_000 if a.quick else 10_000
    if min(a.messages, a.big_messages, a.round_trips, a.repeat, a.scale_max,
           a.scale_concurrency) < 1 or a.payload < 0 or a.warmup < 0:
        p.error("counts must be >= 1, --payload and --warmup >= 0")
    return a


def scale_rows(scale_max: int) -> tuple[Scenario, ...]:
    """The ``scale`` rows for K = 1000, 10000 and ``scale_max``, up to ``scale_max``."""
    base = next(sc for sc in SCENARIOS if sc.kind == "scale")
    ks = sorted({k for k in (1_000, 10_000, scale_max) if k <= scale_max})
    rows = []
    for k in ks:
        name = f"scale_{k // 1000}k" if k % 1000 == 0 else f"scale_{k}"
        rows.append(Scenario(name, "scale", base.clients,
                             f"{k:,} connections in one process, each subscribed to its own "
                             "topic", worker="scale", count=k, group="scale"))
    return tuple(rows)


def build_native(work_dir: str) -> tuple[str | None, str]:
    """Compiles ``native/mosq_recv.c`` against the libmosquitto runtime library into
    ``work_dir``; returns (path, "") or (None, why not)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc) in PATH"
    out = os.path.join(work_dir, "mosq_recv")
    try:
        proc = subprocess.run([cc, "-O2", "-o", out, NATIVE_SRC, "-l:libmosquitto.so.1"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{cc}: {e}"
    if proc.returncode:
        return None, f"cannot build {NATIVE_SRC} (needs libmosquitto.so.1): " + \
            proc.stderr.strip()[-300:]
    return out, ""


def make_pki(work_dir: str) -> Any:
    """The throw-away PKI of ``tests/support/certs.py`` in ``work_dir/pki``, or None (with a
    message) when it cannot be made."""
    sys.path.insert(0, TESTS_DIR)
    try:
        from support.certs import make_pki as _make_pki

        return _make_pki(os.path.join(work_dir, "pki"))
    except Exception as e:  # noqa: BLE001
        print(f"cannot make the mTLS PKI ({type(e).__name__}: {e}): mTLS rows skipped",
              file=sys.stderr)
        return None
    finally:
        sys.path.remove(TESTS_DIR)


def main(argv: list[str]) -> int:
    global SCENARIOS
    args = parse_args(argv)
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    SCENARIOS = tuple(sc for sc in SCENARIOS if sc.kind != "scale") + scale_rows(args.scale_max)
    only_sc = set(args.scenarios.split(",")) if args.scenarios else None
    only_cl = set(args.clients.split(",")) if args.clients else None
    known = {s.name for s in SCENARIOS} | {s.group for s in SCENARIOS if s.group}
    unknown = (only_sc or set()) - known
    unknown |= (only_cl or set()) - set(CLIENTS)
    if unknown:
        print(f"unknown scenario/client: {', '.join(sorted(unknown))} (scale rows above "
              f"--scale-max {args.scale_max} are not run)", file=sys.stderr)
        return 2

    helper_core, client_core = cores() if not args.no_pin else (None, None)
    if helper_core is not None:
        os.sched_setaffinity(0, {helper_core})  # the orchestrator stays off the client's core

    work_dir = tempfile.mkdtemp(prefix="awsiot-bench-")
    plan: list[tuple[Scenario, str]] = []
    notes: list[str] = []
    mosq_recv = None
    if any("libmosquitto" in sc.clients for sc in SCENARIOS
           if not only_sc or sc.name in only_sc or sc.group in only_sc) and \
            (not only_cl or "libmosquitto" in only_cl):
        mosq_recv, why = build_native(work_dir)
        if mosq_recv is None:
            notes.append(f"libmosquitto reference skipped: {why}")
    for sc in SCENARIOS:
        if only_sc and sc.name not in only_sc and sc.group not in only_sc:
            continue
        for client in sc.clients:
            if only_cl and client not in only_cl:
                continue
            if client == "mosquitto_pub" and not shutil.which(client):
                notes.append(f"{client} not in PATH: skipped")
                continue
            if client == "libmosquitto" and mosq_recv is None:
                continue
            if client == "mosquitto_pub" and (sc.payload or args.payload) == 0:
                notes.append("mosquitto_pub -l cannot send empty payloads: skipped")
                continue
            plan.append((sc, client))
    pki = None
    if any(sc.tls for sc, _ in plan):
        pki = make_pki(work_dir)
        if pki is None:
            plan = [(sc, c) for sc, c in plan if not sc.tls]
    for note in dict.fromkeys(notes):
        print(note, file=sys.stderr)

    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "messages": args.messages,
        "payload": args.payload,
        "big_messages": args.big_messages,
        "round_trips": args.round_trips,
        "warmup": args.warmup,
        "scale_max": args.scale_max,
        "scale_concurrency": args.scale_concurrency,
        "repeat": args.repeat,
        "window": args.window,
        "inflight": args.inflight,
        "recv_rate": args.recv_rate,
        "timeout": args.timeout,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "helper_core": helper_core,
        "client_core": client_core,
        "versions": versions(),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "loadavg_start": os.getloadavg(),
    }
    runs: list[Run] = []
    skipped: dict[tuple[str, str], str] = {}
    bench = Bench(args, work_dir, helper_core, client_core, pki)
    bench.mosq_recv = mosq_recv
    keep_logs = False
    interrupted = False
    t_start = time.monotonic()
    try:
        bench.broker.start()
        meta["broker_nofile"] = bench.broker.nofile_limit()
        print(f"mosquitto on {HOST}:{bench.broker.port}"
              + (f" (mTLS on {bench.broker.tls_port})" if pki is not None else "")
              + f", logs in {work_dir}; {len(plan)} (scenario, client) pairs × {args.repeat}",
              file=sys.stderr)
        # Repetitions interleave the clients of a scenario, so drift hits all alike.
        scale_failed: dict[str, int] = {}  # client -> smallest K whose connects all failed
        for sc in SCENARIOS:
            pairs = [client for s, client in plan if s is sc]
            if sc.kind == "scale":
                for client in [c for c in pairs if c in scale_failed]:
                    skipped[(sc.name, client)] = (f"could not open K = {scale_failed[client]:,} "
                                                  "in every run")
                    pairs.remove(client)
            for rep in range(1, args.repeat + 1):
                for client in pairs:
                    t = time.monotonic()
                    run = bench.run_one(sc, client, rep)
                    runs.append(run)
                    status = "ok" if not run.error else f"ERROR {run.error.splitlines()[0]}"
                    unit = {"latency": "RT/s", "scale": "conn/s"}.get(sc.kind, "msg/s")
                    extra = ""
                    if sc.kind == "latency" and run.extra.get("p50_us"):
                        extra = f" p50 {run.extra['p50_us']:.1f} µs p99 {run.extra['p99_us']:.1f}"
                    if sc.kind == "scale" and run.extra.get("kib_per_conn") is not None:
                        extra = (f" {run.seconds:.2f} s {run.extra['kib_per_conn']:.1f} KiB/conn"
                                 f" delivered {run.extra.get('delivered')}")
                    print(f"  {sc.name:<16} {client:<14} #{rep}: {_fmt_rate(run.msg_per_s):>7} "
                          f"{unit} {run.us_cpu_per_msg:7.2f} µs/{unit.split('/')[0]}"
                          f"{extra}  {run.count}/{run.messages}"
                          f"  ({time.monotonic() - t:.1f} s) {status}", file=sys.stderr)
                    if run.error:
                        keep_logs = True
                    if not bench.broker.alive():
                        print("  broker died; restarting it", file=sys.stderr)
                        bench.broker.stop()
                        bench.broker.start()
            if sc.kind == "scale":
                for client in pairs:
                    mine = [r for r in runs if r.scenario == sc.name and r.client == client]
                    if mine and all(r.extra.get("connect_failed") for r in mine):
                        scale_failed.setdefault(client, sc.count)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        bench.cleanup()
        bench.broker.stop()
        if not keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"logs kept in {work_dir}", file=sys.stderr)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()

    summary = summarize(runs)
    for (name, client), why in skipped.items():
        summary.setdefault(name, {})[client] = {"reps": 0, "ok_reps": 0, "errors": [],
                                                "min_count": 0, "messages": 0, "skipped": why}
    md = markdown(summary, meta, runs)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}
    for name in (f"results-{stamp}", "latest"):
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(doc, f, indent=2)
        with open(os.path.join(args.out, name + ".md"), "w") as f:
            f.write(md)
    print(f"wrote {os.path.join(args.out, f'results-{stamp}.json')} and .md "
          f"({meta['elapsed_s']:.0f} s)", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
