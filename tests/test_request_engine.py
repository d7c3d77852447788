"""The correlated request/response engine behind shadow, fleet provisioning and jobs:
one pair's failure stays with that pair, and the response subscriptions the engine holds stay
bounded (idle pairs are unsubscribed). Real peers on loopback: the scripted fake broker
playing the service, or mosquitto with the AWS service fakes."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid

import pytest

import awsiot_rs
from support import packets as P
from support.aws_fakes import JobsService
from support.clients import make_client
from support.fake_broker import FakeBroker

#: The engine's bound on response topic pairs held at once (two filters each), kept below
#: AWS IoT's 50 subscriptions per connection.
MAX_PAIRS = 20
#: How long a response pair stays subscribed with no request waiting on it.
IDLE_SECONDS = 30


class ServiceBroker(FakeBroker):
    """The fake broker, refusing (SUBACK 0x80) or never acknowledging SUBSCRIBEs of chosen
    filters, and able to play the service: :meth:`answer` publishes the accepted answer of a
    recorded request, with its clientToken, to the client."""

    def __init__(self, *, refuse: tuple[str, ...] = (), withhold: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.refuse = refuse
        self.withhold = withhold
        self.suback_codes = lambda fs: [0x80 if any(r in f for r in self.refuse) else q for f, q in fs]

    def _answer(self, p: P.Packet, writer: asyncio.StreamWriter) -> None:
        if p.type == P.SUBSCRIBE and any(w in f for f, _ in p.filters for w in self.withhold):
            return  # no SUBACK, ever
        super()._answer(p, writer)

    async def request_on(self, topic: str, n: int = 1) -> P.Packet:
        """The ``n``-th request PUBLISH received on ``topic``."""
        def found() -> list[P.Packet]:
            return [p for p in self.of_type(P.PUBLISH) if p.topic == topic]

        await self.wait_for(lambda: len(found()) >= n)
        return found()[n - 1]

    def answer(self, request: P.Packet, **doc: object) -> str:
        """Publishes ``{clientToken, **doc}`` on the request's ``/accepted`` topic; returns the token."""
        token = json.loads(request.payload)["clientToken"]
        body = json.dumps({"clientToken": token, **doc}).encode()
        self.send(P.publish(request.topic + "/accepted", body))
        return str(token)


fake_client = functools.partial(make_client, keep_alive=30)


# ------------------------------------------------------------------ (6) failures stay local


async def test_a_refused_response_subscription_fails_only_its_own_request():
    async with ServiceBroker(refuse=("forbidden",)) as fb:
        async with fake_client(fb.port) as c:
            waiting = asyncio.ensure_future(c.shadow("ok").get(timeout=10))
            request = await fb.request_on("$aws/things/ok/shadow/get")
            with pytest.raises(awsiot_rs.SubscribeError) as refused:
                await c.shadow("forbidden").get(timeout=10)
            assert "$aws/things/forbidden/shadow/get/accepted" in (refused.value.filters or [])
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the other pair's request still waits for its answer"
            token = fb.answer(request, state={"reported": {"a": 1}})
            doc = await asyncio.wait_for(waiting, 5)
            assert doc["clientToken"] == token and doc["state"] == {"reported": {"a": 1}}
            # The engine keeps working: the good pair again, and the refused pair is asked again
            # (refused again) instead of being stuck.
            again = asyncio.ensure_future(c.shadow("ok").get(timeout=10))
            fb.answer(await fb.request_on("$aws/things/ok/shadow/get", 2))
            await asyncio.wait_for(again, 5)
            with pytest.raises(awsiot_rs.SubscribeError):
                await c.shadow("forbidden").get(timeout=10)
            refused_subscribes = [
                p for p in fb.of_type(P.SUBSCRIBE) if any("forbidden" in f for f, _ in p.filters)
            ]
            assert len(refused_subscribes) == 2


