"""HTTP CONNECT proxies: mutual TLS and SigV4 WebSocket end to end through Debian's tinyproxy,
Basic credentials, refusals naming the proxy, ``proxy="env"`` with ``NO_PROXY``, reconnects
through the proxy again, and the proxy password kept out of every output."""

from __future__ import annotations

import asyncio
import logging

import pytest

import awsiot_rs
from support.clients import make_client
from support.fronts import WsFront
from support.http_proxy import ScriptedProxy, Tinyproxy

SECRET = "S3NTINEL-PROXY-PW"


@pytest.fixture
def tinyproxy(tmp_path):  # type: ignore[no-untyped-def]
    with Tinyproxy(tmp_path) as proxy:
        yield proxy


@pytest.fixture
def tinyproxy_auth(tmp_path):  # type: ignore[no-untyped-def]
    with Tinyproxy(tmp_path, user="dev", password=SECRET) as proxy:
        yield proxy


async def round_trip(c: awsiot_rs.Client, topic: str) -> None:
    sub = await c.subscribe(topic, qos=1)
    await c.publish(topic, b"through the proxy", qos=1)
    assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == b"through the proxy"


async def test_mutual_tls_goes_end_to_end_through_tinyproxy(broker, pki, tinyproxy, unique_topic):
    async with make_client(broker.mtls_port, pki, proxy=tinyproxy.url()) as c:
        await round_trip(c, unique_topic)
    assert f"CONNECT localhost:{broker.mtls_port}" in tinyproxy.log_text()


async def test_sigv4_websocket_goes_through_tinyproxy(broker, pki, tinyproxy, unique_topic):
    creds = {"AKIDPROXY": "secret-key"}
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials=creds) as front:
        auth = awsiot_rs.SigV4Auth("us-east-1", access_key="AKIDPROXY", secret_key="secret-key")
        async with make_client(front.port, pki, auth=auth, proxy=tinyproxy.url()) as c:
            await round_trip(c, unique_topic)
        assert front.attempts and front.attempts[0].verdict == "ok"
    assert f"CONNECT localhost:{front.port}" in tinyproxy.log_text()


async def test_basic_credentials_open_the_tunnel_and_a_wrong_password_is_a_connect_error(
    broker, pki, tinyproxy_auth, unique_topic, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG, logger="awsiot_rs")
    log_file = tmp_path / "traffic.log"
    good = make_client(broker.mtls_port, pki, proxy=tinyproxy_auth.url("dev", SECRET), log_file=log_file)
    assert SECRET not in repr(good)
    async with good as c:
        await round_trip(c, unique_topic)
    bad = make_client(broker.mtls_port, pki, proxy=tinyproxy_auth.url("dev", "wrong-" + SECRET), reconnect=None)
    with pytest.raises(awsiot_rs.ConnectError, match="requires authentication") as info:
        await bad.connect()
    message = str(info.value)
    assert f"127.0.0.1:{tinyproxy_auth.port}" in message, message
    outputs = [message, repr(bad), caplog.text, log_file.read_text()]
    assert all(SECRET not in text for text in outputs)


@pytest.mark.parametrize(
    "status, text",
    [
        ("HTTP/1.1 403 Forbidden", "HTTP 403"),
        ("HTTP/1.1 502 Bad Gateway", "HTTP 502"),
        ("HTTP/1.1 407 Proxy Authentication Required", "requires authentication"),
    ],
)
async def test_proxy_refusals_raise_connect_error_naming_the_proxy(broker, pki, status, text):
    async with ScriptedProxy(status) as proxy:
        c = make_client(broker.mtls_port, pki, proxy=proxy.url(f"u:{SECRET}@"), reconnect=None)
        with pytest.raises(awsiot_rs.ConnectError, match=text) as info:
            await c.connect()
        assert f"127.0.0.1:{proxy.port}" in str(info.value) and SECRET not in str(info.value)
        assert proxy.requests[0].startswith(f"CONNECT localhost:{broker.mtls_port} HTTP/1.1\r\n")


async def test_reconnects_go_through_the_proxy_again(broker, pki, unique_topic):
    async with ScriptedProxy() as proxy:
        reconnect = awsiot_rs.Reconnect(min_delay=0.05, max_delay=0.2, jitter=False)
        async with make_client(broker.mtls_port, pki, proxy=proxy.url(), reconnect=reconnect, limits="mqtt") as c:
            await round_trip(c, unique_topic)
            proxy.cut()
            for _ in range(200):
                if c.stats()["reconnects"] >= 1 and c.is_connected:
                    break
                await asyncio.sleep(0.02)
            assert c.stats()["reconnects"] >= 1
            await round_trip(c, unique_topic + "/again")
        assert len(proxy.requests) >= 2, "the reconnect asked the proxy for a new tunnel"


async def test_proxy_env_reads_https_proxy_and_honours_no_proxy(broker, pki, tinyproxy, monkeypatch, unique_topic):
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with make_client(broker.mtls_port, pki, proxy="env") as c:
        await round_trip(c, unique_topic)
    assert f"CONNECT localhost:{broker.mtls_port}" in tinyproxy.log_text()
    # NO_PROXY names the endpoint: direct, even though HTTPS_PROXY points nowhere useful.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    async with make_client(broker.mtls_port, pki, proxy="env") as c:
        await round_trip(c, unique_topic + "/direct")


def test_bad_proxy_urls_are_config_errors_without_the_password():
    for bad in ("socks5://h:1", "http://h", f"http://u:{SECRET}@h"):
        with pytest.raises(awsiot_rs.ConfigError, match="proxy") as info:
            awsiot_rs.Client("localhost", proxy=bad)
        assert SECRET not in str(info.value)
