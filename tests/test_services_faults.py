"""The client's request engine against a Device Shadow service that misbehaves on purpose: the
Python fake of tests/support/aws_fakes.py on the session Mosquitto. Behaviour of the services
themselves is tested against the embedded AWS IoT Core in tests/test_services.py."""

from __future__ import annotations

import asyncio
import functools
import uuid

import pytest

import awsiot_rs
from awsiot_rs import topics
from support.aws_fakes import ShadowService
from support.clients import make_client

pytestmark = pytest.mark.broker


#: Clients of the session broker's plain listener: ``client(broker.port, **overrides)``.
client = functools.partial(make_client, operation_timeout=5)


@pytest.fixture
def thing() -> str:
    return f"thing-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shadow_service(broker, thing):  # type: ignore[no-untyped-def]
    svc = ShadowService("127.0.0.1", broker.port, thing_names=[thing])
    svc.start()
    yield svc
    svc.stop()


# On the fake: the core never answers twice nor with another request's token (duplicate_responses, wrong_token_first).
async def test_duplicates_and_foreign_tokens_are_ignored(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow = c.shadow(thing)
        shadow_service.duplicate_responses = True
        shadow_service.wrong_token_first = True
        d1 = await shadow.update(reported={"a": 1})
        d2 = await shadow.update(reported={"a": 2})
        assert (d1["version"], d2["version"]) == (1, 2)
        assert d1["clientToken"] != d2["clientToken"]
        tokens = [r.client_token for r in shadow_service.requests]
        assert tokens == [d1["clientToken"], d2["clientToken"]], "each update was sent once"
        # The first update's answer came twice, after one with a foreign token (all of them were
        # published before the second request was handled: the fake answers in order).
        accepted = [r.payload.get("clientToken") for r in shadow_service.responses
                    if r.topic.endswith("/update/accepted")]
        first = accepted[:accepted.index(d1["clientToken"]) + 2]
        assert first[-2:] == [d1["clientToken"]] * 2 and first[0].startswith("wrong-")


# On the fake: the core always answers (drop_next).
async def test_no_answer_times_out_and_the_client_keeps_working(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow_service.drop_next(1)
        with pytest.raises(awsiot_rs.OperationTimeout):
            await asyncio.wait_for(c._request(shadow_service_topic(thing), {"state": {"reported": {"a": 1}}},
                                              shadow_service_topic(thing) + "/accepted", shadow_service_topic(thing) + "/rejected",
                                              timeout=0.5), 5)
        assert (await c.shadow(thing).update(reported={"a": 2}))["version"] == 1


def shadow_service_topic(thing: str) -> str:
    return topics.shadow(thing, "update")
