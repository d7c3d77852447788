"""The benchmark's report: medians over the repetitions (:func:`summarize`), the Markdown
tables and targets (:func:`markdown`), and the files in ``--out`` (:func:`write`:
``results-<stamp>.json`` / ``.md`` and copies named ``latest.json`` / ``latest.md``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import local_core
from scenarios import NATIVE, PEERS, THROUGHPUT_KINDS, Run, Scenario

#: ``{scenario: {client: numbers}}``, as :func:`summarize` returns it.
Summary = dict[str, dict[str, dict[str, Any]]]

#: Per-run ``extra`` numbers whose median (over the runs that measured something) goes into
#: the summary.
_MEDIAN_EXTRAS = ("submit_msg_per_s", "queue_full_retries", "p50_us", "p90_us", "p99_us",
                  "max_us", "mean_us", "switches_per_rt", "kib_per_conn", "rss0_kib", "rss1_kib", "arrived",
                  "deliver_s", "close_s", "threads", "broker_nofile", "p50_ms", "p99_ms",
                  "max_ms", "sent", "acked", "cpu_s", "connect_s", "switches_per_msg",
                  "us_loop_per_msg", "us_other_per_msg")


def summarize(runs: list[Run], scenarios: tuple[Scenario, ...]) -> Summary:
    """``{scenario: {client: summary}}`` with medians over the repetitions. Runs with
    errors still count if they measured something (their error is listed)."""
    out: Summary = {}
    for sc in scenarios:
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
            if local_core.is_local(sc):
                s["min_alive"] = min((r.extra.get("alive") or 0 for r in rs), default=0)
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
                if local_core.is_local(sc):  # every numeric figure of the local rows
                    keys = {k for r in good for k, v in r.extra.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)}
                    for key in sorted(keys - set(_MEDIAN_EXTRAS)):
                        vals = [r.extra[key] for r in good
                                if isinstance(r.extra.get(key), (int, float))]
                        s[key] = statistics.median(vals)
                if sc.kind == "latency":
                    s["p50_us_min"] = min(r.extra.get("p50_us", 0) for r in good)
                    s["p50_us_max"] = max(r.extra.get("p50_us", 0) for r in good)
            out.setdefault(sc.name, {})[client] = s
    return out


def fmt_rate(v: float | None) -> str:
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


def _peer_row(summary: Summary, sc: Scenario,
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


def _ratios(summary: Summary, sc: Scenario,
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


def _throughput_table(summary: Summary, meta: dict[str, Any], scenarios: tuple[Scenario, ...],
                      lines: list[str]) -> bool:
    scs = [sc for sc in scenarios if sc.kind in THROUGHPUT_KINDS and sc.name in summary]
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
        return [fmt_rate(s["msg_per_s"]) + mark, _fmt_us(s["us_cpu_per_msg"])]

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


def _latency_table(summary: Summary, scenarios: tuple[Scenario, ...], lines: list[str]) -> bool:
    scs = [sc for sc in scenarios if sc.kind == "latency" and sc.name in summary]
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
                f"{_fmt_num(s.get('mean_us'))} | {fmt_rate(s.get('msg_per_s'))} | "
                f"{_fmt_us(s.get('us_cpu_per_msg'))} | {_fmt_num(s.get('switches_per_rt'))} | "
                f"{_fmt_ratio(_ratio(s['p50_us'], raw.get('p50_us')))} | "
                f"{_fmt_ratio(_ratio(s.get('p99_us'), raw.get('p99_us')))} | {vs_peer} | {vs_cpu} |")
    lines.append("")
    return True


def _scale_table(summary: Summary, scenarios: tuple[Scenario, ...], lines: list[str]) -> bool:
    scs = [sc for sc in scenarios if sc.kind == "scale" and sc.name in summary]
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
                f"{fmt_rate(s.get('msg_per_s'))} | {_fmt_num(s.get('us_cpu_per_msg'), 0)} | "
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


def _fleet_table(summary: Summary, scenarios: tuple[Scenario, ...], lines: list[str]) -> bool:
    sc = next((sc for sc in scenarios if sc.kind == "fleet" and sc.name in summary), None)
    if sc is None:
        return False
    row = summary[sc.name]
    lines.append("| client | connections | published (min acked of runs) | CPU s | CPU µs/msg | "
                 "of which loop thread / other threads | context switches/msg | "
                 "PUBACK p50 ms | PUBACK p99 ms | PUBACK max ms | RSS after connect, MiB | "
                 "CPU vs raw | CPU vs gmqtt |")
    lines.append("|" + "---|" * 13)
    raw, gm = row.get("raw", {}), row.get("gmqtt", {})
    for client, s in row.items():
        if "us_cpu_per_msg" not in s:
            err = (s["errors"][0].splitlines()[0] if s["errors"] else "failed")[:120]
            lines.append(f"| {client} | failed: {err} |" + " |" * 11)
            continue
        mine = s["us_cpu_per_msg"]
        lines.append(
            f"| {client} | {sc.count:,} | {s['messages']:,} ({s['min_count']:,}) | "
            f"{_fmt_num(s.get('cpu_s'), 2)} | {_fmt_num(mine, 1)} | "
            f"{_fmt_num(s.get('us_loop_per_msg'), 1)} / {_fmt_num(s.get('us_other_per_msg'), 1)} | "
            f"{_fmt_num(s.get('switches_per_msg'), 2)} | "
            f"{_fmt_num(s.get('p50_ms'), 2)} | {_fmt_num(s.get('p99_ms'), 2)} | "
            f"{_fmt_num(s.get('max_ms'), 1)} | {_fmt_num((s.get('rss1_kib') or 0) / 1024, 0)} | "
            f"{_fmt_ratio(_ratio(mine, raw.get('us_cpu_per_msg')))} | "
            f"{_fmt_ratio(_ratio(mine, gm.get('us_cpu_per_msg')))} |")
    lines.append("")
    return True


def targets(summary: Summary, scenarios: tuple[Scenario, ...]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the project's performance targets (the numbered ones are
    issue 12's); met is None when not measured (scenario not run)."""
    out: list[tuple[str, str, bool | None]] = []

    def get(sc: str, client: str, key: str) -> float | None:
        return summary.get(sc, {}).get(client, {}).get(key)

    def ratio_target(label: str, sc: str, ref: str, key: str, limit: float,
                     at_least: bool, ref_sc: str | None = None) -> None:
        mine, theirs = get(sc, "awsiot_rs", key), get(ref_sc or sc, ref, key)
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
    # 1. Round trip, through a callback (`latency`) and through `async for` (`latency_iter`,
    # whose raw reference is the `latency` row of the same run).
    for name, how in (("latency", "callback"), ("latency_iter", "`async for`")):
        ratio_target(f"1. round trip p50 ≤ 1.2× raw, {how} (`{name}`, µs)", name, "raw",
                     "p50_us", 1.2, False, "latency")
        ratio_target(f"1. round trip p99 ≤ 1.5× raw, {how} (`{name}`, µs)", name, "raw",
                     "p99_us", 1.5, False, "latency")
    # 2. Awaited QoS 1 publishes (windows of --window) against raw's rate; CPU against gmqtt.
    ratio_target("2. awaited QoS 1 publish ≥ 1.0× raw (`pub_qos1`, msg/s)", "pub_qos1", "raw",
                 "msg_per_s", 1.0, True)
    ratio_target("2. awaited QoS 1 publish ≥ 1.0× raw (`pub_qos1_16k`, msg/s)", "pub_qos1_16k",
                 "raw", "msg_per_s", 1.0, True)
    for name in ("pub_qos0", "pub_qos1"):
        ratio_target(f"2. client CPU/msg ≤ 0.5× gmqtt (`{name}`)", name, "gmqtt",
                     "us_cpu_per_msg", 0.5, False)
    for sc in scenarios:
        if sc.kind not in THROUGHPUT_KINDS or sc.compare_to or sc.name not in summary \
                or sc.name in ("pub_qos0", "pub_qos1"):
            continue
        row = summary[sc.name]
        peers = {c: row[c] for c in PEERS if c in row and row[c].get("us_cpu_per_msg")}
        best = _best(peers, "us_cpu_per_msg", lowest=True)
        if best:
            ratio_target(f"CPU/msg ≤ 0.5× best peer (`{sc.name}`)", sc.name, best,
                         "us_cpu_per_msg", 0.5, False)
    # 3. Memory per idle connection, at every scale row that ran (1 000 and 10 000).
    for big in sorted((sc for sc in scenarios if sc.kind == "scale"
                       and "awsiot_rs" in summary.get(sc.name, {})), key=lambda sc: sc.count):
        s = summary[big.name]["awsiot_rs"]
        kib = s.get("kib_per_conn")
        out.append((f"3. {big.count:,} idle connections: ≤ 10 KiB RSS per connection "
                    f"(`{big.name}`)",
                    f"{_fmt_num(kib)} KiB" if kib is not None else "not measured",
                    None if kib is None else kib <= 10.0))
        ratio_target(f"{big.count:,} connections: connect-all ≤ 2× raw", big.name, "raw",
                     "seconds", 2.0, False)
        d = s.get("min_delivered")
        out.append((f"{big.count:,} connections: every one receives its message",
                    f"{d:,}/{big.count:,} (min of runs)" if d is not None else "not measured",
                    None if d is None else d >= big.count))
    # 4. Fleet simulation.
    fleet = next((sc for sc in scenarios if sc.kind == "fleet"
                  and "awsiot_rs" in summary.get(sc.name, {})), None)
    if fleet is not None:
        s = summary[fleet.name]["awsiot_rs"]
        k = fleet.count
        ratio_target(f"4. fleet ({k:,} connections): client CPU ≤ 1.0× raw", fleet.name, "raw",
                     "us_cpu_per_msg", 1.0, False)
        p99 = s.get("p99_ms")
        out.append((f"4. fleet ({k:,} connections): PUBACK p99 ≤ 20 ms",
                    f"{_fmt_num(p99, 2)} ms" if p99 is not None else "not measured",
                    None if p99 is None else p99 <= 20.0))
        out.append((f"4. fleet ({k:,} connections): every publish acknowledged",
                    f"{s['min_count']:,}/{s['messages']:,} (min of runs)",
                    s["min_count"] >= s["messages"]))
    return out


