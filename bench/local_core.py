"""Benchmark of the embedded AWS IoT Core (``awsiot_rs.local``, the Rust core behind
``_native.LocalCoreRef``) next to Mosquitto on the same scenario: the ``local`` scenario group
of ``bench/run.py`` (``--scenarios local``; included in the full run and in ``--quick``).

Rows (each run for the two brokers ``local_core`` and ``mosquitto``, a fresh broker process
per run, both over mutual TLS with EC P-256 certificates on 127.0.0.1):

* ``local_start``: ``LocalCoreRef.start`` → the first CONNACK of an mTLS client, in a fresh
  child process (cold) and again in the same process (warm); Mosquitto: process spawn → the
  first CONNACK.
* ``local_qos1``: N QoS 1 messages publisher → broker → subscriber (QoS 1 subscription,
  every delivery acknowledged); end-to-end msg/s and the broker process's CPU.
* ``local_connections``: K concurrent mTLS connections from one process; time to open all,
  broker RSS and CPU per connection, and a PINGREQ on every one at the end (all alive).
* ``local_shadow_rtt``: one shadow update (``$aws/things/<t>/shadow/update``) → its
  ``/update/accepted`` at a time; Mosquitto has no shadow, so its row is a request → echo →
  response round trip through a responder client (two broker hops and a Python hop).
* ``local_echo_rtt``: that same request/echo round trip through both brokers (like for like).

This file is both the orchestrator's side (:class:`LocalBench`, imported by ``run.py``; the
report section :func:`markdown_lines` and :func:`targets`, used by ``report.py``) and the
child processes' side (``python local_core.py ROLE JSON``, roles in :data:`ROLES`), which
speak the JSON-lines protocol of ``workers.py`` on stdout.

Broker CPU is read from outside: the sum over the broker process's threads of
``/proc/<pid>/task/<tid>/schedstat`` (ns on CPU, user + system), before and after the measured
section; RSS is ``VmRSS`` of ``/proc/<pid>/status``. The core runs in its own Python child
process (``serve``), pinned with Mosquitto's core, so its tokio runtime has one worker thread.
"""

from __future__ import annotations

import time

T_SCRIPT = time.monotonic()  # first thing of a child: its interpreter is up

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from typing import Any  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.join(os.path.dirname(HERE), "tests")
for _p in (HERE, TESTS_DIR):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from children import Child, ChildError, pin_fn, raise_nofile  # noqa: E402
from scenarios import Run, Scenario  # noqa: E402

HOST = "127.0.0.1"  # loopback only, always
GROUP = "local"
BROKERS = ("local_core", "mosquitto")
THING = "bench-thing"  # the core's thing (its certificate serves every connection)
#: AWS allows 7 slashes in a topic: these stay well below.
QOS1_TOPIC = "bench/local/qos1"
ECHO_REQ = "bench/echo/{rep}/req"
ECHO_RESP = "bench/echo/{rep}/resp"
SHADOW_REQ = "$aws/things/{thing}/shadow/update"
SHADOW_ACCEPTED = "$aws/things/{thing}/shadow/update/accepted"
SHADOW_REJECTED = "$aws/things/{thing}/shadow/update/rejected"


def scenarios(connections: int = 1000) -> tuple[Scenario, ...]:
    """The rows of the ``local`` group (``clients`` are the two brokers)."""
    return (
        Scenario("local_start", "local_start", BROKERS,
                 "start → first CONNACK of an mTLS client: the core's `LocalCoreRef.start` in "
                 "a fresh process (and warm, in-process), Mosquitto's process spawn",
                 group=GROUP, tls=False),
        Scenario("local_qos1", "local_qos1", BROKERS,
                 "N QoS 1 messages publisher → broker → QoS 1 subscriber over mTLS (raw "
                 "clients, one process on the other core); msg/s and the broker's CPU",
                 group=GROUP),
        Scenario("local_connections", "local_connections", BROKERS,
                 f"{connections:,} concurrent mTLS connections from one process (raw asyncio, "
                 "100 opening at once); time, broker RSS and CPU per connection",
                 count=connections, group=GROUP),
        Scenario("local_shadow_rtt", "local_rtt", BROKERS,
                 "core: shadow update → /update/accepted, one at a time; Mosquitto (no "
                 "shadow): request → responder client → response through the broker",
                 group=GROUP),
        Scenario("local_echo_rtt", "local_rtt", BROKERS,
                 "request → responder client → response through each broker (the same path "
                 "for both)", group=GROUP),
    )


def is_local(sc: Scenario) -> bool:
    return sc.group == GROUP


# -- /proc --------------------------------------------------------------------------------------


