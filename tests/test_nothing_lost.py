"""Regression tests for the "nothing lost, nothing stuck" paths: persistent-session messages,
subscriptions across disconnect/connect, awaitable callbacks, QoS held at the highest request,
refused cleartext secrets, split batches, fire-and-forget QoS 1, bounds on durations and wills,
refused re-subscriptions, policy-violation loops and AWS's ``Sensor/#`` rule."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any

import pytest

import awsiot_rs
from support import packets as P
from support.clients import make_client
from support.fake_broker import FakeBroker

FAST = awsiot_rs.Reconnect(min_delay=0.05, max_delay=0.2, jitter=False)

fake_client = functools.partial(make_client, keep_alive=30)


async def take(sub: awsiot_rs.Subscription, n: int, timeout: float = 5.0) -> list[awsiot_rs.Message]:
    out: list[awsiot_rs.Message] = []

    async def run() -> None:
        async for m in sub:
            out.append(m)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def eventually(check: Any, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- 1: persistent sessions, messages() before connect(), subscriptions across reconnects -------


async def test_stored_messages_of_a_persistent_session_reach_a_stream_opened_before_connect(plain_client, unique_topic):
    client_id = f"persist-{uuid.uuid4().hex[:10]}"
    first = plain_client(client_id=client_id, clean_session=False)
    async with first:
        kept = await first.subscribe(unique_topic, qos=1)  # dropping it would unsubscribe
    async with plain_client() as sender:
        for i in range(3):
            await sender.publish(unique_topic, f"stored-{i}", qos=1)
    del kept  # the first client is gone; the broker keeps its session
    again = plain_client(client_id=client_id, clean_session=False)
    stream = again.messages()  # before connect(): the stored messages need a taker
    result = await again.connect()
    try:
        assert result.session_present
        got = await take(stream, 3)
        assert [m.payload for m in got] == [b"stored-0", b"stored-1", b"stored-2"]
        assert all(m.qos == 1 for m in got)
        assert again.stats()["unrouted"] == 0
    finally:
        await again.disconnect()


async def test_messages_nobody_takes_are_counted_and_logged_not_silent(plain_client, unique_topic, caplog):
    client_id = f"unrouted-{uuid.uuid4().hex[:10]}"
    first = plain_client(client_id=client_id, clean_session=False)
    async with first:
        kept = await first.subscribe(unique_topic, qos=1)
    async with plain_client() as sender:
        for i in range(3):
            await sender.publish(unique_topic, f"m{i}", qos=1)
    del kept
    caplog.set_level(logging.WARNING, logger="awsiot_rs")
    again = plain_client(client_id=client_id, clean_session=False)
    async with again:
        await eventually(lambda: again.stats()["unrouted"] == 3)
        await again.publish(unique_topic + "/flush", b"x", qos=0)  # a wake-up flushes core logs
        await eventually(lambda: any("matched no subscription" in r.getMessage() for r in caplog.records))


async def test_subscriptions_and_streams_survive_disconnect_and_connect(plain_client, unique_topic):
    c = plain_client()
    got_by_callback: list[bytes] = []
    async with c:
        sub = await c.subscribe(unique_topic, qos=1)
        await c.subscribe(unique_topic, qos=1, callback=lambda m: got_by_callback.append(m.payload))
        stream = c.messages()
    assert [m async for m in sub] == [], "while disconnected an iteration ends"
    assert not sub.closed, "but the subscription stays"
    async with c:  # re-subscribed on connect
        async with plain_client() as sender:
            await sender.publish(unique_topic, b"after", qos=1)
        assert [m.payload for m in await take(sub, 1)] == [b"after"]
        assert [m.payload for m in await take(stream, 1)] == [b"after"]
        await eventually(lambda: got_by_callback == [b"after"])
        await sub.unsubscribe()
        assert [m async for m in sub] == []
        assert sub.closed


# -- 2: callables whose result is awaitable ------------------------------------------------------


async def test_objects_with_async_call_and_partials_of_async_functions_are_awaited_in_order(plain_client, unique_topic):
    seen: list[tuple[str, bytes]] = []

    class Handler:
        async def __call__(self, m: awsiot_rs.Message) -> None:
            await asyncio.sleep(0)
            seen.append(("obj", m.payload))

    async def tagged(tag: str, m: awsiot_rs.Message) -> None:
        await asyncio.sleep(0)
        seen.append((tag, m.payload))

    async with plain_client() as c:
        await c.subscribe(unique_topic + "/a", qos=1, callback=Handler())
        await c.subscribe(unique_topic + "/b", qos=1, callback=functools.partial(tagged, "partial"))
        for i in range(20):
            await c.publish(unique_topic + "/a", str(i), qos=1)
            await c.publish(unique_topic + "/b", str(i), qos=1)
        await eventually(lambda: len(seen) == 40)
    assert [p for t, p in seen if t == "obj"] == [str(i).encode() for i in range(20)]
    assert [p for t, p in seen if t == "partial"] == [str(i).encode() for i in range(20)]


# -- 3: QoS held at the highest request -----------------------------------------------------------


async def test_a_lower_qos_second_subscription_does_not_downgrade_the_first(plain_client, unique_topic):
    async with plain_client() as c, plain_client() as sender:
        high = await c.subscribe(unique_topic, qos=1)
        low = await c.subscribe(unique_topic, qos=0)
        await sender.publish(unique_topic, b"one", qos=1)
        assert (await take(high, 1))[0].qos == 1, "the broker still delivers at QoS 1"
        assert (await take(low, 1))[0].payload == b"one"
        await high.unsubscribe()  # the QoS 1 subscription goes: the broker subscription is lowered
        await sender.publish(unique_topic, b"two", qos=1)
        m = (await take(low, 1))[0]
        assert (m.payload, m.qos) == (b"two", 0)


# -- 4: secrets never in cleartext -----------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        awsiot_rs.SigV4Auth("us-east-1", access_key="AKIDEXAMPLE", secret_key="S3CRET"),
        awsiot_rs.CustomAuth(authorizer_name="auth", token_key_name="tok", token="T0KEN", signature="SIG"),
        awsiot_rs.CustomAuth(authorizer_name="auth", token_key_name="tok", token="T0KEN", websockets=True),
    ],
)
def test_tls_false_is_refused_with_sigv4_and_custom_auth(auth):
    with pytest.raises(awsiot_rs.ConfigError, match="cleartext") as info:
        awsiot_rs.Client("localhost", tls=False, auth=auth)
    for secret in ("S3CRET", "T0KEN", "SIG"):
        assert secret not in str(info.value)


# -- 5: batches split by a full submission queue ---------------------------------------------------


async def test_a_publish_many_larger_than_the_submission_queue_completes(plain_client, unique_topic):
    async with plain_client() as c:
        await asyncio.wait_for(c.publish_many([(unique_topic, b"x")] * 200_000, qos=1), 120)
        await eventually(lambda: c.stats()["inflight"] == 0)  # the counter follows the acks


async def test_a_failed_batch_names_the_items_that_failed():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        c = fake_client(fb.port)
        await c.connect()
        batch = asyncio.ensure_future(c.publish_many([("t", str(i)) for i in range(10)], qos=1))
        await fb.wait_for(lambda: len(fb.held) == 10)
        await c.disconnect()
        with pytest.raises(awsiot_rs.ClientClosedError, match=r"10 message\(s\) of this publish_many failed, at index 0, 1"):
            await asyncio.wait_for(batch, 5)


# -- 8: publish_nowait QoS 1 is kept until acknowledged ----------------------------------------------


async def test_publish_nowait_qos1_is_not_dropped_after_operation_timeout():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        async with fake_client(fb.port, operation_timeout=0.3) as c:
            c.publish_nowait("t", b"keep me", qos=1)
            await fb.wait_for(lambda: len(fb.held) == 1)
            await asyncio.sleep(0.8)
            assert c.stats()["dropped"] == 0
            assert c.stats()["inflight"] == 1
            fb.release(fb.held[0])
            await eventually(lambda: c.stats()["inflight"] == 0)
            assert c.stats()["dropped"] == 0


# -- 12, 13: bounds checked at construction, no panic -------------------------------------------------


def test_a_will_payload_beyond_a_16_bit_length_is_refused_at_construction():
    with pytest.raises(awsiot_rs.PayloadTooLarge):
        awsiot_rs.Client("localhost", tls=False, limits="mqtt", will=awsiot_rs.Will("w", b"x" * 65_536))
    awsiot_rs.Client("localhost", tls=False, limits="mqtt", will=awsiot_rs.Will("w", b"x" * 65_535))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"operation_timeout": 1e19},
        {"connect_timeout": 1e19},
        {"reconnect": awsiot_rs.Reconnect(min_delay=1e19, max_delay=1e19)},
        {"reconnect": awsiot_rs.Reconnect(max_delay=1e19)},
        {"reconnect": awsiot_rs.Reconnect(reset_after=1e19)},
        {"policy_violation": awsiot_rs.PolicyViolationCheck(window=1e19)},
    ],
)
def test_huge_durations_are_refused_not_panicking(kwargs):
    with pytest.raises(awsiot_rs.ConfigError, match="maximum|one year"):
        awsiot_rs.Client("localhost", tls=False, limits="mqtt", **kwargs)


async def test_a_huge_request_timeout_is_refused_not_panicking(plain_client):
    async with plain_client() as c:
        with pytest.raises(awsiot_rs.ConfigError, match="maximum"):
            await c.shadow("thing").get(timeout=1e19)
        assert c.is_connected


# -- 15: reconnect races and refused re-subscriptions ----------------------------------------------


async def test_reconnecting_right_after_disconnect_never_inherits_the_old_state(plain_client, unique_topic):
    c = plain_client()
    for _ in range(50):
        await c.connect()
        assert c.is_connected
        await c.publish(unique_topic, b"x", qos=1)
        await c.disconnect()
        assert not c.is_connected


async def test_cancelled_connect_then_connect_again_runs_one_driver():
    async with FakeBroker() as fb:
        c = fake_client(fb.port)
        for _ in range(20):
            task = asyncio.ensure_future(c.connect())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await c.connect()
            await c.publish("t", b"x", qos=1)
            assert c.is_connected
            await c.disconnect()


async def test_a_refused_resubscription_ends_the_subscription_with_subscribe_error():
    async with FakeBroker() as fb:
        c = fake_client(fb.port, reconnect=FAST)
        async with c:
            sub = await c.subscribe("room/+", qos=1)
            fb.suback_codes = lambda fs: [0x80 for _ in fs]  # the policy changed meanwhile
            for w in list(fb._writers):
                w.close()  # connection lost: the new session needs the filter again
            with pytest.raises(awsiot_rs.SubscribeError, match="room"):
                await asyncio.wait_for(sub.__anext__(), 5)
            assert sub.closed


# -- 16: policy-violation loops --------------------------------------------------------------------


class ClosingBroker(FakeBroker):
    """Closes the connection on a PUBLISH or SUBSCRIBE to a forbidden topic, as AWS IoT does
    over MQTT 3.1.1 when the policy forbids it."""

    forbidden = "forbidden/x"

    def _answer(self, p: P.Packet, writer: asyncio.StreamWriter) -> None:
        if (p.type == P.PUBLISH and p.topic == self.forbidden) or (
            p.type == P.SUBSCRIBE and any(f == self.forbidden for f, _ in p.filters)
        ):
            writer.close()
            return
        super()._answer(p, writer)


async def test_a_publish_the_policy_forbids_fails_instead_of_looping_and_the_rest_flows():
    async with ClosingBroker() as fb:
        async with fake_client(fb.port, reconnect=FAST) as c:
            bad = asyncio.ensure_future(c.publish("forbidden/x", b"no", qos=1))
            good = asyncio.ensure_future(c.publish("ok/y", b"yes", qos=1))
            with pytest.raises(awsiot_rs.PolicyViolationSuspected) as info:
                await asyncio.wait_for(bad, 10)
            assert (info.value.topic, info.value.operation) == ("forbidden/x", "publish")
            assert isinstance(info.value, awsiot_rs.ServiceError)
            await asyncio.wait_for(good, 10)
            await asyncio.wait_for(c.publish("ok/z", b"still", qos=1), 5)
            forbidden = [p for p in fb.of_type(P.PUBLISH) if p.topic == "forbidden/x"]
            assert len(forbidden) == 3, "sent three times (default count), then given up"


async def test_a_subscribe_the_policy_forbids_fails_with_policy_violation_suspected():
    async with ClosingBroker() as fb:
        async with fake_client(fb.port, reconnect=FAST, policy_violation=awsiot_rs.PolicyViolationCheck(count=2)) as c:
            with pytest.raises(awsiot_rs.PolicyViolationSuspected) as info:
                await asyncio.wait_for(c.subscribe("forbidden/x"), 10)
            assert info.value.operation == "subscribe"
            sub = await asyncio.wait_for(c.subscribe("ok/y"), 5)
            assert sub.granted_qos == [1]


async def test_the_policy_check_can_be_turned_off():
    async with ClosingBroker() as fb:
        async with fake_client(fb.port, reconnect=FAST, policy_violation=None, operation_timeout=1.5) as c:
            with pytest.raises(awsiot_rs.OperationTimeout):
                await c.publish("forbidden/x", b"no", qos=1)


# -- 7 (driver part): the per-connection subscription cap ------------------------------------------


async def test_the_subscription_cap_refuses_a_subscribe_beyond_it_with_a_clear_error(plain_client, unique_topic):
    async with plain_client(max_subscriptions=3) as c:
        kept = [await c.subscribe([f"{unique_topic}/{i}" for i in range(3)])]
        kept.append(await c.subscribe(f"{unique_topic}/0", qos=0))  # the same filter: no new one
        with pytest.raises(awsiot_rs.SubscribeError, match="cap is 3") as info:
            await c.subscribe(f"{unique_topic}/3")
        assert info.value.filters == [f"{unique_topic}/3"]


def test_the_aws_subscription_cap_cannot_be_raised_beyond_aws_quota():
    with pytest.raises(awsiot_rs.ConfigError, match="max_subscriptions"):
        awsiot_rs.Client("example-ats.iot.us-east-1.amazonaws.com", max_subscriptions=51)


# -- 17: AWS's trailing-# rule -----------------------------------------------------------------------


async def test_with_aws_limits_a_trailing_hash_does_not_route_the_parent_topic(plain_client, unique_topic):
    async with plain_client(limits="aws") as c, plain_client() as sender:
        sub = await c.subscribe(f"{unique_topic}/#", qos=1)
        await sender.publish(unique_topic, b"parent", qos=1)
        await sender.publish(f"{unique_topic}/child", b"child", qos=1)
        got = await take(sub, 1)
        assert got[0].payload == b"child"
        await eventually(lambda: c.stats()["unrouted"] == 1)
        assert sub.pending() == 0


async def test_a_service_request_waiting_for_its_answer_fails_at_disconnect(plain_client):
    c = plain_client()
    await c.connect()
    waiting = asyncio.ensure_future(c.shadow(f"nobody-answers-{uuid.uuid4().hex[:8]}").get(timeout=60))
    await eventually(lambda: c.stats()["messages_sent"] == 1)  # the request went out
    await c.disconnect()
    with pytest.raises(awsiot_rs.ClientClosedError):
        await asyncio.wait_for(waiting, 5)
