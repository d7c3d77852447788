"""Every configuration bound, once, through the public API. Each is checked in one place (the
Rust core's ``ClientOptions::build``); the error is ``ConfigError`` (or a subclass) raised at
construction, naming the option and what it allows, never a secret."""

from __future__ import annotations

import pytest

import awsiot_rs
from awsiot_rs import ConfigError, CustomAuth, OfflineQueue, PolicyViolationCheck, Reconnect, SigV4Auth, Will

SECRET = "S3NTINEL"


def local(**kw: object) -> awsiot_rs.Client:
    """A plain-MQTT client for a local broker, with ``kw`` on top."""
    opts: dict[str, object] = {"tls": False, "limits": "mqtt"}
    opts.update(kw)
    return awsiot_rs.Client("localhost", **opts)  # type: ignore[arg-type]


def aws(**kw: object) -> awsiot_rs.Client:
    """A client with the AWS limits (the default), with ``kw`` on top."""
    return awsiot_rs.Client("example-ats.iot.us-east-1.amazonaws.com", **kw)  # type: ignore[arg-type]


def custom(**kw: object) -> CustomAuth:
    opts: dict[str, object] = {"authorizer_name": "Auth", "token_key_name": "tok", "token": SECRET, "signature": SECRET}
    opts.update(kw)
    return CustomAuth(**opts)  # type: ignore[arg-type]


REFUSED = [
    # endpoint, port, client id, session
    (lambda: awsiot_rs.Client("host:8883"), ConfigError, "endpoint"),
    (lambda: local(port=0), ConfigError, r"port must be 1\.\.=65535, not 0"),
    (lambda: local(port=65536), ConfigError, r"port must be 1\.\.=65535, not 65536"),
    (lambda: aws(client_id="x" * 129), ConfigError, "at most 128 bytes"),
    (lambda: aws(client_id="$x"), ConfigError, r"must not start with '\$'"),
    (lambda: local(client_id=""), ConfigError, "client_id must not be empty"),
    (lambda: local(clean_session=False), ConfigError, "explicit client_id"),
    (lambda: local(limits="strict"), ConfigError, 'limits must be "aws" or "mqtt"'),
    # keep-alive: AWS 30..1200 s, MQTT 0..65535 whole seconds
    (lambda: aws(keep_alive=29), ConfigError, "30 to 1200"),
    (lambda: aws(keep_alive=1201), ConfigError, "30 to 1200"),
    (lambda: local(keep_alive=65536), ConfigError, "0 to 65535"),
    (lambda: local(keep_alive=1.5), ConfigError, "whole number"),
    (lambda: local(keep_alive=-1), ConfigError, "keep_alive must be a finite number of seconds >= 0"),
    # durations: > 0 (timeouts), at most one year, finite
    (lambda: local(operation_timeout=0), ConfigError, "operation_timeout must be greater than 0"),
    (lambda: local(connect_timeout=float("nan")), ConfigError, "connect_timeout must be a finite number"),
    (lambda: local(connect_timeout=4e7), ConfigError, "one year"),
    # in-flight: AWS's quota of 100 (Python used to allow 65535 here), else 16-bit packet ids
    (lambda: aws(inflight=0), ConfigError, r"inflight must be 1\.\.=100"),
    (lambda: aws(inflight=101), ConfigError, r"inflight must be 1\.\.=100 with limits=\"aws\""),
    (lambda: local(inflight=65536), ConfigError, r"inflight must be 1\.\.=65535, not 65536"),
    # subscriptions held: AWS's quota of 50, else at least 1
    (lambda: aws(max_subscriptions=51), ConfigError, r"max_subscriptions must be 1\.\.=50"),
    (lambda: local(max_subscriptions=0), ConfigError, "max_subscriptions must be at least 1, not 0"),
    # will
    (lambda: local(will=Will("w", b"", qos=2)), ConfigError, "QoS 2 is not supported"),
    (lambda: local(will=Will("w/#")), awsiot_rs.TopicError, "will"),
    (lambda: local(will=Will("w", b"x" * 65536)), awsiot_rs.PayloadTooLarge, "65535"),
    (lambda: aws(will=Will("w", b"x" * (128 * 1024 + 1))), awsiot_rs.PayloadTooLarge, "131073"),
    # reconnect (a negative max_attempts used to escape as OverflowError)
    (lambda: local(reconnect=Reconnect(min_delay=5, max_delay=1)), ConfigError, "max_delay"),
    (lambda: local(reconnect=Reconnect(min_delay=0)), ConfigError, "min_delay must be greater than 0"),
    (lambda: local(reconnect=Reconnect(reset_after=-1)), ConfigError, "Reconnect.reset_after"),
    (lambda: local(reconnect=Reconnect(max_attempts=-1)), ConfigError, r"Reconnect.max_attempts must be 0\.\.="),
    # offline queue, policy check
    (lambda: local(offline_queue=OfflineQueue(limit=-1)), ConfigError, "OfflineQueue.limit must be at least 0"),
    (lambda: local(policy_violation=PolicyViolationCheck(count=0)), ConfigError, "PolicyViolationCheck.count"),
    (lambda: local(policy_violation=PolicyViolationCheck(window=0)), ConfigError, "PolicyViolationCheck.window"),
    # TLS and ALPN
    (lambda: awsiot_rs.Client("localhost", tls=False, ca=b"x"), ConfigError, "tls=False cannot be combined with ca"),
    (lambda: aws(ca=b"garbage"), ConfigError, "CA file"),
    (lambda: aws(alpn=[""]), ConfigError, "alpn must be a list of protocol names of 1 to 255 bytes"),
    (lambda: aws(alpn="mqtt"), ConfigError, "alpn must be a list"),
    # auth objects: checked where they are built
    (lambda: SigV4Auth("US East", access_key="a", secret_key="b"), ConfigError, "region must look like 'us-east-1'"),
    (lambda: custom(credentials_in="body"), ConfigError, "credentials_in must be"),
    (lambda: custom(token_key_name=None), ConfigError, "token and token_key_name go together"),
    (lambda: custom(query={"q": "v"}), ConfigError, "need websockets=True"),
    (lambda: custom(websockets=True, headers={"bad header": SECRET}), ConfigError, "not a valid HTTP header name"),
    (lambda: custom(websockets=True, token=SECRET + "\n"), ConfigError, "visible ASCII"),
    # ... and with the rest of the configuration
    (lambda: awsiot_rs.Client("h", tls=False, auth=custom()), ConfigError, "tls=False.*cleartext"),
    (lambda: aws(auth=custom(username="a"), username="b"), ConfigError, "user name either in CustomAuth or in Client"),
    (lambda: aws(auth=custom(password=SECRET), password=SECRET), ConfigError, "password either in CustomAuth or in Client"),
]