def proc_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) of process ``pid``: the sum of the threads'
    ``schedstat`` run times (ns); falls back to ``stat``'s clock ticks."""
    if pid is None:
        return 0.0
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total / 1e9
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def proc_rss_kib(pid: int | None) -> int:
    """``VmRSS`` of process ``pid`` in KiB (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_threads(pid: int | None) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


# -- the EC PKI of Mosquitto --------------------------------------------------------------------


def make_ec_pki(directory: str) -> types.SimpleNamespace:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, all EC
    P-256 / SHA-256 like the core's, made with the test suite's ``support.certs`` helpers.
    Has the attributes ``support.mosquitto.Mosquitto`` reads for its mTLS listener."""
    import pathlib

    from cryptography.x509.oid import ExtendedKeyUsageOID
    from support import certs

    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key = certs.ec_key()
    ca = certs.make_ca("awsiot_rs bench EC CA", ca_key)
    server_key = certs.ec_key()
    server = certs.make_leaf(subject="localhost", public_key=server_key.public_key(),
                             ca_cert=ca, ca_key=ca_key, eku=ExtendedKeyUsageOID.SERVER_AUTH,
                             dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    client_key = certs.ec_key()
    client = certs.make_leaf(subject="bench-device", public_key=client_key.public_key(),
                             ca_cert=ca, ca_key=ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)

    def write(name: str, data: bytes, private: bool = False) -> pathlib.Path:
        path = d / name
        path.write_bytes(data)
        if private:
            os.chmod(path, 0o600)
        return path

    server_cert = write("server.crt", certs.cert_pem(server))
    server_key_path = write("server.key", certs.key_pem(server_key), True)
    # The listeners Mosquitto's config names but the benchmark never opens get the good
    # server certificate (``config_text`` reads every attribute).
    unused = {f"{n}_{kind}": path for n in ("wrong_host", "expired_server", "fake_server")
              for kind, path in (("cert", server_cert), ("key", server_key_path))}
    return types.SimpleNamespace(
        directory=d,
        ca_cert=write("ca.crt", certs.cert_pem(ca)),
        server_cert=server_cert,
        server_key=server_key_path,
        client_cert=write("client.crt", certs.cert_pem(client)),
        client_key=write("client.key", certs.key_pem(client_key), True),
        **unused,
    )


# -- the orchestrator's side --------------------------------------------------------------------


class Broker:
    """A running broker of one measurement: the core's ``serve`` child or a Mosquitto."""

    def __init__(self, name: str, pid: int, port: int, ca: str, cert: str, key: str,
                 stop: Any, child: Child | None = None) -> None:
        self.name, self.pid, self.port = name, pid, port
        self.ca, self.cert, self.key = ca, cert, key
        self._stop = stop
        self.child = child

    def tls(self) -> dict[str, Any]:
        return {"port": self.port, "ca": self.ca, "cert": self.cert, "key": self.key}

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        try:  # a zombie is not alive
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self) -> dict[str, Any]:
        return self._stop() or {}