async def test_a_timed_out_response_subscription_fails_only_its_own_request():
    async with ServiceBroker(withhold=("silent",)) as fb:
        async with fake_client(fb.port, operation_timeout=1) as c:
            waiting = asyncio.ensure_future(c.shadow("ok").get(timeout=10))
            request = await fb.request_on("$aws/things/ok/shadow/get")
            with pytest.raises(awsiot_rs.OperationTimeout, match="SUBSCRIBE"):
                await c.shadow("silent").get(timeout=10)
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the other pair's request still waits for its answer"
            token = fb.answer(request, state={})
            doc = await asyncio.wait_for(waiting, 5)
            assert doc["clientToken"] == token
            assert not [p for p in fb.of_type(P.PUBLISH) if "silent" in p.topic], (
                "no request goes out before its response topics are subscribed"
            )


# --------------------------------------------------------- (7) bounded, idle pairs released


#: Clients of the session broker's plain listener: ``client(broker.port, **overrides)``.
client = functools.partial(make_client, operation_timeout=5)


@pytest.fixture
def thing() -> str:
    return f"thing-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def jobs_service(broker, thing):  # type: ignore[no-untyped-def]
    svc = JobsService("127.0.0.1", broker.port, thing_names=[thing])
    svc.start()
    yield svc
    svc.stop()


def held_over_time(changes: list[tuple[str, list[str]]]) -> tuple[int, int, set[str]]:
    """Replays ``("+"|"-", filters)`` changes: (most filters held at once, UNSUBSCRIBEd count,
    filters held at the end)."""
    held: set[str] = set()
    most = 0
    unsubscribed = 0
    for sign, filters in changes:
        if sign == "+":
            held.update(filters)
        else:
            unsubscribed += len(filters)
            held.difference_update(filters)
        most = max(most, len(held))
    return most, unsubscribed, held


def broker_side_changes(log: str, client_id: str, prefix: str) -> list[tuple[str, list[str]]]:
    """The (UN)SUBSCRIBEs mosquitto logged for ``client_id`` under ``prefix``, in order."""
    changes: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in log.splitlines():
        text = line.split(": ", 1)[1] if ": " in line else line
        if text in (f"Received SUBSCRIBE from {client_id}", f"Received UNSUBSCRIBE from {client_id}"):
            current = ("+" if "UNSUB" not in text else "-", [])
            changes.append(current)
        elif current is not None and text.startswith("\t"):
            f = re.sub(r" \(QoS \d\)$", "", text[1:])
            if f.startswith(prefix):
                current[1].append(f)
        elif current is not None and text.startswith(f"{client_id} "):
            continue  # mosquitto's per-filter line ("<client> <qos> <filter>")
        else:
            current = None
    return [(s, fs) for s, fs in changes if fs]


def client_side_changes(log: str, prefix: str) -> list[tuple[str, list[str]]]:
    """The engine's (UN)SUBSCRIBEs in the traffic log (one line per packet, naming its first
    filter: the pair's ``/accepted`` topic; the ``/rejected`` one travels with it)."""
    changes = []
    for line in log.splitlines():
        m = re.search(r" OUT (SUBSCRIBE|UNSUBSCRIBE) +topic=\"([^\"]+)\"", line)
        if m and m.group(2).startswith(prefix):
            accepted = m.group(2)
            rejected = accepted.removesuffix("/accepted") + "/rejected"
            changes.append(("+" if m.group(1) == "SUBSCRIBE" else "-", [accepted, rejected]))
    return changes


