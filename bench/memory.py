"""Where an idle awsiot_rs connection's memory goes.

Opens K clients in this process against a private loopback Mosquitto (the test suite's), each
connected and subscribed to its own topic with a callback, keep-alive running (like the
``scale`` rows), then reports the growth over the K connections of:

* ``VmRSS`` (what the ``scale`` rows report);
* the C heap in use (glibc ``mallinfo2``: ``uordblks`` + ``hblkhd``, every arena): the Rust
  core (driver tasks, buffers, channels, sessions, registries) plus the Python objects larger
  than 512 B (smaller ones live in pymalloc's own arenas, outside the C heap);
* the Python objects (``tracemalloc``, in a second process, because tracing adds its own
  memory), total and by file.

Run::

    python bench/memory.py                 # K = 1000
    python bench/memory.py --count 10000

Needs ``mosquitto`` like ``run.py``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.join(os.path.dirname(HERE), "tests")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from workers import HOST, rss_kib  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def c_heap() -> int:
    """Bytes in use in the C heap (all arenas, mmapped blocks included); 0 if unknown."""
    try:
        libc = ctypes.CDLL(None)
        f = libc.mallinfo2
    except (OSError, AttributeError):
        return 0
    f.restype = _MallInfo2
    m = f()
    return int(m.uordblks + m.hblkhd)


async def measure(port: int, count: int, trace: bool) -> dict[str, Any]:
    import awsiot_rs

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def new_client(i: int) -> Any:
        return awsiot_rs.Client(HOST, port=port, tls=False, limits="mqtt",
                                client_id=f"mem-{os.getpid()}-{i}", keep_alive=60)

    got = [0]

    def on_message(_m: Any) -> None:
        got[0] += 1

    # Warm up: the runtime, the dispatcher and the first of every lazily built thing.
    warm = new_client(-1)
    await warm.connect()
    await warm.subscribe("mem/warm", qos=0, callback=on_message)
    await warm.disconnect()
    del warm
    await asyncio.sleep(0.2)

    clients: list[Any] = []
    subs: list[Any] = []
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        async with sem:
            c = new_client(i)
            clients.append(c)
            await c.connect()
            subs.append(await c.subscribe(f"mem/{os.getpid()}/{i}", qos=0, callback=on_message))

    if trace:
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
    rss0, heap0 = rss_kib(), c_heap()
    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.sleep(1.0)  # idle: keep-alive timers armed, buffers settled
    rss1, heap1 = rss_kib(), c_heap()
    out: dict[str, Any] = {
        "count": count,
        "rss_per_conn": (rss1 - rss0) * 1024 / count,
        "heap_per_conn": (heap1 - heap0) / count,
    }
    if trace:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "filename")
        out["py_per_conn"] = sum(s.size_diff for s in stats) / count
        out["py_by_file"] = [
            (os.path.relpath(s.traceback[0].filename, os.path.dirname(HERE))
             if "awsiot_rs" in s.traceback[0].filename else os.path.basename(
                 s.traceback[0].filename), s.size_diff / count)
            for s in stats[:8] if s.size_diff > 0]
        lines = snap1.compare_to(snap0, "lineno")
        out["py_by_line"] = [
            (f"{os.path.basename(s.traceback[0].filename)}:{s.traceback[0].lineno}",
             s.size_diff / count, s.count_diff / count)
            for s in lines[:12] if s.size_diff > 0]
        tracemalloc.stop()
    await asyncio.gather(*(c.disconnect() for c in clients))
    return out


def child(args: argparse.Namespace) -> None:
    out = asyncio.run(measure(args.port, args.count, args.trace))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3, help="untraced runs (median)")
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.port:
        child(args)
        return

    from support.mosquitto import Mosquitto

    from run import BROKER_SETTINGS

    nofile = args.count + 1024

    def raise_limit() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(soft, min(hard, nofile)) if hard != resource.RLIM_INFINITY else nofile
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    broker = Mosquitto(None, listeners=("port",), settings=BROKER_SETTINGS,
                       preexec_fn=raise_limit)
    broker.start()
    try:
        def run(trace: bool) -> dict[str, Any]:
            cmd = [sys.executable, __file__, "--port", str(broker.port), "--count",
                   str(args.count)] + (["--trace"] if trace else [])
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
            return dict(json.loads(r.stdout.strip().splitlines()[-1]))

        plain = sorted((run(False) for _ in range(args.repeat)),
                       key=lambda r: float(r["rss_per_conn"]))
        traced = run(True)
    finally:
        broker.stop()
    med = plain[len(plain) // 2]
    spread = ", ".join(f"{r['rss_per_conn'] / 1024:.1f}" for r in plain)
    print(f"K = {args.count}, median of {len(plain)} (RSS KiB/conn of each run: {spread})\n")
    print("| per idle connection | KiB |")
    print("|---|---|")
    print(f"| RSS growth | {med['rss_per_conn'] / 1024:.2f} |")
    print(f"| C heap in use (Rust core + Python objects > 512 B) | "
          f"{med['heap_per_conn'] / 1024:.2f} |")
    print(f"| Python objects (tracemalloc, separate run) | {traced['py_per_conn'] / 1024:.2f} |")
    print("\nPython objects by file (B/conn):\n")
    for name, size in traced["py_by_file"]:
        print(f"- {name}: {size:.0f}")
    print("\nPython objects by line (B/conn, blocks/conn):\n")
    for name, size, n in traced["py_by_line"]:
        print(f"- {name}: {size:.0f} B, {n:.1f} blocks")


if __name__ == "__main__":
    main()