class LocalBench:
    """Runs the ``local`` rows: a fresh broker per (row, broker, repetition), children pinned
    like the rest of the benchmark (brokers and helpers on ``helper_core``, the measuring
    clients on ``client_core``)."""

    def __init__(self, args: Any, work_dir: str, helper_core: int | None,
                 client_core: int | None, broker_settings: dict[str, str]) -> None:
        self.args = args
        self.work_dir = work_dir
        self.helper_core, self.client_core = helper_core, client_core
        self.settings = broker_settings
        self.children: list[Child] = []
        self.seq = 0
        self._pki: types.SimpleNamespace | None = None
        self.nofile = int(args.local_connections) + 1024

    # parameters

    def messages(self, sc: Scenario) -> int:
        if sc.name == "local_start":
            return int(self.args.local_starts)
        if sc.name == "local_qos1":
            return int(self.args.messages)
        if sc.name == "local_connections":
            return sc.count
        return int(self.args.round_trips)

    @property
    def pki(self) -> types.SimpleNamespace:
        if self._pki is None:
            self._pki = make_ec_pki(os.path.join(self.work_dir, "local-pki"))
        return self._pki

    # children

    def spawn(self, role: str, core: int | None, nofile: int = 0, **opts: Any) -> Child:
        self.seq += 1
        argv = [sys.executable, os.path.join(HERE, "local_core.py"), role, json.dumps(opts)]
        child = Child(f"{self.seq:03d}-local-{role}", argv, self.work_dir, core, nofile)
        self.children.append(child)
        return child

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
        self.children.clear()

    # brokers

    def start_core(self) -> Broker:
        state = os.path.join(self.work_dir, f"core-{self.seq + 1}")
        child = self.spawn("serve", self.helper_core, nofile=self.nofile, state_dir=state,
                           things=[THING])
        ready = child.expect("ready", 180)  # may wait for the extension to be rebuilt
        cert, key = ready["things"][THING]

        def stop() -> dict[str, Any]:
            child.send("stop")
            try:
                res = child.expect("result", 20)
            except ChildError:
                res = {}
            child.close()
            return res

        return Broker("local_core", child.proc.pid, ready["ports"]["mqtt"], ready["ca"], cert,
                      key, stop, child)

    def mosquitto(self, directory: str) -> Any:
        from support.mosquitto import Mosquitto

        return Mosquitto(self.pki, directory, listeners=("port", "mtls_port"),
                         settings=self.settings,
                         preexec_fn=pin_fn(self.helper_core, self.nofile))

    def start_mosquitto(self) -> Broker:
        self.seq += 1
        m = self.mosquitto(os.path.join(self.work_dir, f"mosquitto-{self.seq}"))
        m.start()
        pki = self.pki
        return Broker("mosquitto", m.pid, m.mtls_port, str(pki.ca_cert), str(pki.client_cert),
                      str(pki.client_key), lambda: {"exit": m.stop()})

    def start_broker(self, name: str) -> Broker:
        return self.start_core() if name == "local_core" else self.start_mosquitto()

    # runs

    def run_one(self, sc: Scenario, broker: str, rep: int) -> Run:
        run = Run(sc.name, broker, rep, self.messages(sc))
        try:
            {"local_start": self._start, "local_qos1": self._qos1,
             "local_connections": self._connections,
             "local_rtt": self._rtt}[sc.kind](sc, broker, rep, run)
        except ChildError as e:
            run.error = str(e)
        except Exception as e:  # noqa: BLE001 - a broker that does not start, ...
            run.error = f"{type(e).__name__}: {e}"
        finally:
            self.cleanup()
        if run.seconds > 0 and not run.msg_per_s:
            run.msg_per_s = run.count / run.seconds
        return run

    def _start(self, sc: Scenario, broker: str, rep: int, run: Run) -> None:
        """Cold starts: ``--local-starts`` fresh processes (core) or broker spawns
        (Mosquitto); the core's child then restarts it ``--local-warm`` times in-process."""
        k = run.messages
        cold: list[float] = []
        spawn: list[float] = []
        extra: dict[str, list[float]] = {}
        if broker == "local_core":
            for i in range(k):
                t_spawn = time.monotonic()
                child = self.spawn("core_start", self.helper_core, t_spawn=t_spawn,
                                   client_core=self.client_core,
                                   warm=self.args.local_warm if i == 0 else 0,
                                   state_dir=os.path.join(self.work_dir, f"start-{rep}-{i}"))
                res = child.expect("result", 180)
                child.close()
                first = res["samples"][0]
                cold.append(first["start_to_connack_ms"])
                spawn.append((first["t_connack"] - t_spawn) * 1e3)
                for key in ("start_ms", "register_ms", "client_prep_ms", "handshake_ms",
                            "connack_ms"):
                    extra.setdefault(f"cold_{key}", []).append(first[key])
                extra.setdefault("interpreter_ms", []).append((res["t_script"] - t_spawn) * 1e3)
                extra.setdefault("import_ms", []).append(res["import_ms"])
                warm = [s["start_to_connack_ms"] for s in res["samples"][1:]]
                if warm:
                    extra["warm_p50_ms"] = [statistics.median(warm)]
                    extra["warm_max_ms"] = [max(warm)]
                    extra["warm_start_ms"] = [statistics.median(
                        s["start_ms"] for s in res["samples"][1:])]
        else:
            from support.mosquitto import find_mosquitto

            configs = []
            for i in range(k):
                self.seq += 1
                m = self.mosquitto(os.path.join(self.work_dir, f"mosq-start-{self.seq}"))
                m.config_path.write_text(m.config_text())
                configs.append({"conf": str(m.config_path), "port": m.mtls_port})
            pki = self.pki
            child = self.spawn("mosq_start", self.client_core, binary=find_mosquitto(),
                               configs=configs, helper_core=self.helper_core,
                               ca=str(pki.ca_cert), cert=str(pki.client_cert),
                               key=str(pki.client_key))
            res = child.expect("result", 60 + 10 * k)
            child.close()
            for s in res["samples"]:
                cold.append(s["start_to_connack_ms"])
                spawn.append(s["start_to_connack_ms"])
                extra.setdefault("refused_polls", []).append(s["refused"])
                extra.setdefault("cold_handshake_ms", []).append(s["handshake_ms"])
        run.count = len(cold)
        run.seconds = statistics.median(cold) / 1e3 if cold else 0.0
        run.msg_per_s = 1.0  # not a rate
        run.extra = {"start_to_connack_ms": statistics.median(cold) if cold else None,
                     "start_to_connack_min_ms": min(cold) if cold else None,
                     "start_to_connack_max_ms": max(cold) if cold else None,
                     "spawn_to_connack_ms": statistics.median(spawn) if spawn else None,
                     **{key: statistics.median(v) for key, v in extra.items() if v}}
        if len(cold) < k:
            run.error = f"{len(cold)} of {k} starts reached CONNACK"

    def _qos1(self, sc: Scenario, broker: str, rep: int, run: Run) -> None:
        b = self.start_broker(broker)
        n = run.messages
        w = self.spawn("qos1", self.client_core, topic=f"{QOS1_TOPIC}/{rep}", messages=n,
                       payload=self.args.payload, window=self.args.window,
                       timeout=self.args.timeout, **b.tls())
        w.expect("ready", 30)
        rss0, cpu0 = proc_rss_kib(b.pid), proc_cpu_s(b.pid)
        w.send("go")
        res = w.expect("result", self.args.timeout + 30)
        cpu1, rss1 = proc_cpu_s(b.pid), proc_rss_kib(b.pid)
        w.close()
        threads = proc_threads(b.pid)
        stopped = b.stop()
        run.count = res.get("received", 0)
        run.seconds = res.get("seconds", 0.0)
        run.cpu_s = cpu1 - cpu0
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {
            "broker_cores": run.cpu_s / run.seconds if run.seconds else None,
            "broker_capacity_msg_per_s": 1e6 / run.us_cpu_per_msg if run.us_cpu_per_msg else None,
            "client_us_per_msg": res.get("cpu_s", 0.0) / max(run.count, 1) * 1e6,
            "pubacks": res.get("pubacks"),
            "broker_rss0_kib": rss0, "broker_rss1_kib": rss1, "broker_threads": threads,
            "dropped": (stopped.get("counters") or [None, None])[1],
        }
        if res.get("error") or run.count < n or (res.get("pubacks") or 0) < n:
            run.error = res.get("error") or (f"received {run.count} of {n}, "
                                             f"{res.get('pubacks')} PUBACKs")

    def _connections(self, sc: Scenario, broker: str, rep: int, run: Run) -> None:
        b = self.start_broker(broker)
        k = sc.count
        timeout = max(self.args.timeout, 120.0)
        w = self.spawn("connections", self.client_core, nofile=self.nofile, count=k,
                       concurrency=self.args.scale_concurrency, timeout=timeout,
                       prefix=f"bench-conn-{rep}", **b.tls())
        w.expect("loaded", 30)
        time.sleep(0.2)  # let the broker settle after its start
        rss0, cpu0 = proc_rss_kib(b.pid), proc_cpu_s(b.pid)
        w.send("go")
        ready = w.expect("ready", timeout + 30)
        cpu1, rss1 = proc_cpu_s(b.pid), proc_rss_kib(b.pid)
        threads = proc_threads(b.pid)
        w.send("ping")
        res = w.expect("result", 60)
        alive_broker = b.alive()
        w.close(timeout=30)
        b.stop()
        opened = ready.get("opened", 0)
        run.count = opened
        run.seconds = ready.get("connect_s", 0.0)
        run.cpu_s = cpu1 - cpu0
        run.us_cpu_per_msg = run.cpu_s / max(opened, 1) * 1e6
        run.extra = {
            "kib_per_conn": (rss1 - rss0) / opened if opened else None,
            "broker_rss0_kib": rss0, "broker_rss1_kib": rss1, "broker_threads": threads,
            "client_us_per_conn": ready.get("cpu_s", 0.0) / max(opened, 1) * 1e6,
            "connect_p50_ms": ready.get("connect_p50_ms"),
            "connect_p99_ms": ready.get("connect_p99_ms"),
            "alive": res.get("alive"),
            "failures": ready.get("failures"),
        }
        if opened < k or (res.get("alive") or 0) < k or not alive_broker:
            run.error = (f"opened {opened} of {k}, {res.get('alive')} answered PINGREQ"
                         + ("" if alive_broker else "; the broker died")
                         + (f"; first failure: {ready['first_failure']}"
                            if ready.get("first_failure") else ""))

    def _rtt(self, sc: Scenario, broker: str, rep: int, run: Run) -> None:
        b = self.start_broker(broker)
        shadow = sc.name == "local_shadow_rtt" and broker == "local_core"
        responder = None
        if shadow:
            req = SHADOW_REQ.format(thing=THING)
            resp = [SHADOW_ACCEPTED.format(thing=THING), SHADOW_REJECTED.format(thing=THING)]
        else:
            req, resp = ECHO_REQ.format(rep=rep), [ECHO_RESP.format(rep=rep)]
            responder = self.spawn("responder", self.helper_core, req=req, resp=resp[0],
                                   **b.tls())
            responder.expect("ready", 30)
        w = self.spawn("rtt", self.client_core, req=req, resp=resp, shadow=shadow,
                       round_trips=run.messages, warmup=self.args.warmup,
                       timeout=self.args.timeout, **b.tls())
        w.expect("ready", 30)
        cpu0 = proc_cpu_s(b.pid)
        rcpu0 = proc_cpu_s(responder.proc.pid) if responder else 0.0
        w.send("go")
        res = w.expect("result", self.args.timeout + 30)
        cpu1 = proc_cpu_s(b.pid)
        rcpu1 = proc_cpu_s(responder.proc.pid) if responder else 0.0
        w.close()
        if responder is not None:
            responder.close(timeout=5)
        b.stop()
        run.count = res.get("round_trips", 0)
        run.seconds = res.get("seconds", 0.0)
        run.cpu_s = cpu1 - cpu0
        run.us_cpu_per_msg = run.cpu_s / max(run.count, 1) * 1e6
        run.extra = {k: res.get(k) for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us",
                                             "rejected")}
        run.extra["client_us_per_rt"] = res.get("cpu_s", 0.0) / max(run.count, 1) * 1e6
        run.extra["path"] = "shadow" if shadow else "echo"
        if responder is not None:
            run.extra["responder_us_per_rt"] = (rcpu1 - rcpu0) / max(run.count, 1) * 1e6
        if res.get("error") or run.count < run.messages:
            run.error = res.get("error") or f"{run.count} of {run.messages} round trips"