#: The figures target 5 compares, per scenario kind: (summary key, True if higher is better).
REGRESSION_FIGURES: dict[str, tuple[tuple[str, bool], ...]] = {
    "pub_qos0": (("msg_per_s", True), ("us_cpu_per_msg", False)),
    "pub_qos1": (("msg_per_s", True), ("us_cpu_per_msg", False)),
    "recv": (("msg_per_s", True), ("us_cpu_per_msg", False)),
    "latency": (("p50_us", False), ("p99_us", False), ("us_cpu_per_msg", False)),
    "scale": (("seconds", False), ("kib_per_conn", False)),
    "fleet": (("us_cpu_per_msg", False), ("p99_ms", False)),
}


@dataclass(frozen=True)
class Change:
    """One awsiot_rs figure of this run against the baseline, both as a ratio to raw in their
    own run (absolute figures do not carry across machines or loads; ratios mostly do)."""

    scenario: str
    figure: str
    before: float
    after: float
    #: How much worse the ratio got (0.10 = 10 % worse; negative = better).
    worse_by: float


def compare(summary: Summary, base: Summary, scenarios: tuple[Scenario, ...]) -> list[Change]:
    """awsiot_rs's ratios to raw, this run against ``base``, for every scenario and figure
    (``REGRESSION_FIGURES``) measured in both."""
    out: list[Change] = []

    def ratio(sm: Summary, sc: Scenario, key: str) -> float | None:
        row = sm.get(sc.name, {})
        ref_row = row if "raw" in row else sm.get(sc.compare_to or "", {})
        return _ratio(row.get("awsiot_rs", {}).get(key), ref_row.get("raw", {}).get(key))

    for sc in scenarios:
        for key, higher_better in REGRESSION_FIGURES.get(sc.kind, ()):
            after, before = ratio(summary, sc, key), ratio(base, sc, key)
            if after is None or before is None:
                continue
            worse = before / after - 1 if higher_better else after / before - 1
            out.append(Change(sc.name, key, before, after, worse))
    return out


