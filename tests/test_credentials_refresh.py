"""SigV4 credentials the endpoint rejects are never reused: after HTTP 401/403 on the
WebSocket upgrade the credentials provider is asked again, even when the rejected
credentials claim to be valid for hours."""

from __future__ import annotations

import asyncio
import time

import pytest

import awsiot_rs
from support.clients import make_client
from support.fronts import WsFront

pytestmark = [pytest.mark.broker, pytest.mark.security]

FAR = time.time() + 6 * 3600  # far from the 5-minute refresh margin


def ws_client(front: WsFront, pki, auth, **kw):  # type: ignore[no-untyped-def]
    reconnect = awsiot_rs.Reconnect(min_delay=0.1, max_delay=0.2, jitter=False)
    return make_client(front.port, pki, auth=auth, **{"reconnect": reconnect, **kw})


def provider_of(keys: list[tuple[str, str]], calls: list[str]):  # type: ignore[no-untyped-def]
    """Answers with ``keys`` in order (the last one forever), each valid for hours."""

    async def provider() -> awsiot_rs.Credentials:
        akid, secret = keys[min(len(calls), len(keys) - 1)]
        calls.append(akid)
        return awsiot_rs.Credentials(akid, secret, session_token="S3NTINEL-STS", expiry=FAR)

    return provider


async def wait_until(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


async def test_rejected_credentials_are_fetched_again_on_the_reconnect_attempt(broker, pki):
    creds = {"AKIDONE": "secret-one"}
    calls: list[str] = []
    provider = provider_of([("AKIDONE", "secret-one"), ("AKIDTWO", "secret-two")], calls)
    connects: list[awsiot_rs.ConnectEvent] = []
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials=creds) as front:
        c = ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=provider), on_connect=connects.append)
        async with c:
            assert calls == ["AKIDONE"]
            # AKIDONE is revoked although it claims hours of validity; AKIDTWO is the new key.
            creds["AKIDTWO"] = "secret-two"
            front.revoke("AKIDONE")
            await front.drop_all()
            reconnected = await wait_until(lambda: len(connects) == 2)
            verdicts = [(a.akid, a.verdict) for a in front.attempts]
            assert reconnected, f"never reconnected; attempts: {verdicts[:6]}, provider calls: {calls}"
            assert connects[-1].reconnect and c.is_connected
    assert verdicts == [("AKIDONE", "ok"), ("AKIDONE", "revoked"), ("AKIDTWO", "ok")], verdicts
    assert calls == ["AKIDONE", "AKIDTWO"], "asked once more, after the 403 (not on every attempt)"


async def test_a_failed_connect_with_rejected_credentials_asks_the_provider_again(broker, pki):
    calls: list[str] = []
    provider = provider_of([("AKIDWRONG", "S3NTINEL-SAK"), ("AKIDGOOD", "good")], calls)
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials={"AKIDGOOD": "good"}) as front:
        c = ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=provider), reconnect=None)
        with pytest.raises(awsiot_rs.AuthError, match="HTTP 403"):
            await c.connect()
        await c.connect()
        try:
            assert c.is_connected
        finally:
            await c.disconnect()
        assert [a.akid for a in front.attempts] == ["AKIDWRONG", "AKIDGOOD"]
    assert calls == ["AKIDWRONG", "AKIDGOOD"]


async def test_credentials_accepted_by_the_endpoint_stay_cached(broker, pki):
    """The invalidation is only for rejections: a plain reconnect reuses the cached keys."""
    creds = {"AKIDONE": "secret-one"}
    calls: list[str] = []
    connects: list[awsiot_rs.ConnectEvent] = []
    provider = provider_of([("AKIDONE", "secret-one")], calls)
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials=creds) as front:
        c = ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=provider), on_connect=connects.append)
        async with c:
            await front.drop_all()
            assert await wait_until(lambda: len(connects) == 2)
    assert calls == ["AKIDONE"]


async def test_a_provider_that_never_answers_times_the_attempt_out_and_the_next_one_asks_again(broker, pki):
    """The attempt gives up at connect_timeout; a later attempt asks again and connects."""
    calls: list[int] = []
    never = asyncio.Event()

    async def provider() -> awsiot_rs.Credentials:
        calls.append(1)
        if len(calls) == 1:
            await never.wait()  # never answers
        return awsiot_rs.Credentials("AKIDGOOD", "good", expiry=FAR)

    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials={"AKIDGOOD": "good"}) as front:
        c = ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=provider), reconnect=None, connect_timeout=0.3)
        with pytest.raises(awsiot_rs.AwsIotError):
            await c.connect()
        await c.connect()
        try:
            assert c.is_connected
        finally:
            await c.disconnect()
        never.set()  # the late answer to the abandoned request is ignored
        await asyncio.sleep(0.05)
    assert len(calls) == 2