def progress(sc: Scenario, run: Run) -> str:
    """One progress line's figures for ``run.py``'s stderr."""
    e = run.extra
    if sc.kind == "local_start":
        return (f"start→CONNACK {_f(e.get('start_to_connack_ms'), 2)} ms cold, warm p50 "
                f"{_f(e.get('warm_p50_ms'), 2)} ms, spawn→CONNACK "
                f"{_f(e.get('spawn_to_connack_ms'), 1)} ms  {run.count}/{run.messages}")
    if sc.kind == "local_qos1":
        return (f"{_f(run.msg_per_s, 0)} msg/s, broker {_f(run.us_cpu_per_msg, 2)} µs/msg "
                f"({_f(e.get('broker_cores'), 2)} cores)  {run.count}/{run.messages}")
    if sc.kind == "local_connections":
        return (f"{run.seconds:.2f} s, {_f(e.get('kib_per_conn'), 1)} KiB/conn, broker "
                f"{_f(run.us_cpu_per_msg, 0)} µs/conn, alive {e.get('alive')}/{run.messages}")
    return (f"p50 {_f(e.get('p50_us'), 0)} µs p99 {_f(e.get('p99_us'), 0)} µs, broker "
            f"{_f(run.us_cpu_per_msg, 1)} µs/RT ({e.get('path')})  {run.count}/{run.messages}")


# -- report -------------------------------------------------------------------------------------


def _get(summary: dict[str, Any], sc: str, broker: str, key: str) -> Any:
    return summary.get(sc, {}).get(broker, {}).get(key)


