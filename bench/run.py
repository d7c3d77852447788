#!/usr/bin/env python3
"""Benchmark: awsiot_rs against paho-mqtt, gmqtt, a raw asyncio client and the mosquitto C
clients, on a private mosquitto broker on 127.0.0.1. Throughput and CPU per message (QoS 0/1,
64 B and 16 KiB, plain and mutual TLS), round-trip latency, and K concurrent connections in
one process (time, RSS per connection, delivery).

    python bench/run.py [--quick] [--scenarios a,b] [--clients a,b] [--out bench/results]

What it does (see bench/README.md for the details of each scenario):

1. starts the test suite's mosquitto (``tests/support/mosquitto.py``) on a free ephemeral
   port of 127.0.0.1 (plus its mutual-TLS listener on a second one, with a throw-away PKI
   from ``tests/support/certs.py``) with the settings of :data:`BROKER_SETTINGS` and a raised
   file-descriptor limit, pinned to the first CPU core;
2. for every scenario, client and repetition, starts one worker process
   (``bench/workers.py``, or the C receiver ``native/mosq_recv.c`` compiled at start) pinned
   to the second core, plus the helper processes the scenario needs (pinned with the
   broker), and collects their JSON results;
3. runs the ``local`` rows (``local_core.py``: the embedded AWS IoT Core vs mosquitto, each
   a fresh broker per run: start to first CONNACK, QoS 1 through the broker and its CPU,
   1 000 mTLS connections, shadow / echo round trips);
4. takes the median of the repetitions and prints Markdown tables (throughput, latency,
   scale, the core vs mosquitto, targets), then writes ``results-<stamp>.json`` / ``.md`` and ``latest.json`` /
   ``latest.md`` to ``--out``.

Every child has a deadline and is killed past it; the broker is killed at the end, also on
errors and Ctrl-C. Nothing listens anywhere but 127.0.0.1, and no port is fixed.

The modules of ``bench/``: ``scenarios.py`` (what is measured: clients, rows, one
measurement's :class:`Run`), ``children.py`` (child processes, core pinning), this file (the
runners and the command line), ``report.py`` (medians, Markdown, JSON), ``workers.py`` (the
worker processes) and ``mqttraw.py`` (the ``raw`` client). ``tests/`` is put on ``sys.path``
below so that ``support.mosquitto`` and ``support.certs`` import as they do under pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.join(os.path.dirname(HERE), "tests")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import local_core  # noqa: E402
import report  # noqa: E402
from children import Child, ChildError, cores, pin_fn  # noqa: E402
from scenarios import CLIENTS, Run, Scenario, scenarios_for  # noqa: E402
from support.mosquitto import HOST, Mosquitto, MosquittoError, find_mosquitto  # noqa: E402

WORKERS_PY = os.path.join(HERE, "workers.py")
NATIVE_SRC = os.path.join(HERE, "native", "mosq_recv.c")
#: Target 5's reference: the summary of a full run (``--save-baseline``).
BASELINE = os.path.join(HERE, "baseline.json")

#: The broker's settings on top of the test suite's defaults: errors only in its log, a
#: queue deep enough for every message of a run, and TCP_NODELAY (without it mosquitto's
#: small writes, the PUBACKs, wait for the client's delayed ACK: ~20k QoS 1 msg/s at most).
BROKER_SETTINGS = {
    "log_type": "error",
    "max_queued_messages": "1000000",
    "set_tcp_nodelay": "true",
}


# -- the runners ----------------------------------------------------------------------------


class Bench:
    """Runs the scenarios against one broker."""

    def __init__(self, args: argparse.Namespace, work_dir: str, helper_core: int | None,
                 client_core: int | None, pki: Any = None) -> None:
        self.args = args
        self.work_dir = work_dir
        self.helper_core, self.client_core = helper_core, client_core
        self.pki = pki
        self.nofile = max(args.scale_max, args.fleet_count) + 1024
        self.broker = self._new_broker()
        self.children: list[Child] = []
        self.seq = 0
        self.mosquitto_pub = shutil.which("mosquitto_pub")
        self.mosq_recv: str | None = None  # set by build_native()
        self._lines_files: dict[tuple[int, int], str] = {}

    # the broker

    def _new_broker(self) -> Mosquitto:
        """The test suite's mosquitto (``tests/support/mosquitto.py``) with a plain listener,
        plus its mutual-TLS listener when there is a PKI, pinned to the helper core, with the
        file-descriptor limit the ``scale`` rows need and the settings of
        :data:`BROKER_SETTINGS`. Not started."""
        return Mosquitto(
            self.pki, os.path.join(self.work_dir, "mosquitto"),
            listeners=("port",) if self.pki is None else ("port", "mtls_port"),
            settings=BROKER_SETTINGS, preexec_fn=pin_fn(self.helper_core, self.nofile),
        )

    def start_broker(self) -> None:
        """Starts the broker; on failure tries twice more on other free ports (one could
        be taken between choosing and binding it)."""
        for attempt in range(3):
            try:
                self.broker.start()
                return
            except MosquittoError:
                if attempt == 2:
                    raise
                self.broker = self._new_broker()

    # per-scenario parameters

    def messages(self, sc: Scenario) -> int:
        if sc.kind == "latency":
            return int(self.args.round_trips)
        if sc.kind == "scale":
            return sc.count
        if sc.kind == "fleet":
            return sc.count * int(self.args.fleet_duration)
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
        return {"port": self.broker.mtls_port, "ca": self.pki.ca_cert,
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
                           nofile=self.nofile if sc.kind in ("scale", "fleet") else 0, topic=topic,
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
        self.children.clear()

    # runners: each fills a Run or raises ChildError

    def run_one(self, sc: Scenario, client: str, rep: int) -> Run:
        run = Run(sc.name, client, rep, self.messages(sc))
        topic = f"bench/{sc.name}/{client}/{rep}/{os.getpid()}"
        try:
            if not self.broker.running:
                raise ChildError("the broker is not running")
            {"pub_qos0": self._pub_qos0, "pub_qos1": self._pub_qos1, "recv": self._recv,
             "latency": self._latency, "scale": self._scale,
             "fleet": self._fleet}[sc.kind](sc, client, topic, run)
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
                                    preexec_fn=pin_fn(self.client_core),
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
        run.extra["broker_nofile"] = nofile_limit(self.broker.pid)
        if res.get("error"):
            run.error = res["error"]
            run.extra["connect_failed"] = True
        elif (res.get("delivered") or 0) < k:
            arrived = res.get("arrived")
            note = f"; the library received {arrived}" if arrived is not None else ""
            run.error = f"delivered {res.get('delivered')} of {k} messages to the application{note}"

    def _fleet(self, sc: Scenario, client: str, topic: str, run: Run) -> None:
        """The worker alone: opens K connections (each subscribed to its command topic), then
        each publishes one QoS 1 message per second (staggered) for ``--fleet-duration`` s;
        CPU over the publishing phase, PUBACK latency percentiles."""
        k, d = sc.count, int(self.args.fleet_duration)
        connect_timeout = max(self.args.timeout, 120.0)
        w = self.worker(client, sc, topic, count=k, duration=d, payload=64,
                        concurrency=self.args.scale_concurrency, timeout=connect_timeout)
        w.expect("ready", connect_timeout + 60)
        res = w.expect("result", d + 90)
        w.close(timeout=60)
        run.count = res.get("acked", 0)
        run.seconds = res.get("seconds", 0.0)
        run.cpu_s = res.get("cpu_s", 0.0)
        run.us_cpu_per_msg = run.cpu_s / max(res.get("sent") or 1, 1) * 1e6
        run.extra = {key: res.get(key) for key in (
            "sent", "acked", "failed", "cpu_s", "p50_ms", "p99_ms", "max_ms", "connect_s", "rss0_kib",
            "rss1_kib", "rss2_kib", "schedule_late_max_ms", "close_error", "affinity",
            "switches_per_msg")}
        if res.get("loop_cpu_s") is not None and res.get("sent"):
            run.extra["us_loop_per_msg"] = res["loop_cpu_s"] / res["sent"] * 1e6
            run.extra["us_other_per_msg"] = run.us_cpu_per_msg - run.extra["us_loop_per_msg"]
        if res.get("error"):
            run.error = res["error"]
        elif run.count < run.messages:
            run.error = f"{run.count} of {run.messages} publishes acknowledged"


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
    p.add_argument("--fleet-count", type=int, default=None,
                   help="fleet: connections (default 10000, 1000 with --quick)")
    p.add_argument("--fleet-duration", type=int, default=None,
                   help="fleet: seconds of publishing (default 60, 15 with --quick)")
    p.add_argument("--scale-concurrency", type=int, default=100,
                   help="scale: connection attempts in progress at once (mosquitto's listen "
                        "backlog is 100)")
    p.add_argument("--scale-settle", type=float, default=2.0,
                   help="scale: after the last publish, wait this long without a new "
                        "delivery before counting")
    p.add_argument("--repeat", type=int, default=3, help="runs per (scenario, client)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--baseline", default=BASELINE,
                   help="a former run's JSON to check target 5 (no regression) against; "
                        "'' for none (default: bench/baseline.json, a full run on the project's "
                        "2-core machine)")
    p.add_argument("--tolerance", type=float, default=0.15,
                   help="target 5: how much worse a ratio to raw may get (default 0.15 = 15 %%)")
    p.add_argument("--save-baseline", action="store_true",
                   help="write this run's summary to --baseline, for later runs to compare with")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated subset, e.g. pub_qos0,latency; groups: "
                        "payload_16k, scale, local (the embedded core vs mosquitto)")
    p.add_argument("--clients", default=None, help="comma-separated subset of " +
                   ",".join(CLIENTS) + " (the local rows: of " +
                   ",".join(local_core.BROKERS) + ")")
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
    p.add_argument("--local-connections", type=int, default=1000,
                   help="local_connections: concurrent mTLS connections per broker")
    p.add_argument("--local-starts", type=int, default=None,
                   help="local_start: cold starts per run (fresh processes; default 5, 3 with "
                        "--quick)")
    p.add_argument("--local-warm", type=int, default=None,
                   help="local_start: warm in-process restarts of the core per run (default 20, "
                        "10 with --quick)")
    a = p.parse_args(argv)
    if a.local_starts is None:
        a.local_starts = 3 if a.quick else 5
    if a.local_warm is None:
        a.local_warm = 10 if a.quick else 20
    if a.messages is None:
        a.messages = 20_000 if a.quick else 100_000
    if a.big_messages is None:
        a.big_messages = 2_000 if a.quick else 5_000
    if a.scale_max is None:
        a.scale_max = 1_000 if a.quick else 10_000
    if a.fleet_count is None:
        a.fleet_count = 1_000 if a.quick else 10_000
    if a.fleet_duration is None:
        a.fleet_duration = 15 if a.quick else 60
    if min(a.messages, a.big_messages, a.round_trips, a.repeat, a.scale_max,
           a.scale_concurrency, a.local_connections, a.local_starts) < 1 or a.payload < 0 \
            or a.warmup < 0 or a.local_warm < 0:
        p.error("counts must be >= 1, --payload and --warmup >= 0")
    return a


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
    message) when it cannot be made (it needs ``cryptography``)."""
    try:
        from support.certs import make_pki as _make_pki

        return _make_pki(os.path.join(work_dir, "pki"))
    except Exception as e:  # noqa: BLE001
        print(f"cannot make the mTLS PKI ({type(e).__name__}: {e}): mTLS rows skipped",
              file=sys.stderr)
        return None


