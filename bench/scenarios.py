"""What the benchmark measures: the clients, the scenarios (one table row each) and the
normalised result of one measurement (:class:`Run`). Used by ``run.py`` (which runs them)
and ``report.py`` (which summarises and prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The measured client libraries. ``raw`` (pure-Python ceiling), ``mosquitto_pub`` and
#: ``libmosquitto`` (``native/mosq_recv.c``; native C references) are references, not peers.
PEERS = ("paho", "gmqtt")
CLIENTS = ("awsiot_rs", "paho", "gmqtt", "raw", "mosquitto_pub", "libmosquitto")


@dataclass(frozen=True)
class Scenario:
    """One row of a result table."""

    name: str
    #: Which runner drives it: "pub_qos0" | "pub_qos1" | "recv" | "latency" | "scale" |
    #: "fleet".
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
    Scenario("fleet", "fleet", ("awsiot_rs", "gmqtt", "raw"),
             "K connections in one process, each subscribed to its own command topic (QoS 1) "
             "and publishing one QoS 1 message per second, staggered over the second, for D s "
             "(`--fleet-count`, `--fleet-duration`)", count=10000),
    Scenario("scale_10k", "scale", ("awsiot_rs", "raw", "gmqtt"),
             "10 000 connections in one process, each subscribed to its own topic",
             worker="scale", count=10000, group="scale"),
)

THROUGHPUT_KINDS = ("pub_qos0", "pub_qos1", "recv")
#: Native (C) references: not peers, not the pure-Python ceiling.
NATIVE = ("mosquitto_pub", "libmosquitto")


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


def scenarios_for(scale_max: int) -> tuple[Scenario, ...]:
    """The rows of a run: :data:`SCENARIOS` with the ``scale`` rows up to ``scale_max``."""
    return tuple(sc for sc in SCENARIOS if sc.kind != "scale") + scale_rows(scale_max)
