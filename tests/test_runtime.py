"""Process-level behaviour: a running loop, interpreter exit, fork."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from support.clients import make_client

pytestmark = pytest.mark.broker


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def test_client_built_outside_the_loop_works_under_asyncio_run(broker, unique_topic):
    c = make_client(broker.port)

    async def main() -> bytes:
        async with c:
            sub = await c.subscribe(unique_topic)
            await c.publish(unique_topic, b"ok", qos=1)
            async for m in sub:
                return m.payload
        return b""

    assert asyncio.run(main()) == b"ok"
    # and again on a second, different loop (the client is reusable across loops)
    assert asyncio.run(main()) == b"ok"


def test_interpreter_exit_with_a_connected_client_is_clean(broker):
    # Exits without disconnect(): the atexit hook must send DISCONNECT and stop the runtime
    # without a crash. Repeated because exit-time races are intermittent.
    code = f"""
        import asyncio, awsiot_rs
        c = awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt", client_id="exit-%d")
        async def main():
            await c.connect()
            sub = await c.subscribe("exit/#")
            await c.publish("exit/x", b"1", qos=1)
        asyncio.run(main())
        print("done")
    """
    for i in range(8):
        start = len(broker.log_text())
        r = run_script(code % i)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "done"
        assert "Fatal Python error" not in r.stderr and "panicked" not in r.stderr
        broker.wait_for_log(f"Client exit-{i} disconnected", timeout=5, start=start)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_use_after_fork_raises_instead_of_hanging(broker):
    code = f"""
        import asyncio, os, sys, awsiot_rs
        c = awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt")
        async def main():
            await c.connect()
            pid = os.fork()
            if pid == 0:
                try:
                    c.publish_nowait("t", b"x")
                except RuntimeError as e:
                    print("child:", e, flush=True)
                    os._exit(0)
                os._exit(3)
            _, status = os.waitpid(pid, 0)
            print("child exit", os.waitstatus_to_exitcode(status), flush=True)
            await c.disconnect()
        asyncio.run(main())
    """
    r = run_script(code, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "cannot be used across fork" in r.stdout
    assert "child exit 0" in r.stdout


def test_a_client_in_a_forked_child_that_creates_its_own_works(broker):
    code = f"""
        import asyncio, os, awsiot_rs
        async def use():
            async with awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt") as c:
                await c.publish("fork/ok", b"1", qos=1)
        asyncio.run(use())
        pid = os.fork()
        if pid == 0:
            asyncio.run(use())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """
    r = run_script(code, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "child 0" in r.stdout