async def test_thirty_job_ids_never_hold_more_than_the_bound_of_response_filters(
    broker, jobs_service, thing, tmp_path
):
    for i in range(30):
        jobs_service.add_job(thing, f"job-{i}", {"n": i})
    log = tmp_path / "traffic.log"
    client_id = f"engine-{uuid.uuid4().hex[:8]}"
    log_start = len(broker.log_text())
    prefix = f"$aws/things/{thing}/jobs/"
    async with client(broker.port, log_file=log, client_id=client_id) as c:
        jobs = c.jobs(thing)
        for i in range(30):
            ex = await jobs.describe(f"job-{i}")
            assert ex is not None and ex["jobId"] == f"job-{i}"
        again = await jobs.describe("job-0")
        assert again is not None and again["jobId"] == "job-0", "a released pair is subscribed again"
    assert await asyncio.to_thread(broker.wait_for_log, f"Client {client_id} disconnected", 5, start=log_start)
    most, unsubscribed, held = held_over_time(client_side_changes(log.read_text(), prefix))
    assert most == 2 * MAX_PAIRS, f"at most {MAX_PAIRS} response pairs at once (client side): {most}"
    assert unsubscribed == 2 * 11, "the 11 least recently used idle pairs were unsubscribed"
    assert f"{prefix}job-0/get/accepted" in held and f"{prefix}job-1/get/accepted" not in held
    broker_changes = broker_side_changes(broker.log_text()[log_start:], client_id, prefix)
    b_most, b_unsubscribed, b_held = held_over_time(broker_changes)
    assert (b_most, b_unsubscribed) == (2 * MAX_PAIRS, 2 * 11), "the broker saw the same"
    assert b_held == held


async def test_when_every_response_pair_is_busy_a_new_pair_fails_with_a_clear_error(
    broker, jobs_service, thing
):
    for i in range(MAX_PAIRS + 2):
        jobs_service.add_job(thing, f"job-{i}", {"n": i})
    jobs_service.delay(1.0)
    async with client(broker.port) as c:
        jobs = c.jobs(thing)
        results = await asyncio.gather(
            *(jobs.describe(f"job-{i}") for i in range(MAX_PAIRS + 1)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1, results
        assert isinstance(failed[0], awsiot_rs.QueueFullError)
        assert str(MAX_PAIRS) in str(failed[0]) and "busy" in str(failed[0]), str(failed[0])
        assert isinstance(results[-1], awsiot_rs.QueueFullError), "the request that needed a 21st pair"
        # Once the pairs are idle again, a new pair takes the least recently used one's place.
        jobs_service.delay(0)
        ex = await jobs.describe(f"job-{MAX_PAIRS + 1}")
        assert ex is not None and ex["jobId"] == f"job-{MAX_PAIRS + 1}"
        # Requests on a pair that is already held are never refused for the bound.
        jobs_service.delay(1.0)
        busy = await asyncio.gather(*(jobs.describe("job-3") for _ in range(5)))
        assert all(b is not None and b["jobId"] == "job-3" for b in busy)


@pytest.mark.slow
async def test_an_idle_response_pair_is_unsubscribed_after_the_idle_time(broker, jobs_service, thing):
    jobs_service.add_job(thing, "job-idle", {"n": 1})
    client_id = f"engine-{uuid.uuid4().hex[:8]}"
    log_start = len(broker.log_text())
    async with client(broker.port, client_id=client_id) as c:
        jobs = c.jobs(thing)
        assert await jobs.describe("job-idle") is not None
        loop = asyncio.get_running_loop()
        answered = loop.time()
        unsubscribe = f"Received UNSUBSCRIBE from {client_id}"
        early = await asyncio.to_thread(broker.wait_for_log, unsubscribe, IDLE_SECONDS - 5, start=log_start)
        assert not early, "not released while it may still be reused"
        found = await asyncio.to_thread(broker.wait_for_log, unsubscribe, 15, start=log_start)
        assert found, "the idle pair was unsubscribed"
        assert loop.time() - answered >= IDLE_SECONDS - 1
        tail = broker.log_text()[log_start:]
        assert f"$aws/things/{thing}/jobs/job-idle/get/accepted" in tail.split(unsubscribe, 1)[1]
        # A request after the release subscribes again and is answered.
        assert await jobs.describe("job-idle") is not None