@pytest.mark.parametrize(("build", "exc", "text"), REFUSED)
def test_each_bound_is_refused_at_construction_naming_what_is_allowed(build, exc, text):
    with pytest.raises(exc, match=text) as info:
        build()
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"port": "1883"}, "port must be an integer, not str"),
        ({"inflight": True}, "inflight must be an integer, not bool"),
        ({"keep_alive": "30"}, "keep_alive must be a number of seconds, not str"),
        ({"reconnect": Reconnect(min_delay="1")}, "Reconnect.min_delay must be a number of seconds, not str"),  # type: ignore[arg-type]
        ({"offline_queue": OfflineQueue(limit=1.5)}, "OfflineQueue.limit must be an integer, not float"),  # type: ignore[arg-type]
        ({"client_id": 7}, "client_id must be a str or None, not int"),
        ({"limits": None}, 'limits must be "aws" or "mqtt"'),
        ({"log_file": 3}, "log_file must be a path or None"),
        ({"offline_queue": None}, "offline_queue must be OfflineQueue, not NoneType"),
        ({"will": ("t", b"")}, "will must be Will or None, not tuple"),
        ({"auth": "token"}, "auth must be MtlsAuth or SigV4Auth or CustomAuth or None, not str"),
        ({"on_connect": 3}, "on_connect must be callable"),
    ],
)
def test_a_wrong_type_is_a_config_error_naming_the_argument(kwargs, text):
    with pytest.raises(ConfigError, match=text):
        local(**kwargs)


@pytest.mark.parametrize("kwargs", [{"port": 2**70}, {"inflight": 2**70}, {"port": -(2**70)}, {"keep_alive": 10**400}])
def test_integers_beyond_64_bits_are_refused_as_config_errors(kwargs):
    with pytest.raises(ConfigError, match="or more|or less|finite"):
        local(**kwargs)


def test_the_bounds_that_used_to_disagree_follow_the_core():
    # inflight: Python allowed 1..65535 whatever the limits; the core allows 100 on AWS.
    with pytest.raises(ConfigError, match="inflight"):
        aws(inflight=1000)
    local(inflight=65535)
    # PolicyViolationCheck.count: Python capped it at 1000; the core takes any count >= 1.
    local(policy_violation=PolicyViolationCheck(count=5000))
    # max_subscriptions: Python took any count >= 1; the core keeps AWS's 50 on AWS.
    aws(max_subscriptions=50)
    local(max_subscriptions=1_000_000)
    # Reconnect.max_attempts: a negative count raised OverflowError; now ConfigError (above).


def test_the_edges_of_each_range_are_accepted():
    aws(keep_alive=30, inflight=1, max_subscriptions=1, client_id="x" * 128)
    aws(keep_alive=1200, inflight=100, port=1)
    local(keep_alive=0, port=65535, offline_queue=OfflineQueue(limit=0), reconnect=None, policy_violation=None)
    local(reconnect=Reconnect(max_attempts=2**32 - 1), will=Will("w", b"x" * 65535))


@pytest.mark.parametrize(
    ("kwargs", "port"),
    [
        ({}, 8883),
        ({"tls": False}, 1883),
        ({"auth": SigV4Auth("us-east-1", access_key="a", secret_key="b")}, 443),
        ({"auth": CustomAuth(authorizer_name="a")}, 443),
        ({"port": 8443}, 8443),
    ],
)
def test_the_default_port_follows_the_auth_and_tls(kwargs, port):
    c = awsiot_rs.Client("localhost", **kwargs)
    assert f"port={port} " in repr(c)


def test_queue_sizes_are_at_least_one():
    c = local()
    with pytest.raises(ConfigError, match="queue_size"):
        c.messages(queue_size=0)