def regression_target(changes: list[Change], base_meta: dict[str, Any],
                      tolerance: float) -> tuple[str, str, bool | None]:
    """Target 5: no figure's ratio to raw more than ``tolerance`` worse than the baseline's."""
    label = (f"5. no regression: no ratio to raw > {tolerance:.0%} worse than the baseline "
             f"({base_meta.get('date', '?')})")
    if not changes:
        return label, "nothing measured in both runs", None
    worse = [c for c in changes if c.worse_by > tolerance]
    if not worse:
        best = min(changes, key=lambda c: c.worse_by)
        return label, (f"{len(changes)} figures compared, none worse (best: `{best.scenario}` "
                       f"{best.figure} {best.worse_by:+.0%})"), True
    listed = ", ".join(f"`{c.scenario}` {c.figure} {c.worse_by:+.0%}" for c in worse[:6])
    return label, f"{len(worse)} of {len(changes)} worse: {listed}", False


def markdown(summary: Summary, meta: dict[str, Any], scenarios: tuple[Scenario, ...],
             baseline: dict[str, Any] | None = None, tolerance: float = 0.15) -> str:
    """The Markdown report: tables (throughput and CPU, latency, scale, the embedded core vs
    Mosquitto), targets (with target 5 against ``baseline``, a former run's JSON, when given),
    details."""
    v = meta["versions"]
    lines = [
        f"{meta['cpu']}, {meta['cpu_count']} cores (client on core {meta['client_core']}, "
        f"broker and helpers on core {meta['helper_core']}); Python {meta['python']}; "
        f"awsiot_rs {v.get('awsiot_rs')}, paho-mqtt {v.get('paho-mqtt')}, gmqtt "
        f"{v.get('gmqtt')}, {v.get('mosquitto')}. Median of {meta['repeat']} runs. "
        f"`{meta['command']}`.",
        "",
    ]
    if any(sc.kind in THROUGHPUT_KINDS and sc.name in summary for sc in scenarios):
        lines += ["### Throughput and CPU", "",
                  "msg/s end to end; µs/msg = client process CPU (user + sys, all threads) per "
                  "message.", ""]
        _throughput_table(summary, meta, scenarios, lines)
    if any(sc.kind == "latency" and sc.name in summary for sc in scenarios):
        lines += ["### Round-trip latency", "",
                  f"{meta['round_trips']:,} round trips after {meta['warmup']} warm-up, "
                  f"{meta['payload']} B QoS 0 to the client's own subscription; percentiles of "
                  "each run, then the median over runs.", ""]
        _latency_table(summary, scenarios, lines)
    if any(sc.kind == "scale" and sc.name in summary for sc in scenarios):
        lines += ["### Connection scale", "",
                  f"K connections in one process, at most {meta['scale_concurrency']} "
                  "connecting at once; each connects and subscribes to its own topic. Time and "
                  "CPU of the whole connect + subscribe phase; RSS growth (`VmRSS`) over it "
                  "divided by K.", ""]
        _scale_table(summary, scenarios, lines)
    if any(sc.kind == "fleet" and sc.name in summary for sc in scenarios):
        lines += ["### Fleet simulation", "",
                  f"{meta.get('fleet_count', 0):,} connections in one process, each subscribed "
                  "to its own command topic (QoS 1) and publishing one 64 B QoS 1 message per "
                  f"second, staggered over the second, for {meta.get('fleet_duration')} s. CPU "
                  "of the client process over the publishing phase (and the wait for the last "
                  "PUBACKs) per message; PUBACK latency from the publish call to the "
                  "acknowledgement reaching the application.", ""]
        _fleet_table(summary, scenarios, lines)
    lines += local_core.markdown_lines(summary, meta, scenarios)
    tg = targets(summary, scenarios)
    changes: list[Change] = []
    if baseline is not None:
        changes = compare(summary, baseline.get("summary", {}), scenarios)
        tg.append(regression_target(changes, baseline.get("meta", {}), tolerance))
    if any(met is not None for _, _, met in tg):
        lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
        for label, measured, met in tg:
            mark = "–" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {label} | {measured} | {mark} |")
        lines.append("")
    if changes:
        lines += [f"<details><summary>5. Against the baseline ({len(changes)} figures; "
                  "ratio = awsiot_rs / raw in the same run)</summary>", "",
                  "| scenario | figure | baseline ratio | this run | change |", "|---|---|---|---|---|"]
        for ch in changes:
            mark = " **worse**" if ch.worse_by > tolerance else ""
            lines.append(f"| `{ch.scenario}` | {ch.figure} | ×{ch.before:.2f} | "
                         f"×{ch.after:.2f} | {ch.worse_by:+.0%}{mark} |")
        lines += ["", "</details>", ""]
    lines.append("Scenarios: " + "; ".join(f"`{s.name}`: {s.description}" for s in scenarios
                                           if s.name in summary))
    lines.append("")
    if not any(s.name in summary and not local_core.is_local(s) for s in scenarios):
        return "\n".join(lines) + "\n"
    lines.append("<details><summary>Details (spread, publish-call rate, errors)</summary>")
    lines.append("")
    lines.append("| scenario | client | msg/s median (min–max) | µs/msg | min count | "
                 "publish calls/s | QueueFullError retries | errors |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for sc in scenarios:
        if local_core.is_local(sc):  # their own section above
            continue
        for c, s in summary.get(sc.name, {}).items():
            rng = (f"{fmt_rate(s.get('msg_per_s'))} ({fmt_rate(s.get('msg_per_s_min'))}–"
                   f"{fmt_rate(s.get('msg_per_s_max'))})")
            errs = "; ".join(sorted(set(e.splitlines()[0] for e in s["errors"])))[:200]
            if s.get("skipped"):
                errs = f"skipped: {s['skipped']}"
            lines.append(f"| {sc.name} | {c} | {rng} | {_fmt_us(s.get('us_cpu_per_msg'))} | "
                         f"{s['min_count']}/{s['messages']} | "
                         f"{fmt_rate(s.get('submit_msg_per_s'))} | "
                         f"{s.get('queue_full_retries', '–')} | {errs or '–'} |")
    lines.append("")
    lines.append("</details>")
    return "\n".join(lines) + "\n"


def versions(mosquitto: str) -> dict[str, str | None]:
    """Versions of the measured libraries and of the broker (``mosquitto -h``)."""
    out: dict[str, str | None] = {}
    for dist in ("awsiot_rs", "paho-mqtt", "gmqtt"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001
            out[dist] = None
    try:
        first = subprocess.run([mosquitto, "-h"], capture_output=True, text=True,
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


def write(out_dir: str, meta: dict[str, Any], summary: Summary, runs: list[Run], md: str) -> str:
    """Writes the JSON (metadata, summary, every run) and the Markdown report to ``out_dir``
    as ``results-<stamp>`` and ``latest``; returns the path of the stamped JSON file."""
    os.makedirs(out_dir, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}
    for name in (f"results-{stamp}", "latest"):
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(doc, f, indent=2)
        with open(os.path.join(out_dir, name + ".md"), "w") as f:
            f.write(md)
    return os.path.join(out_dir, f"results-{stamp}.json")