def nofile_limit(pid: int | None) -> int | None:
    """The soft file-descriptor limit of process ``pid`` (from ``/proc/<pid>/limits``)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        mosquitto = find_mosquitto()
    except MosquittoError as e:
        print(e, file=sys.stderr)
        return 2
    scenarios = tuple(replace(sc, count=args.fleet_count) if sc.kind == "fleet" else sc
                      for sc in scenarios_for(args.scale_max))
    local_rows = local_core.scenarios(args.local_connections)
    only_sc = set(args.scenarios.split(",")) if args.scenarios else None
    only_cl = set(args.clients.split(",")) if args.clients else None
    known = {s.name for s in scenarios + local_rows} | \
        {s.group for s in scenarios + local_rows if s.group}
    unknown = (only_sc or set()) - known
    unknown |= (only_cl or set()) - set(CLIENTS) - set(local_core.BROKERS)
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
    if any("libmosquitto" in sc.clients for sc in scenarios
           if not only_sc or sc.name in only_sc or sc.group in only_sc) and \
            (not only_cl or "libmosquitto" in only_cl):
        mosq_recv, why = build_native(work_dir)
        if mosq_recv is None:
            notes.append(f"libmosquitto reference skipped: {why}")
    for sc in scenarios:
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
    # The local rows (the embedded core vs mosquitto): their "clients" are the two brokers;
    # --clients names them like any client (a list without either skips the rows).
    local_plan = [(sc, b) for sc in local_rows
                  if (not only_sc or sc.name in only_sc or sc.group in only_sc)
                  for b in sc.clients if not only_cl or b in only_cl]
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
        "fleet_count": args.fleet_count,
        "fleet_duration": args.fleet_duration,
        "repeat": args.repeat,
        "window": args.window,
        "inflight": args.inflight,
        "recv_rate": args.recv_rate,
        "timeout": args.timeout,
        "local_connections": args.local_connections,
        "local_starts": args.local_starts,
        "local_warm": args.local_warm,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": report.cpu_model(),
        "cpu_count": os.cpu_count(),
        "helper_core": helper_core,
        "client_core": client_core,
        "versions": report.versions(mosquitto),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "loadavg_start": os.getloadavg(),
    }
    runs: list[Run] = []
    skipped: dict[tuple[str, str], str] = {}
    bench = Bench(args, work_dir, helper_core, client_core, pki)
    bench.mosq_recv = mosq_recv
    local = local_core.LocalBench(args, work_dir, helper_core, client_core, BROKER_SETTINGS)
    keep_logs = False
    interrupted = False
    t_start = time.monotonic()
    try:
        if plan:
            bench.start_broker()
            meta["broker_nofile"] = nofile_limit(bench.broker.pid)
            print(f"mosquitto on {HOST}:{bench.broker.port}"
                  + (f" (mTLS on {bench.broker.mtls_port})" if pki is not None else "")
                  + f", logs in {work_dir}; {len(plan)} (scenario, client) pairs × "
                  f"{args.repeat}", file=sys.stderr)
        # Repetitions interleave the clients of a scenario, so drift hits all alike.
        scale_failed: dict[str, int] = {}  # client -> smallest K whose connects all failed
        for sc in scenarios:
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
                    print(f"  {sc.name:<16} {client:<14} #{rep}: {report.fmt_rate(run.msg_per_s):>7} "
                          f"{unit} {run.us_cpu_per_msg:7.2f} µs/{unit.split('/')[0]}"
                          f"{extra}  {run.count}/{run.messages}"
                          f"  ({time.monotonic() - t:.1f} s) {status}", file=sys.stderr)
                    if run.error:
                        keep_logs = True
                    if not bench.broker.running:
                        print("  broker died; restarting it", file=sys.stderr)
                        bench.broker.stop()
                        bench.broker.start()
            if sc.kind == "scale":
                for client in pairs:
                    mine = [r for r in runs if r.scenario == sc.name and r.client == client]
                    if mine and all(r.extra.get("connect_failed") for r in mine):
                        scale_failed.setdefault(client, sc.count)
        if plan:
            bench.broker.stop()  # the local rows run their own brokers
        if local_plan:
            print(f"local rows: {len(local_plan)} (scenario, broker) pairs × {args.repeat}, "
                  f"a fresh broker per run; logs in {work_dir}", file=sys.stderr)
        for sc in local_rows:
            brokers = [b for s, b in local_plan if s is sc]
            for rep in range(1, args.repeat + 1):
                for b in brokers:
                    t = time.monotonic()
                    run = local.run_one(sc, b, rep)
                    runs.append(run)
                    status = "ok" if not run.error else f"ERROR {run.error.splitlines()[0]}"
                    print(f"  {sc.name:<17} {b:<10} #{rep}: {local_core.progress(sc, run)}"
                          f"  ({time.monotonic() - t:.1f} s) {status}", file=sys.stderr)
                    if run.error:
                        keep_logs = True
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        bench.cleanup()
        local.cleanup()
        bench.broker.stop()
        if not keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"logs kept in {work_dir}", file=sys.stderr)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()

    scenarios = scenarios + tuple(sc for sc in local_rows if any(s is sc for s, _ in local_plan))
    summary = report.summarize(runs, scenarios)
    for (name, client), why in skipped.items():
        summary.setdefault(name, {})[client] = {"reps": 0, "ok_reps": 0, "errors": [],
                                                "min_count": 0, "messages": 0, "skipped": why}
    baseline = None
    if args.baseline and os.path.exists(args.baseline) and not args.save_baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    md = report.markdown(summary, meta, scenarios, baseline, args.tolerance)
    print(md)
    path = report.write(args.out, meta, summary, runs, md)
    if args.save_baseline and args.baseline:
        with open(args.baseline, "w") as f:
            json.dump({"meta": meta, "summary": summary}, f, indent=1)
        print(f"baseline saved to {args.baseline}", file=sys.stderr)
    print(f"wrote {path} and .md ({meta['elapsed_s']:.0f} s)", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