def _f(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 1000 and digits <= 1:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


#: (row, label, summary key, digits, lower is better)
_METRICS: tuple[tuple[str, str, str, int, bool], ...] = (
    ("local_start", "start → first mTLS CONNACK, cold, ms (median of starts)",
     "start_to_connack_ms", 2, True),
    ("local_start", "… of which the start call (`LocalCoreRef.start`), ms", "cold_start_ms", 2,
     True),
    ("local_start", "… of which `register_thing` (certificate for the client), ms",
     "cold_register_ms", 2, True),
    ("local_start", "… of which writing the PEMs + the client's `SSLContext`, ms",
     "cold_client_prep_ms", 2, True),
    ("local_start", "… of which the client's TCP + TLS handshake + CONNECT/CONNACK, ms",
     "cold_handshake_ms", 2, True),
    ("local_start", "start → first CONNACK, warm (in-process restart), ms p50", "warm_p50_ms",
     2, True),
    ("local_start", "process spawn → first CONNACK, ms (core: interpreter + `import awsiot_rs` "
     "included)", "spawn_to_connack_ms", 1, True),
    ("local_start", "… core: Python interpreter start (spawn → script), ms", "interpreter_ms", 1,
     True),
    ("local_start", "… core: `import awsiot_rs._native`, ms", "import_ms", 1, True),
    ("local_qos1", "QoS 1 end to end, msg/s", "msg_per_s", 0, False),
    ("local_qos1", "broker CPU, cores (CPU s / wall s)", "broker_cores", 2, True),
    ("local_qos1", "broker CPU per message, µs", "us_cpu_per_msg", 2, True),
    ("local_qos1", "broker CPU-bound ceiling at 1 core (10⁶ / µs per msg, extrapolated), msg/s",
     "broker_capacity_msg_per_s", 0, False),
    ("local_qos1", "clients' CPU per message (pub + sub, one process), µs", "client_us_per_msg",
     2, True),
    ("local_qos1", "deliveries the broker dropped", "dropped", 0, True),
    ("local_connections", "open all (TCP + TLS + CONNECT/CONNACK), s", "seconds", 2, True),
    ("local_connections", "connections/s", "msg_per_s", 0, False),
    ("local_connections", "one connection's connect time p50 (100 at once), ms",
     "connect_p50_ms", 0, True),
    ("local_connections", "one connection's connect time p99, ms", "connect_p99_ms", 0, True),
    ("local_connections", "broker CPU per connection, µs", "us_cpu_per_msg", 0, True),
    ("local_connections", "client CPU per connection (Python ssl), µs", "client_us_per_conn", 0,
     True),
    ("local_connections", "broker RSS per connection, KiB", "kib_per_conn", 1, True),
    ("local_connections", "broker RSS with all open, MiB", "broker_rss1_mib", 1, True),
    ("local_connections", "connections answering PINGREQ at the end (min of runs)",
     "min_alive", 0, False),
    ("local_shadow_rtt", "round trip p50, µs", "p50_us", 0, True),
    ("local_shadow_rtt", "round trip p90, µs", "p90_us", 0, True),
    ("local_shadow_rtt", "round trip p99, µs", "p99_us", 0, True),
    ("local_shadow_rtt", "broker CPU per round trip, µs", "us_cpu_per_msg", 1, True),
    ("local_shadow_rtt", "responder client CPU per round trip (Mosquitto only), µs",
     "responder_us_per_rt", 1, True),
    ("local_echo_rtt", "round trip p50, µs", "p50_us", 0, True),
    ("local_echo_rtt", "round trip p90, µs", "p90_us", 0, True),
    ("local_echo_rtt", "round trip p99, µs", "p99_us", 0, True),
    ("local_echo_rtt", "broker CPU per round trip, µs", "us_cpu_per_msg", 1, True),
)


def _derived(summary: dict[str, Any], runs: list[Run] | None = None) -> None:
    """Adds the figures the table shows that are not plain medians."""
    for broker, s in summary.get("local_connections", {}).items():
        if s.get("broker_rss1_kib"):
            s["broker_rss1_mib"] = s["broker_rss1_kib"] / 1024
    if runs is not None:
        for broker in BROKERS:
            alive = [r.extra.get("alive") or 0 for r in runs
                     if r.scenario == "local_connections" and r.client == broker]
            if alive and broker in summary.get("local_connections", {}):
                summary["local_connections"][broker]["min_alive"] = min(alive)


def targets(summary: dict[str, Any], connections: int = 1000) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the core's targets (docs/local-core.md, quality bar)."""
    out: list[tuple[str, str, bool | None]] = []

    def add(label: str, value: Any, fmt: str, ok: Any) -> None:
        out.append((label, "not measured" if value is None else fmt, None if value is None else ok))

    cold = _get(summary, "local_start", "local_core", "start_to_connack_ms")
    add("core start → first mTLS CONNACK ≤ 50 ms (cold, fresh process)", cold,
        f"{_f(cold, 2)} ms", cold is not None and cold <= 50)
    warm = _get(summary, "local_start", "local_core", "warm_p50_ms")
    add("core start → first mTLS CONNACK ≤ 50 ms (warm, in-process)", warm,
        f"{_f(warm, 2)} ms", warm is not None and warm <= 50)
    rate = _get(summary, "local_qos1", "local_core", "msg_per_s")
    cores = _get(summary, "local_qos1", "local_core", "broker_cores")
    us = _get(summary, "local_qos1", "local_core", "us_cpu_per_msg")
    add("≥ 20 000 QoS 1 msg/s through the core with ≤ 1 core of broker CPU", rate,
        f"{_f(rate, 0)} msg/s, the core using {_f(cores, 2)} cores ({_f(us, 2)} µs/msg)",
        rate is not None and rate >= 20_000 and (cores or 0) <= 1.0)
    alive = _get(summary, "local_connections", "local_core", "min_alive")
    k = connections
    add(f"{k:,} concurrent mTLS connections", alive,
        f"{_f(alive, 0)} of {k:,} open and answering (min of runs)",
        alive is not None and alive >= k)
    p50 = _get(summary, "local_shadow_rtt", "local_core", "p50_us")
    add("shadow update → accepted round trip p50 ≤ 1 ms", p50, f"{_f(p50, 0)} µs",
        p50 is not None and p50 <= 1000)
    return out


def markdown_lines(summary: dict[str, Any], meta: dict[str, Any],
                   scs: tuple[Scenario, ...], runs: list[Run] | None = None) -> list[str]:
    """The report's section for the ``local`` rows (empty when none ran)."""
    rows = [sc for sc in scs if is_local(sc) and sc.name in summary]
    if not rows:
        return []
    _derived(summary, runs)
    lines = ["### Embedded AWS IoT Core (`awsiot_rs.local`) vs Mosquitto", "",
             "Each broker a fresh process per run, pinned to core "
             f"{meta.get('helper_core')}; clients (raw Python, mTLS, EC P-256 certificates for "
             f"both brokers) on core {meta.get('client_core')}. Broker CPU and RSS read from "
             "`/proc/<pid>` around the measured section. Ratio = core / Mosquitto. "
             "`local_shadow_rtt`: the core's shadow service vs, on Mosquitto (no shadow), a "
             "request → responder client → response round trip.", "",
             "| row | metric | local core | Mosquitto | core / Mosquitto |",
             "|---|---|---|---|---|"]
    names = {sc.name for sc in rows}
    for row, label, key, digits, _lower in _METRICS:
        if row not in names:
            continue
        core = _get(summary, row, "local_core", key)
        mosq = _get(summary, row, "mosquitto", key)
        ratio = f"×{core / mosq:.2f}" if core and mosq else "–"
        lines.append(f"| `{row}` | {label} | {_f(core, digits)} | {_f(mosq, digits)} | {ratio} |")
    lines.append("")
    errs = [(sc.name, b, e) for sc in rows for b, s in summary[sc.name].items()
            for e in s.get("errors", [])]
    if errs:
        lines.append("Errors: " + "; ".join(f"{n}/{b}: {e.splitlines()[0][:160]}"
                                            for n, b, e in errs[:6]))
        lines.append("")
    lines += ["| core target | measured | met |", "|---|---|---|"]
    for label, measured, met in targets(summary, next((sc.count for sc in rows
                                                        if sc.name == "local_connections"),
                                                       1000)):
        lines.append(f"| {label} | {measured} | "
                     f"{'–' if met is None else ('yes' if met else '**no**')} |")
    lines.append("")
    return lines


# -- the child processes' side ------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def now() -> float:
    return time.monotonic()


def cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_line(timeout: float) -> str | None:
    """A line from stdin ('' on EOF), None on timeout (blocking)."""
    import select

    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    return sys.stdin.readline().strip() if ready else None


async def read_line_async(timeout: float) -> str | None:
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, read_line, timeout)


