"""Soak (``pytest -m slow``, run by hand): 50 000 QoS 1 messages from a persistent-session
publisher across broker SIGKILL/SIGTERM restarts and proxy cuts; an independent paho subscriber
keeps the ledger. Reports sent / acknowledged / received / lost / duplicates."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

import awsiot_rs
from support.clients import make_client
from support.fault_proxy import FaultProxy
from support.mosquitto import Mosquitto
from test_reliability import Verifier

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.broker, pytest.mark.timeout(900)]

N = int(os.environ.get("AWSIOT_RS_SOAK_N", "50000"))
#: With SIGKILL the broker loses what it acknowledged but had not saved yet (its durability).
KILL = os.environ.get("AWSIOT_RS_SOAK_KILL", "0") == "1"


async def test_soak_zero_loss_across_kills_restarts_and_cuts(pki, tmp_path):
    broker = Mosquitto(pki, tmp_path / "broker", persistence=True, extra_config="autosave_interval 1\nautosave_on_changes false")
    broker.start()
    topic = f"soak/{uuid.uuid4().hex}"
    verifier = Verifier(broker.port, topic)
    outcome: dict[int, object] = {}
    async with FaultProxy(target_port=broker.port) as proxy:
        pub = make_client(
            proxy.port, client_id=f"soak-{uuid.uuid4().hex[:8]}",
            clean_session=False, keep_alive=5, operation_timeout=60,
            reconnect=awsiot_rs.Reconnect(min_delay=0.2, max_delay=1.0),
            offline_queue=awsiot_rs.OfflineQueue(limit=100_000),
        )
        await pub.connect()

        async def send(i: int) -> None:
            try:
                await pub.publish(topic, str(i), qos=1)
                outcome[i] = True
            except awsiot_rs.AwsIotError as e:
                outcome[i] = e

        async def faults() -> None:
            for k in range(6):
                await asyncio.sleep(3)
                if k % 3 == 0:
                    await asyncio.to_thread(broker.stop, signal.SIGKILL if KILL else signal.SIGTERM)
                    await asyncio.sleep(1)
                    await asyncio.to_thread(broker.start)
                elif k % 3 == 1:
                    await proxy.cut()
                else:
                    await asyncio.to_thread(broker.stop, signal.SIGTERM)
                    await asyncio.sleep(1)
                    await asyncio.to_thread(broker.start)

        fault_task = asyncio.ensure_future(faults())
        tasks = []
        for i in range(N):
            tasks.append(asyncio.ensure_future(send(i)))
            if i % 500 == 499:
                await asyncio.sleep(0.1)  # ~5 000 msg/s offered
        await asyncio.gather(*tasks)
        await fault_task
        acked = {str(i) for i, ok in outcome.items() if ok is True}
        stalls = 0
        previous = -1
        for _ in range(600):  # until everything arrived or nothing new came for 3 s
            seen = verifier.seen()
            if acked <= seen:
                break
            if len(seen) == previous:
                stalls += 1
                if stalls >= 30:
                    break
            else:
                stalls = 0
            previous = len(seen)
            await asyncio.sleep(0.1)
        received = verifier.received
        lost = acked - verifier.seen()
        duplicates = len(received) - len(set(received))
        report = (f"kill={KILL} sent={N} acknowledged={len(acked)} failed={N - len(acked)} received={len(set(received))} "
                  f"lost={len(lost)} duplicates={duplicates} reconnects={pub.stats()['reconnects']}")
        print("\nSOAK:", report)
        await pub.disconnect()
    verifier.close()
    broker.stop()
    # SIGKILL may lose what mosquitto acknowledged but had not yet saved (autosave every 1 s):
    # that is the broker's durability, not the client's; the client-side guarantee is checked
    # on the SIGTERM restarts in test_reliability.py. Here every await completes and nothing
    # hangs; losses are reported.
    assert len(outcome) == N, report
    if not KILL:
        assert not lost, report
