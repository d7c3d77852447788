#!/usr/bin/env python3
"""Throughput and CPU benchmark: awsiot_rs against paho-mqtt, gmqtt, a raw asyncio client
and (where installed) mosquitto_pub, on a private mosquitto broker on 127.0.0.1.

    python bench/run.py [--quick] [--messages N] [--payload BYTES] [--out bench/results]

What it does (see bench/README.md for the details of each scenario):

1. starts ``/usr/sbin/mosquitto`` on a free ephemeral port of 127.0.0.1 with a generated
   config, pinned to the first CPU core;
2. for every scenario, client and repetition, starts one worker process
   (``bench/workers.py``) pinned to the second core, plus the helper processes the scenario
   needs (pinned with the broker), and collects their JSON results;
3. takes the median of the repetitions and prints a Markdown table, then writes
   ``results-<stamp>.json`` / ``.md`` and ``latest.json`` / ``latest.md`` to ``--out``.

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

#: The measured client libraries. ``raw`` (pure-Python ceiling) and ``mosquitto_pub``
#: (native C reference) are references, not peers.
PEERS = ("paho", "gmqtt")
CLIENTS = ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub")


@dataclass(frozen=True)
class Scenario:
    """One row of the result table."""

    name: str
    kind: str  # "pub_qos0" | "pub_qos1" | "recv": which runner drives it
    clients: tuple[str, ...]
    description: str
    #: Row whose peer numbers the ratio column uses when this row has no peer of its own
    #: (e.g. awsiot_rs-only API variants).
    compare_to: str | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("pub_qos0", "pub_qos0", ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub"),
             "publish N QoS 0; ends when an independent subscriber has all N"),
    Scenario("pub_qos0_await", "pub_qos0", ("awsiot_rs",),
             "awsiot_rs with `await publish(qos=0)` instead of `publish_nowait`",
             compare_to="pub_qos0"),
    Scenario("pub_qos1", "pub_qos1", ("awsiot_rs", "paho", "gmqtt", "raw"),
             "publish N QoS 1 in windows of 1000; ends at the last PUBACK"),
    Scenario("pub_qos1_nowait", "pub_qos1", ("awsiot_rs",),
             "awsiot_rs with `publish_nowait(qos=1)`, then polls stats() until all acked",
             compare_to="pub_qos1"),
    Scenario("recv_qos0_iter", "recv", ("awsiot_rs",),
             "receive N QoS 0 with `async for msg in sub`; first to last message",
             compare_to="recv_qos0_cb"),
    Scenario("recv_qos0_cb", "recv", ("awsiot_rs", "paho", "gmqtt", "raw"),
             "receive N QoS 0 with a per-message callback; first to last message"),
)


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


def _pin_fn(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


class Child:
    """A child process that speaks the workers' JSON-lines protocol on stdout and takes
    lines on stdin. Its stderr goes to a log file, whose tail is quoted in errors."""

    def __init__(self, name: str, argv: list[str], log_dir: str, core: int | None) -> None:
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=_pin_fn(core),
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
    """A private mosquitto on 127.0.0.1:<free port>."""

    def __init__(self, work_dir: str, core: int | None) -> None:
        self.work_dir = work_dir
        self.core = core
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = os.path.join(work_dir, "mosquitto.log")

    def start(self) -> None:
        last_error = ""
        for _ in range(3):  # the port could be taken between free_port() and bind
            self.port = free_port()
            conf = os.path.join(self.work_dir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {self.port} {HOST}\n"
                    "allow_anonymous true\n"
                    "max_inflight_messages 100\n"
                    "max_queued_messages 1000000\n"
                    "user root\n"
                    "persistence false\n"
                    "log_type error\n"
                    "set_tcp_nodelay true\n"
                    "log_dest stderr\n"
                )
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [MOSQUITTO, "-c", conf],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    preexec_fn=_pin_fn(self.core),
                    start_new_session=True,
                )
            if self._wait_ready(10.0):
                return
            last_error = self._log_tail()
            self.stop()
        raise RuntimeError(f"mosquitto did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
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
    """One (scenario, client, repetition) measurement, normalised."""

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
                 client_core: int | None) -> None:
        self.args = args
        self.work_dir = work_dir
        self.helper_core, self.client_core = helper_core, client_core
        self.broker = Broker(work_dir, self.helper_core)
        self.children: list[Child] = []
        self.seq = 0
        self.mosquitto_pub = shutil.which("mosquitto_pub")
        self._lines_file: str | None = None

    # children

    def _spawn(self, name: str, client: str, scenario: str, core: int | None,
               **opts: Any) -> Child:
        self.seq += 1
        argv = [sys.executable, WORKERS_PY, client, scenario, "--port", str(self.broker.port)]
        if core is not None:
            argv += ["--core", str(core)]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        child = Child(f"{self.seq:03d}-{name}", argv, self.work_dir, core)
        self.children.append(child)
        return child

    def worker(self, client: str, scenario: str, topic: str, **opts: Any) -> Child:
        return self._spawn(f"{client}-{scenario}", client, scenario, self.client_core,
                           topic=topic, messages=self.args.messages, payload=self.args.payload,
                           timeout=self.args.timeout, **opts)

    def helper(self, role: str, topic: str, **opts: Any) -> Child:
        return self._spawn(f"helper-{role}", "helper", role, self.helper_core, topic=topic,
                           messages=self.args.messages, payload=self.args.payload,
                           timeout=self.args.timeout, **opts)

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
            try:
                child._log.close()
            except OSError:
                pass
        self.children.clear()

    # runners: each returns a filled Run or raises ChildError

    def run_one(self, sc: Scenario, client: str, rep: int) -> Run:
        run = Run(sc.name, client, rep, self.args.messages)
        topic = f"bench/{sc.name}/{client}/{rep}/{os.getpid()}"
        try:
            if not self.broker.alive():
                raise ChildError("the broker is not running")
            {"pub_qos0": self._pub_qos0, "pub_qos1": self._pub_qos1,
             "recv": self._recv}[sc.kind](sc, client, topic, run)
        except ChildError as e:
            run.error = str(e)
        finally:
            self.cleanup()
        got = run.extra.get("affinity")
        if got is not None and self.client_core is not None and got != [self.client_core]:
            print(f"  warning: {client} ran on cores {got}, not [{self.client_core}]",
                  file=sys.stderr)
        if run.seconds > 0:
            run.msg_per_s = run.count / run.seconds
        return run

    def _pub_qos0(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """Subscriber helper first; publisher; measure ends when the subscriber has N."""
        margin = 20.0
        sub = self.helper("sub", topic, idle=self.args.idle)
        sub.expect("ready", 20)
        if client == "mosquitto_pub":
            pub_res = self._mosquitto_pub(topic)
            sub_res = sub.expect("result", self.args.timeout + margin)
        else:
            pub = self.worker(client, sc.name, topic)
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
        run.us_cpu_per_msg = run.cpu_s / run.messages * 1e6
        submit = pub_res.get("t_sent", 0) - pub_res["t0"]
        run.extra = {
            "subscriber_end": sub_res.get("end_reason"),
            "submit_s": submit,
            "submit_msg_per_s": run.messages / submit if submit > 0 else None,
            "cpu_submit_s": pub_res.get("cpu_sent_s"),
            **{k: pub_res[k] for k in ("queue_full_retries", "stats", "affinity") if k in pub_res},
        }
        if run.count < run.messages:
            run.error = (f"subscriber received {run.count} of {run.messages} "
                         f"({sub_res.get('end_reason')})")

    def _mosquitto_pub(self, topic: str) -> dict[str, Any]:
        """``mosquitto_pub -l`` with N lines on stdin, timed and its CPU read from outside
        (``wait4`` rusage)."""
        if self._lines_file is None:
            self._lines_file = os.path.join(self.work_dir, "lines.txt")
            payload = bytes(65 + i % 26 for i in range(self.args.payload))
            with open(self._lines_file, "wb") as f:
                f.write((payload + b"\n") * self.args.messages)
        argv = [self.mosquitto_pub or "mosquitto_pub", "-h", HOST, "-p", str(self.broker.port),
                "-t", topic, "-q", "0", "-l", "-i", f"bench-mosquitto_pub-{os.getpid()}"]
        with open(self._lines_file, "rb") as stdin, \
                open(os.path.join(self.work_dir, "mosquitto_pub.log"), "ab") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdin=stdin, stdout=log, stderr=log,
                                    preexec_fn=_pin_fn(self.client_core),
                                    start_new_session=True)
        deadline = t0 + self.args.timeout + 20
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise ChildError("mosquitto_pub: timeout")
            time.sleep(0.002)
        t1 = time.monotonic()
        if proc.returncode:
            raise ChildError(f"mosquitto_pub exited with {proc.returncode}")
        return {"t0": t0, "t_sent": t1, "cpu_s": usage.ru_utime + usage.ru_stime}

    def _pub_qos1(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker alone: it times N publishes to their PUBACKs."""
        pub = self.worker(client, sc.name, topic, window=self.args.window,
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
        sub = self.worker(client, sc.name, topic)
        sub.expect("ready", 30)
        pub = self.helper("pub", topic, rate=self.args.recv_rate)
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


# -- aggregation and report -------------------------------------------------------------------


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
            if good:
                s["msg_per_s"] = statistics.median(r.msg_per_s for r in good)
                s["msg_per_s_min"] = min(r.msg_per_s for r in good)
                s["msg_per_s_max"] = max(r.msg_per_s for r in good)
                s["us_cpu_per_msg"] = statistics.median(r.us_cpu_per_msg for r in good)
                submit = [r.extra["submit_msg_per_s"] for r in good
                          if r.extra.get("submit_msg_per_s")]
                if submit:
                    s["submit_msg_per_s"] = statistics.median(submit)
                retries = [r.extra["queue_full_retries"] for r in good
                           if r.extra.get("queue_full_retries") is not None]
                if retries:
                    s["queue_full_retries"] = statistics.median(retries)
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


def _ratios(summary: dict[str, dict[str, dict[str, Any]]], sc: Scenario,
            refs: tuple[str, ...]) -> str:
    """"thr ×a (peer) · CPU ×b (peer)": awsiot_rs throughput / best ref's, and awsiot_rs
    CPU per message / lowest ref's (below 1 = awsiot_rs uses less)."""
    mine = summary.get(sc.name, {}).get("awsiot_rs", {})
    row = summary.get(sc.name, {})
    note = ""
    if not any(c in row for c in refs) and sc.compare_to:
        row = summary.get(sc.compare_to, {})
        note = f" vs {sc.compare_to}"
    peers = {c: row[c] for c in refs if c in row and "msg_per_s" in row[c]}
    if "msg_per_s" not in mine or not peers:
        return "–"
    best_thr = max(peers, key=lambda c: peers[c]["msg_per_s"])
    best_cpu = min(peers, key=lambda c: peers[c]["us_cpu_per_msg"])
    thr = mine["msg_per_s"] / peers[best_thr]["msg_per_s"]
    cpu_ratio = mine["us_cpu_per_msg"] / peers[best_cpu]["us_cpu_per_msg"]
    return f"thr ×{thr:.2f} ({best_thr}) · CPU ×{cpu_ratio:.2f} ({best_cpu}){note}"


def markdown(summary: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any],
             runs: list[Run]) -> str:
    clients = [c for c in CLIENTS if any(c in row for row in summary.values())]
    lines = [
        f"N = {meta['messages']:,} messages of {meta['payload']} B, median of "
        f"{meta['repeat']} runs; msg/s end to end, µs = client CPU (user+sys) per message. "
        f"awsiot_rs {meta['versions'].get('awsiot_rs')}, paho-mqtt "
        f"{meta['versions'].get('paho-mqtt')}, gmqtt {meta['versions'].get('gmqtt')}, "
        f"{meta['versions'].get('mosquitto')}, Python {meta['python']}, "
        f"{meta['cpu_count']} cores (client on core {meta['client_core']}, broker and "
        f"helpers on core {meta['helper_core']}).",
        "",
    ]
    header = ["scenario"]
    for c in clients:
        header += [f"{c} msg/s", f"{c} µs/msg"]
    header += ["awsiot_rs vs best peer (paho, gmqtt)", "awsiot_rs vs raw"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    incomplete = False
    for sc in SCENARIOS:
        row = summary.get(sc.name)
        if not row:
            continue
        cells = [f"`{sc.name}`"]
        for c in clients:
            s = row.get(c)
            if not s or "msg_per_s" not in s:
                cells += ["–", "–"] if not s else ["failed", "–"]
                continue
            mark = ""
            if s["min_count"] < s["messages"]:
                mark = "*"
                incomplete = True
            cells += [_fmt_rate(s["msg_per_s"]) + mark, _fmt_us(s["us_cpu_per_msg"])]
        cells.append(_ratios(summary, sc, PEERS))
        cells.append(_ratios(summary, sc, ("raw",)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if incomplete:
        lines.append("\\* at least one run did not get all N messages (see the errors below).")
        lines.append("")
    lines.append("Scenarios: " + "; ".join(f"`{s.name}`: {s.description}" for s in SCENARIOS))
    lines.append("")
    # Details: spread, submit rate, errors.
    lines.append("<details><summary>Details (min–max msg/s, publish-call rate, errors)"
                 "</summary>")
    lines.append("")
    lines.append("| scenario | client | msg/s median (min–max) | µs/msg | min count | "
                 "publish calls/s | QueueFullError retries | errors |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for sc in SCENARIOS:
        for c, s in summary.get(sc.name, {}).items():
            rng = (f"{_fmt_rate(s.get('msg_per_s'))} ({_fmt_rate(s.get('msg_per_s_min'))}–"
                   f"{_fmt_rate(s.get('msg_per_s_max'))})")
            errs = "; ".join(sorted(set(e.splitlines()[0] for e in s["errors"])))[:200]
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
        description="awsiot_rs throughput/CPU benchmark against paho-mqtt, gmqtt, a raw "
                    "asyncio client and mosquitto_pub, on a private local mosquitto.")
    p.add_argument("--quick", action="store_true", help="N = 20000 instead of 100000")
    p.add_argument("--messages", "-n", type=int, default=None, help="messages per run (N)")
    p.add_argument("--payload", type=int, default=64, help="payload bytes (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="runs per (scenario, client)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated subset, e.g. pub_qos0,recv_qos0_cb")
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
    if a.messages < 1 or a.payload < 0 or a.repeat < 1:
        p.error("--messages and --repeat must be >= 1, --payload >= 0")
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    only_sc = set(args.scenarios.split(",")) if args.scenarios else None
    only_cl = set(args.clients.split(",")) if args.clients else None
    unknown = (only_sc or set()) - {s.name for s in SCENARIOS}
    unknown |= (only_cl or set()) - set(CLIENTS)
    if unknown:
        print(f"unknown scenario/client: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    helper_core, client_core = cores() if not args.no_pin else (None, None)
    if helper_core is not None:
        os.sched_setaffinity(0, {helper_core})  # the orchestrator stays off the client's core

    plan: list[tuple[Scenario, str]] = []
    for sc in SCENARIOS:
        if only_sc and sc.name not in only_sc:
            continue
        for client in sc.clients:
            if only_cl and client not in only_cl:
                continue
            if client == "mosquitto_pub" and not shutil.which("mosquitto_pub"):
                print("mosquitto_pub not in PATH: skipped", file=sys.stderr)
                continue
            if client == "mosquitto_pub" and args.payload == 0:
                print("mosquitto_pub -l cannot send empty payloads: skipped", file=sys.stderr)
                continue
            plan.append((sc, client))

    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "messages": args.messages,
        "payload": args.payload,
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
    }
    runs: list[Run] = []
    work_dir = tempfile.mkdtemp(prefix="awsiot-bench-")
    bench = Bench(args, work_dir, helper_core, client_core)
    keep_logs = False
    interrupted = False
    try:
        bench.broker.start()
        print(f"mosquitto on {HOST}:{bench.broker.port} (logs in {work_dir}); "
              f"{len(plan)} (scenario, client) pairs × {args.repeat}, N={args.messages}",
              file=sys.stderr)
        # Repetitions interleave the clients of a scenario, so drift hits all alike.
        for sc in SCENARIOS:
            pairs = [client for s, client in plan if s is sc]
            for rep in range(1, args.repeat + 1):
                for client in pairs:
                    t = time.monotonic()
                    run = bench.run_one(sc, client, rep)
                    runs.append(run)
                    status = "ok" if not run.error else f"ERROR {run.error.splitlines()[0]}"
                    print(f"  {sc.name:<16} {client:<14} #{rep}: {_fmt_rate(run.msg_per_s):>7} "
                          f"msg/s {run.us_cpu_per_msg:7.2f} µs/msg  {run.count}/{run.messages}"
                          f"  ({time.monotonic() - t:.1f} s) {status}", file=sys.stderr)
                    if run.error:
                        keep_logs = True
                    if not bench.broker.alive():
                        print("  broker died; restarting it", file=sys.stderr)
                        bench.broker.stop()
                        bench.broker.start()
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

    summary = summarize(runs)
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
    print(f"wrote {os.path.join(args.out, f'results-{stamp}.json')} and .md", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