def import_native() -> Any:
    """``awsiot_rs._native``, retrying for up to 3 minutes while the extension is being
    rebuilt (ImportError)."""
    deadline = now() + 180
    while True:
        try:
            from awsiot_rs import _native

            return _native
        except ImportError as e:
            if now() > deadline:
                raise
            print(f"import awsiot_rs._native failed ({e}); retrying in 10 s", file=sys.stderr)
            for name in [m for m in sys.modules if m.startswith("awsiot_rs")]:
                del sys.modules[name]
            time.sleep(10)


def start_core(native: Any) -> Any:
    return native.LocalCoreRef.start("127.0.0.1", 0, 0, 0, 0, "aws", "disconnect", 3600.0)


def write_pems(directory: str, name: str, cert: bytes, key: bytes) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, f"{name}.crt")
    key_path = os.path.join(directory, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return cert_path, key_path


def client_context(ca: str | bytes, cert: str, key: str) -> ssl.SSLContext:
    """The measuring clients' TLS context: the broker's CA (a file, or PEM bytes), the
    client certificate; verifies the server name (127.0.0.1 is in both server certificates)."""
    if isinstance(ca, bytes):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def blocking_connect(ctx: ssl.SSLContext, port: int, client_id: str,
                     timeout: float = 10.0) -> tuple[ssl.SSLSocket, float]:
    """TCP (TCP_NODELAY) + TLS + CONNECT/CONNACK on a blocking socket; returns the socket and
    the time the TLS handshake ended. Raises on refusal."""
    from support import packets

    raw = socket.create_connection((HOST, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname=HOST)
    t_tls = now()
    s.sendall(packets.connect(client_id, keep_alive=60))
    p = packets.recv(s)
    if p.type != packets.CONNACK or p.body[1:2] != b"\x00":
        s.close()
        raise ConnectionError(f"CONNACK refused: {p.raw!r}")
    return s, t_tls


def role_serve(o: dict[str, Any]) -> dict[str, Any]:
    """Runs a core until a ``stop`` line (or EOF) on stdin; ``ready`` carries its ports, CA
    file and the certificate/key files of ``things``."""
    raise_nofile()
    native = import_native()
    ref = start_core(native)
    state = o["state_dir"]
    os.makedirs(state, exist_ok=True)
    ca = os.path.join(state, "ca.crt")
    with open(ca, "wb") as f:
        f.write(ref.ca_pem)
    things = {}
    for name in o["things"]:
        cert, key, _ = ref.register_thing(name, None)
        things[name] = write_pems(state, name, cert, key)
    emit("ready", ports=dict(ref.ports), ca=ca, things=things, pid=os.getpid())
    while True:
        line = read_line(3600)
        if line in ("", "stop", None):
            break
    counters = list(ref.counters())
    ref.stop()
    return {"counters": counters}


def role_core_start(o: dict[str, Any]) -> dict[str, Any]:
    """One cold start (this fresh process) and ``warm`` in-process restarts, each timed from
    before ``LocalCoreRef.start`` to the CONNACK of a blocking mTLS client. The process is
    pinned to the broker core at spawn (so the runtime threads started by ``start`` are);
    after the first start this thread moves to ``client_core``."""
    t_imp = now()
    native = import_native()
    import_ms = (now() - t_imp) * 1e3
    from support import packets  # noqa: F401 - imported before the clock starts

    samples = []
    for i in range(1 + int(o["warm"])):
        t0 = now()
        ref = start_core(native)
        t1 = now()
        cert, key, _ = ref.register_thing(THING, None)
        t2 = now()
        cert_path, key_path = write_pems(o["state_dir"], f"{THING}-{i}", cert, key)
        ctx = client_context(ref.ca_pem, cert_path, key_path)
        if i == 0 and o.get("client_core") is not None:
            os.sched_setaffinity(0, {o["client_core"]})  # this thread only
        t3 = now()
        s, t_tls = blocking_connect(ctx, ref.ports["mqtt"], f"bench-start-{i}")
        t4 = now()
        s.close()
        samples.append({
            "start_to_connack_ms": (t4 - t0) * 1e3, "start_ms": (t1 - t0) * 1e3,
            "register_ms": (t2 - t1) * 1e3, "client_prep_ms": (t3 - t2) * 1e3,
            "handshake_ms": (t4 - t3) * 1e3, "connack_ms": (t4 - t_tls) * 1e3,
            "t_connack": t4,
        })
        ref.stop()
    return {"t_script": T_SCRIPT, "import_ms": import_ms, "samples": samples}


def role_mosq_start(o: dict[str, Any]) -> dict[str, Any]:
    """For each config: spawn Mosquitto (pinned to ``helper_core``) and poll its mTLS port
    (every 0.2 ms while refused) until a client has its CONNACK; then stop it."""
    ctx = client_context(o["ca"], o["cert"], o["key"])
    from support import packets  # noqa: F401

    samples = []
    for i, c in enumerate(o["configs"]):
        core = o.get("helper_core")
        log = open(os.path.join(os.path.dirname(c["conf"]), "stderr.log"), "wb")  # noqa: SIM115
        t0 = now()
        proc = subprocess.Popen(
            [o["binary"], "-c", c["conf"]], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=os.path.dirname(c["conf"]), start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None)
        refused = 0
        try:
            while True:
                if now() - t0 > 10:
                    raise TimeoutError("mosquitto did not answer within 10 s")
                try:
                    t3 = now()
                    s, _ = blocking_connect(ctx, c["port"], f"bench-start-{i}")
                    break
                except ConnectionRefusedError:
                    refused += 1
                    time.sleep(0.0002)
            t4 = now()
            s.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        samples.append({"start_to_connack_ms": (t4 - t0) * 1e3,
                        "handshake_ms": (t4 - t3) * 1e3, "refused": refused})
    return {"samples": samples}


async def _raw_connect(o: dict[str, Any], client_id: str, ctx: ssl.SSLContext,
                       proto_factory: Any = None) -> Any:
    import asyncio

    import mqttraw
    from support import packets

    if proto_factory is None:
        return await mqttraw.connect(o["port"], client_id, ssl=ctx)
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(proto_factory, HOST, o["port"], ssl=ctx), 10)
    proto.transport.set_write_buffer_limits(high=4 * 1024 * 1024)
    proto.transport.write(packets.connect(client_id, keep_alive=0))
    code = await asyncio.wait_for(proto.connack, 10)
    if code != 0:
        raise ConnectionError(f"CONNACK refused with return code {code}")
    return proto


async def role_qos1(o: dict[str, Any]) -> dict[str, Any]:
    """A QoS 1 subscriber (acknowledges every delivery, one write per read) and a QoS 1
    publisher (pre-encoded packets, at most ``window`` unacknowledged), in one process on one
    event loop. Timed from ``go`` until the subscriber has N and the publisher N PUBACKs."""
    import asyncio

    import mqttraw

    n, window, topic = int(o["messages"]), int(o["window"]), o["topic"]
    payload = bytes(65 + i % 26 for i in range(int(o["payload"])))
    ctx = client_context(o["ca"], o["cert"], o["key"])
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    state: dict[str, Any] = {"received": 0, "t_last": 0.0, "target": 0, "waiter": None}

    class Subscriber(mqttraw.RawProtocol):
        def __init__(self) -> None:
            super().__init__(self.on_pub)
            self.acks: list[bytes] = []

        def on_pub(self, buf: bytearray, header: int, start: int, end: int) -> None:
            if header & 0x06:
                p = start + 2 + ((buf[start] << 8) | buf[start + 1])
                self.acks.append(b"\x40\x02" + bytes(buf[p:p + 2]))
            state["received"] += 1

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.acks:
                assert self.transport is not None
                self.transport.write(b"".join(self.acks))
                self.acks.clear()
            waiter = state["waiter"]
            if waiter is not None and state["received"] >= state["target"] and not waiter.done():
                waiter.set_result(None)
            if state["received"] >= n and not done.done():
                state["t_last"] = now()
                done.set_result(None)

    sub = await _raw_connect(o, f"bench-sub-{os.getpid()}", ctx, Subscriber)
    await mqttraw.subscribe(sub, topic, 1)
    pub = await _raw_connect(o, f"bench-pub-{os.getpid()}", ctx)
    head, _ = mqttraw.publish_qos1_parts(topic, payload)
    ids = mqttraw.PACKET_IDS
    emit("ready")
    line = await read_line_async(60)
    if line is None:
        return {"error": "no go"}
    t0, c0 = now(), cpu()
    error = None

    async def received(target: int) -> None:
        if state["received"] < target:
            state["target"], state["waiter"] = target, loop.create_future()
            await state["waiter"]

    async def publish_all() -> None:
        # End-to-end window: at most `window` messages published and not yet delivered to the
        # subscriber (nor, for the PUBACKs, unacknowledged), topped up each time half of it
        # has arrived. The core acknowledges a publish once routed and, like AWS, drops what
        # a slow subscriber's queue cannot take; this keeps both brokers below that.
        sent = 0
        half = max(window // 2, 1)
        while sent < n:
            k = min(window - (sent - min(pub.pubacks, state["received"])), n - sent)
            if k > 0:
                pub.transport.write(b"".join(head + ids[(sent + i) % 65535 + 1] + payload
                                             for i in range(k)))
                sent += k
            target = min(sent, max(sent - window + half, 1))
            await pub.wait_pubacks(target)
            await received(target)
        await pub.wait_pubacks(n)

    try:
        await asyncio.wait_for(asyncio.gather(publish_all(), done), float(o["timeout"]))
    except Exception as e:  # noqa: BLE001 - reported
        error = f"{type(e).__name__}: {e}"
    t1, c1 = now(), cpu()
    t_end = max(state["t_last"] or t1, t1) if error is None else t1
    res = {"received": state["received"], "pubacks": pub.pubacks, "seconds": t_end - t0,
           "cpu_s": c1 - c0, "error": error}
    for p in (pub, sub):
        try:
            await asyncio.wait_for(p.disconnect(), 5)
        except Exception:  # noqa: BLE001
            pass
    return res


async def role_connections(o: dict[str, Any]) -> dict[str, Any]:
    """K raw asyncio mTLS connections, ``concurrency`` opening at once; ``ready`` once all
    are open (or failed); on ``ping`` a PINGREQ on each and the count of PINGRESPs."""
    import asyncio

    import mqttraw
    from support import packets

    raise_nofile()
    k, conc = int(o["count"]), int(o["concurrency"])
    ctx = client_context(o["ca"], o["cert"], o["key"])
    loop = asyncio.get_running_loop()
    pingresps = {"n": 0}
    all_pinged = loop.create_future()

    class Conn(mqttraw.RawProtocol):
        pinging = False

        def data_received(self, data: bytes) -> None:
            if not self.pinging:
                super().data_received(data)
                return
            self._buf += data
            for p in packets.split(self._buf):
                if p[0] >> 4 == packets.PINGRESP:
                    pingresps["n"] += 1
                    if pingresps["n"] >= k and not all_pinged.done():
                        all_pinged.set_result(None)

    emit("loaded")
    line = await read_line_async(60)
    if line is None:
        return {"error": "no go"}
    sem = asyncio.Semaphore(conc)
    conns: list[Any] = []
    times: list[float] = []
    failures: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            t = now()
            try:
                conns.append(await _raw_connect(o, f"{o['prefix']}-{i}", ctx, Conn))
                times.append((now() - t) * 1e3)
            except Exception as e:  # noqa: BLE001 - counted
                failures.append(f"{type(e).__name__}: {e}")

    t0, c0 = now(), cpu()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(k))), float(o["timeout"]))
    t1, c1 = now(), cpu()
    times.sort()
    emit("ready", opened=len(conns), connect_s=t1 - t0, cpu_s=c1 - c0,
         failures=len(failures), first_failure=failures[0] if failures else None,
         connect_p50_ms=times[len(times) // 2] if times else None,
         connect_p99_ms=times[int(len(times) * 0.99)] if times else None)
    await read_line_async(120)
    ping = packets.pingreq()
    for c in conns:
        c.pinging = True
        if c.transport is not None and not c.transport.is_closing():
            c.transport.write(ping)
    try:
        await asyncio.wait_for(asyncio.shield(all_pinged), 20)
    except (TimeoutError, asyncio.TimeoutError):
        pass
    alive = pingresps["n"]
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.1)
    return {"alive": alive}


def role_rtt(o: dict[str, Any]) -> dict[str, Any]:
    """A blocking mTLS client (TCP_NODELAY): subscribes (QoS 0) to the response topic(s),
    then publishes one QoS 0 request and reads until its response arrives, ``warmup`` times
    unmeasured and ``round_trips`` times measured (``perf_counter_ns``)."""
    from support import packets

    ctx = client_context(o["ca"], o["cert"], o["key"])
    s, _ = blocking_connect(ctx, o["port"], f"bench-rtt-{os.getpid()}")
    s.settimeout(float(o["timeout"]))
    for i, topic in enumerate(o["resp"], 1):
        s.sendall(packets.subscribe(i, topic, 0))
        p = packets.recv(s)
        if p.type != packets.SUBACK or p.body[2:3] == b"\x80":
            raise ConnectionError(f"SUBSCRIBE {topic} refused")
    accepted = o["resp"][0].encode()
    req = o["req"]
    emit("ready")
    if read_line(60) is None:
        return {"error": "no go"}
    buf = bytearray()
    samples: list[int] = []
    rejected = 0
    n, warmup = int(o["round_trips"]), int(o["warmup"])
    perf = time.perf_counter_ns
    t0 = c0 = 0.0
    for i in range(warmup + n):
        if i == warmup:
            t0, c0 = now(), cpu()
        if o["shadow"]:
            body = b'{"state":{"reported":{"seq":%d}},"clientToken":"b%d"}' % (i, i)
        else:
            body = b'{"seq":%d}' % i
        pkt = packets.publish(req, body, qos=0)
        t = perf()
        s.sendall(pkt)
        while True:
            got = None
            for raw in packets.split(buf):
                if raw[0] >> 4 == packets.PUBLISH:
                    got = raw
            if got is not None:
                break
            data = s.recv(65536)
            if not data:
                raise ConnectionError("closed by the broker")
            buf += data
        dt = perf() - t
        p = packets.decode(got)
        if p.topic.encode() != accepted:
            rejected += 1
        if i >= warmup:
            samples.append(dt)
    t1, c1 = now(), cpu()
    s.close()
    samples.sort()

    def pct(q: float) -> float:  # nearest rank
        return samples[max(0, min(len(samples) - 1, int(-(-q * len(samples) // 1)) - 1))] / 1e3

    return {"round_trips": len(samples), "seconds": t1 - t0, "cpu_s": c1 - c0,
            "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
            "max_us": samples[-1] / 1e3, "mean_us": statistics.fmean(samples) / 1e3,
            "rejected": rejected, "error": f"{rejected} rejected" if rejected else None}


async def role_responder(o: dict[str, Any]) -> dict[str, Any]:
    """Mosquitto's stand-in for the shadow service: subscribes (QoS 0) to ``req`` and
    publishes every request's payload to ``resp`` (QoS 0), one write per read."""
    import asyncio

    import mqttraw
    from support import packets

    ctx = client_context(o["ca"], o["cert"], o["key"])
    resp = o["resp"]
    encode = packets.publish
    proto: Any = None

    def on_pub(buf: bytearray, header: int, start: int, end: int) -> None:
        p = start + 2 + ((buf[start] << 8) | buf[start + 1]) + (2 if header & 0x06 else 0)
        proto.transport.write(encode(resp, bytes(buf[p:end])))

    proto = await mqttraw.connect(o["port"], f"bench-responder-{os.getpid()}", ssl=ctx,
                                  on_publish=on_pub)
    await mqttraw.subscribe(proto, o["req"], 0)
    emit("ready")
    await read_line_async(3600)
    proto.transport.close()
    await asyncio.sleep(0.05)
    return {}


ROLES: dict[str, Any] = {"serve": role_serve, "core_start": role_core_start, "mosq_start": role_mosq_start,
         "qos1": role_qos1, "connections": role_connections, "rtt": role_rtt,
         "responder": role_responder}


def main(argv: list[str]) -> int:
    import asyncio
    import inspect
    import traceback

    role, opts = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    fn = ROLES[role]
    try:
        result: dict[str, Any] = asyncio.run(fn(opts)) if inspect.iscoroutinefunction(fn) else fn(opts)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a result line
        traceback.print_exc()
        emit("result", error=f"{type(e).__name__}: {e}")
        return 1
    emit("result", affinity=sorted(os.sched_getaffinity(0)), **result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no runtime thread keeps the process alive
