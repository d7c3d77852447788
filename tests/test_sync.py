"""awsiot_rs.sync: the blocking client against the session mosquitto, and its services (shadow,
fleet provisioning, jobs) against the embedded AWS IoT Core (``local_iot_core``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import awsiot_rs
from awsiot_rs import sync
from awsiot_rs.local import CoreEvents, LocalIoTCore

pytestmark = pytest.mark.broker

LOOP_THREAD = "awsiot_rs-sync-loop"


@pytest.fixture
def sync_client(broker):  # type: ignore[no-untyped-def]
    """Builds sync clients for the plain listener; disconnects those left connected."""
    made: list[sync.Client] = []

    def make(**kwargs: Any) -> sync.Client:
        opts: dict[str, Any] = {"port": broker.port, "tls": False, "limits": "mqtt", "operation_timeout": 5}
        opts.update(kwargs)
        c = sync.Client("127.0.0.1", **opts)
        made.append(c)
        return c

    yield make
    for c in made:
        c.disconnect()


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- every operation --------------------------------------------------------------------------


def test_with_connects_and_disconnects_and_the_properties_follow(sync_client, broker):
    c = sync_client(client_id=f"sync-{uuid.uuid4().hex[:8]}")
    assert not c.is_connected and c.client_id.startswith("sync-")
    start = len(broker.log_text())
    with c as entered:
        assert entered is c and c.is_connected and c.session_present is False
        assert set(c.stats()) >= {"messages_sent", "messages_received", "inflight", "unrouted"}
        assert "awsiot_rs.sync.Client" in repr(c)
    assert not c.is_connected
    assert broker.wait_for_log(f"Received DISCONNECT from {c.client_id}", start=start)
    result = c.connect()
    assert result.session_present is False and c.is_connected, "reusable after disconnect"
    c.disconnect()
    c.disconnect()  # nothing to do: no error


def test_publish_qos0_qos1_many_and_nowait_reach_a_subscriber(sync_client, unique_topic):
    with sync_client() as c:
        sub = c.subscribe(unique_topic + "/#", qos=1)
        assert sub.topic_filters == [unique_topic + "/#"] and sub.granted_qos == [1]
        c.publish(unique_topic + "/a", {"n": 1}, qos=1)
        c.publish(unique_topic + "/b", "text", qos=0)
        c.publish_many([(unique_topic + "/c", b"1"), (unique_topic + "/c", b"2")], qos=1)
        c.publish_nowait(unique_topic + "/d", b"nowait", qos=1)
        got = [sub.get(timeout=5) for _ in range(5)]
        assert [(m.topic.rsplit("/", 1)[1], m.payload) for m in got] == [
            ("a", b'{"n":1}'), ("b", b"text"), ("c", b"1"), ("c", b"2"), ("d", b"nowait"),
        ]
        assert got[0].json() == {"n": 1} and got[0].qos == 1
        assert wait_until(lambda: c.stats()["inflight"] == 0)
        assert c.stats()["messages_received"] >= 5


def test_retained_message_and_for_loop_iteration(sync_client, unique_topic):
    with sync_client() as c:
        c.publish(unique_topic, b"kept", qos=1, retain=True)
        sub = c.subscribe(unique_topic)
        for msg in sub:
            assert msg.retain and msg.payload == b"kept"
            break
        c.publish(unique_topic, b"", qos=1, retain=True)  # clear it


def test_get_times_out_with_timeout_error_and_loses_nothing(sync_client, unique_topic):
    with sync_client() as c:
        sub = c.subscribe(unique_topic)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError):
            sub.get(timeout=0)
        with pytest.raises(ValueError):
            sub.get(timeout=-1)
        got: list[bytes] = []
        for i in range(50):
            c.publish(unique_topic, str(i).encode(), qos=1)
            try:  # a zero timeout racing the arrival drops nothing
                got.append(sub.get(timeout=0).payload)
            except TimeoutError:
                pass
        while len(got) < 50:
            got.append(sub.get(timeout=5).payload)
        assert got == [str(i).encode() for i in range(50)]
        assert sub.pending() == 0


def test_iteration_ends_at_disconnect_and_the_subscription_resumes_after_connect(sync_client, unique_topic):
    c = sync_client()
    c.connect()
    sub = c.subscribe(unique_topic)
    c.publish(unique_topic, b"1", qos=1)
    assert wait_until(lambda: sub.pending() == 1)
    c.disconnect()
    assert [m.payload for m in sub] == [b"1"], "queued messages are taken, then the loop ends"
    with pytest.raises(awsiot_rs.ClientClosedError, match="not connected"):
        sub.get(timeout=1)
    c.connect()
    c.publish(unique_topic, b"2", qos=1)
    assert sub.get(timeout=5).payload == b"2", "re-subscribed by connect()"


def test_blocked_iteration_ends_when_another_thread_disconnects(sync_client, unique_topic):
    c = sync_client()
    c.connect()
    sub = c.subscribe(unique_topic)
    seen: list[Any] = []
    t = threading.Thread(target=lambda: seen.extend(sub))
    t.start()
    time.sleep(0.2)
    c.disconnect()
    t.join(5)
    assert not t.is_alive() and seen == []


def test_unsubscribe_in_every_form(sync_client, unique_topic):
    with sync_client() as c:
        a = c.subscribe(unique_topic + "/a")
        a.unsubscribe()
        with pytest.raises(awsiot_rs.ClientClosedError, match="has ended"):
            a.get(timeout=1)
        assert a.closed
        with c.subscribe(unique_topic + "/b") as b:
            pass
        assert list(b) == [] and b.closed
        s = c.subscribe(unique_topic + "/c")
        c.unsubscribe(unique_topic + "/c")
        assert list(s) == [] and s.closed
        s2 = c.subscribe([unique_topic + "/d", unique_topic + "/e"])
        c.unsubscribe([unique_topic + "/d", unique_topic + "/e"])
        assert list(s2) == []
        s3 = c.subscribe(unique_topic + "/f")
        s3.close_nowait()
        assert list(s3) == []


def test_messages_opened_before_connect_sees_everything(sync_client, unique_topic):
    c = sync_client()
    every = c.messages()
    with c:
        c.subscribe(unique_topic + "/+", callback=lambda m: None)
        c.publish(unique_topic + "/x", b"1", qos=1)
        m = every.get(timeout=5)
        assert m.topic == unique_topic + "/x"
        assert every.topic_filters == []
        assert "Subscription" in repr(every)


# -- callbacks -------------------------------------------------------------------------------


def test_callbacks_run_on_the_background_loop_thread(sync_client, unique_topic):
    threads: list[str] = []
    connected = threading.Event()
    c = sync_client(on_connect=lambda e: (threads.append(threading.current_thread().name), connected.set()))
    with c:
        done = threading.Event()

        def on_message(m: awsiot_rs.Message) -> None:
            threads.append(threading.current_thread().name)
            done.set()

        sub = c.subscribe(unique_topic, callback=on_message)
        c.publish(unique_topic, b"x", qos=1)
        assert done.wait(5) and connected.wait(5)
        sub.unsubscribe()
    assert threads == [LOOP_THREAD, LOOP_THREAD]


def test_a_blocking_call_from_a_callback_raises_a_clear_error(sync_client, unique_topic, caplog):
    caplog.set_level(logging.ERROR, logger="awsiot_rs")
    with sync_client() as c:
        errors: list[BaseException] = []
        nowait_ok = threading.Event()

        def careful(m: awsiot_rs.Message) -> None:
            try:
                c.publish(unique_topic + "/echo", b"blocked", qos=1)
            except RuntimeError as e:
                errors.append(e)
            c.publish_nowait(unique_topic + "/echo", b"nowait works", qos=1)  # never waits: allowed
            nowait_ok.set()

        def careless(m: awsiot_rs.Message) -> None:
            c.shadow("thing").get()  # raises: logged by the subscription, delivery continues

        echo = c.subscribe(unique_topic + "/echo")
        c.subscribe(unique_topic + "/careful", callback=careful)
        c.subscribe(unique_topic + "/careless", callback=careless)
        c.publish(unique_topic + "/careful", b"go", qos=1)
        c.publish(unique_topic + "/careless", b"go", qos=1)
        assert nowait_ok.wait(5)
        assert echo.get(timeout=5).payload == b"nowait works"
        assert len(errors) == 1 and "background event loop thread" in str(errors[0])
        assert "deadlock" in str(errors[0]) and "publish_nowait" in str(errors[0])
        assert wait_until(lambda: any(
            r.exc_info and isinstance(r.exc_info[1], RuntimeError) and "deadlock" in str(r.exc_info[1])
            for r in caplog.records
        )), "the uncaught error is logged, not a hang"
        c.publish(unique_topic + "/echo", b"still alive", qos=1)
        assert echo.get(timeout=5).payload == b"still alive"


def test_system_exit_in_a_callback_does_not_stop_the_shared_loop(sync_client, unique_topic, caplog):
    caplog.set_level(logging.ERROR, logger="awsiot_rs")
    with sync_client() as c:
        def leave(m: awsiot_rs.Message) -> None:
            raise SystemExit(3)

        c.subscribe(unique_topic + "/exit", callback=leave)
        sub = c.subscribe(unique_topic + "/after")
        c.publish(unique_topic + "/exit", b"bye", qos=1)
        c.publish(unique_topic + "/after", b"still here", qos=1)
        assert sub.get(timeout=5).payload == b"still here"
        assert any("escaped a callback" in r.getMessage() for r in caplog.records)


def test_an_async_callback_awaits_the_asyncio_client(sync_client, unique_topic):
    with sync_client() as c:
        echo = c.subscribe(unique_topic + "/echo")

        async def on_message(m: awsiot_rs.Message) -> None:
            await c.aio.publish(unique_topic + "/echo", m.payload, qos=1)

        c.subscribe(unique_topic + "/in", callback=on_message)
        c.publish(unique_topic + "/in", b"ping", qos=1)
        assert echo.get(timeout=5).payload == b"ping"


# -- the same exceptions ----------------------------------------------------------------------


def test_the_same_exceptions_as_the_asyncio_client(sync_client, broker):
    from support.mosquitto import free_ports

    with pytest.raises(awsiot_rs.ConfigError):
        sync.Client("127.0.0.1", port=0, tls=False)
    with pytest.raises(awsiot_rs.ConfigError):
        sync.Client("127.0.0.1", tls=False, auth=awsiot_rs.SigV4Auth("us-east-1", access_key="a", secret_key="b"))
    c = sync_client()
    with pytest.raises(awsiot_rs.ClientClosedError):
        c.publish("t", b"x", qos=1)
    with pytest.raises(awsiot_rs.ClientClosedError):
        c.subscribe("t")
    (closed_port,) = free_ports(1)
    refused = sync_client(port=closed_port, connect_timeout=2)
    with pytest.raises(awsiot_rs.ConnectError):
        refused.connect()
    with pytest.raises(awsiot_rs.ConnectError):
        with refused:
            pass
    with c:
        with pytest.raises(awsiot_rs.TopicError):
            c.publish("a/+/b", b"x")
        with pytest.raises(awsiot_rs.TopicError):
            c.subscribe("a/#/b")
        with pytest.raises(RuntimeError, match="not re-entrant"):
            with c:
                pass
        assert c.is_connected, "the failed re-entry left the connection alone"


def test_the_constructor_takes_the_asyncio_clients_arguments():
    ours = inspect.signature(sync.Client.__init__).parameters
    theirs = inspect.signature(awsiot_rs.Client.__init__).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()]
    for name, p in theirs.items():
        if p.default is not inspect.Parameter.empty and type(p.default) is not object:
            assert ours[name].default == p.default, name


# -- services (against the embedded AWS IoT Core) -----------------------------------------------

#: A fleet provisioning template as AWS's: the thing is ``thing-<SerialNumber>``.
TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["thing-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
    },
    "DeviceConfiguration": {"sampleRate": "60"},
}


def core_client(core: LocalIoTCore, thing: str, **kwargs: Any) -> sync.Client:
    """A blocking client of ``core`` with the certificate of ``thing`` (registered or a claim)."""
    kwargs.setdefault("client_id", thing)
    if "auth" not in kwargs:
        kwargs["auth"] = core.device(thing).auth()
    return sync.Client(core.endpoint, port=core.ports["mqtt"], ca=core.ca_pem, operation_timeout=5, **kwargs)


def wait_for_subscribe(events: CoreEvents, client_id: str, topic: str) -> None:
    """Blocks until the core has granted ``client_id`` a subscription to ``topic``."""
    asyncio.run(events.wait_for(
        lambda e: e.kind == "subscribe" and e.client_id == client_id and topic in e.topics, 10))


@pytest.fixture
def core_thing(local_iot_core: LocalIoTCore) -> str:
    thing = f"thing-{uuid.uuid4().hex[:10]}"
    local_iot_core.register_thing(thing)
    return thing


def test_shadow_get_update_delete_and_deltas(local_iot_core, core_thing):
    core, thing = local_iot_core, core_thing
    events = core.events()
    with core_client(core, thing) as c:
        shadow = c.shadow(thing)
        assert shadow.thing_name == thing and shadow.name is None and thing in repr(shadow)
        with pytest.raises(awsiot_rs.ShadowRejected) as missing:
            shadow.get()
        assert missing.value.code == 404
        deltas = shadow.deltas()
        wait_for_subscribe(events, thing, awsiot_rs.topics.shadow(thing, "update/delta"))
        doc = shadow.update(desired={"light": "on"}, reported={"light": "off"})
        assert doc["state"]["desired"] == {"light": "on"} and doc["version"] == 1
        delta = deltas.get(timeout=5)
        assert delta["state"] == {"light": "on"} and delta["version"] == 1
        deltas.close()
        got = shadow.get()
        assert got["state"]["reported"] == {"light": "off"} and got["version"] == doc["version"]
        assert got["state"]["delta"] == {"light": "on"}
        with pytest.raises(awsiot_rs.ShadowRejected) as stale:
            shadow.update(reported={"light": "on"}, version=doc["version"] + 5)
        assert stale.value.code == 409
        named = c.shadow(thing, "config")
        named.update(reported={"mode": 1})
        assert named.get()["state"]["reported"] == {"mode": 1}
        assert core.shadow_document(thing, "config")["state"]["reported"] == {"mode": 1}  # type: ignore[index]
        assert shadow.delete()["version"] == 1
        assert core.shadow_document(thing) is None
        with pytest.raises(awsiot_rs.ShadowRejected) as gone:
            shadow.get()
        assert gone.value.code == 404
    asyncio.run(events.aclose())


def test_shadow_on_delta_callback(local_iot_core, core_thing):
    core, thing = local_iot_core, core_thing
    with core_client(core, thing) as c:
        seen: list[dict[str, Any]] = []
        got = threading.Event()
        sub = c.shadow(thing).on_delta(lambda d: (seen.append(d), got.set()) and None)
        c.shadow(thing).update(desired={"x": 1})
        assert got.wait(5) and seen[0]["state"] == {"x": 1} and seen[0]["version"] == 1
        sub.unsubscribe()


def test_fleet_provisioning(local_iot_core, tmp_path):
    core = local_iot_core
    claim = core.add_provisioning_template("default", TEMPLATE)
    admin = f"admin-{uuid.uuid4().hex[:8]}"  # a device certificate: not limited to one template
    core.register_thing(admin)
    with core_client(core, claim.thing_name) as c:
        fp = c.fleet_provisioning()
        assert fp.fmt == "json" and "FleetProvisioning" in repr(fp)
        keys = fp.create_keys_and_certificate()
        with pytest.raises(awsiot_rs.ProvisioningRejected) as bad_params:
            fp.register_thing("default", {}, certificate_ownership_token=keys.certificate_ownership_token)
        assert (bad_params.value.status_code, bad_params.value.error_code) == (400, "InvalidParameters")
        thing = fp.register_thing("default", {"SerialNumber": "7"},
                                  certificate_ownership_token=keys.certificate_ownership_token)
        assert thing.thing_name == "thing-7" and thing.device_configuration == {"sampleRate": "60"}
    with core_client(core, admin) as c:
        with pytest.raises(awsiot_rs.ProvisioningRejected) as unknown:
            c.fleet_provisioning().register_thing("nope", {}, certificate_ownership_token=keys.certificate_ownership_token)
        assert (unknown.value.status_code, unknown.value.error_code) == (404, "ResourceNotFound")
    auth = keys.save(tmp_path / "c.crt", tmp_path / "k.key")
    with core_client(core, "thing-7", auth=auth) as device:
        assert device.is_connected, "the provisioned certificate connects"
        assert "thing-7" in core.connected_clients()


def test_jobs(local_iot_core, core_thing):
    core, thing = local_iot_core, core_thing
    events = core.events()
    with core_client(core, thing) as c:
        jobs = c.jobs(thing)
        assert jobs.thing_name == thing
        assert jobs.start_next() is None
        with jobs.notify_next() as notes:
            wait_for_subscribe(events, thing, awsiot_rs.topics.jobs(thing, "notify-next"))
            core.add_job(thing, "job-1", {"op": "reboot"})
            assert notes.get(timeout=5)["execution"]["jobId"] == "job-1"
        assert [j["jobId"] for j in jobs.get_pending()["queuedJobs"]] == ["job-1"]
        ex = jobs.start_next()
        assert ex is not None and ex["jobDocument"] == {"op": "reboot"}
        described = jobs.describe("job-1")
        assert described is not None and described["status"] == "IN_PROGRESS"
        with pytest.raises(awsiot_rs.JobRejected) as mismatch:
            jobs.update("job-1", "SUCCEEDED", expected_version=99)
        assert mismatch.value.code == "VersionMismatch"
        jobs.update("job-1", "SUCCEEDED", expected_version=ex["versionNumber"])
        assert core.job_execution(thing, "job-1")["status"] == "SUCCEEDED"  # type: ignore[index]
        pending = jobs.get_pending()
        assert pending["inProgressJobs"] == [] and pending["queuedJobs"] == []
    asyncio.run(events.aclose())


# -- threads, running loops, exit, fork --------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["one-shared-client", "a-client-per-thread"])
def test_eight_threads_publish_and_subscribe_at_once(sync_client, unique_topic, shared):
    per_thread = 200
    common = sync_client() if shared else None
    if common is not None:
        common.connect()
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []
    results: dict[int, list[bytes]] = {}

    def work(i: int) -> None:
        try:
            c = common if common is not None else sync_client()
            if common is None:
                c.connect()
            topic = f"{unique_topic}/{i}"
            sub = c.subscribe(topic)
            barrier.wait(10)
            for n in range(per_thread):
                c.publish(topic, f"{i}:{n}".encode(), qos=n % 2)
            results[i] = [sub.get(timeout=10).payload for _ in range(per_thread)]
            sub.unsubscribe()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    for i in range(8):
        assert results[i] == [f"{i}:{n}".encode() for n in range(per_thread)], "all, in order, to the right thread"


def test_works_from_a_coroutine_inside_asyncio_run(sync_client, unique_topic):
    """As in a Jupyter cell: the caller's loop is running; the sync client blocks it briefly."""
    c = sync_client()

    async def main() -> list[bytes]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        other = asyncio.ensure_future(ticker())
        with c:
            sub = c.subscribe(unique_topic)
            c.publish(unique_topic, b"from a coroutine", qos=1)
            got = [sub.get(timeout=5).payload]
            await asyncio.sleep(0.1)  # the caller's loop still runs its own tasks
        other.cancel()
        assert ticks > 2
        return got

    assert asyncio.run(main()) == [b"from a coroutine"]


def test_ctrl_c_in_a_blocking_call_cancels_only_the_wait(broker):
    code = f"""
        import os, signal, threading, time
        from awsiot_rs.sync import Client
        c = Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt")
        c.connect()
        sub = c.subscribe("sync/ctrl-c")
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            sub.get()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        c.publish("sync/ctrl-c", b"after", qos=1)
        print(sub.get(timeout=5).payload.decode(), flush=True)
        c.disconnect()
    """
    r = run_script(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["interrupted", "after"]


def test_exit_with_open_clients_is_quick_and_sends_disconnect(broker):
    ids = [f"exit-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    code = f"""
        import threading, time
        from awsiot_rs.sync import Client
        clients = [Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt", client_id=i) for i in {ids!r}]
        for c in clients:
            c.connect()
            c.subscribe("sync/exit/#")
        # a thread still blocked in a sync call does not hold the exit up either
        threading.Thread(target=lambda: clients[0].subscribe("sync/exit/x").get(), daemon=True).start()
        time.sleep(0.2)
        print("ready", time.monotonic(), flush=True)
    """
    start = len(broker.log_text())
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        ready = time.monotonic()
        assert line.startswith("ready"), proc.stderr.read()
        rc = proc.wait(10)
        elapsed = time.monotonic() - ready
        err = proc.stderr.read()
    assert rc == 0, err
    assert elapsed < 2.0, f"exit took {elapsed:.2f} s"
    for i in ids:
        assert broker.wait_for_log(f"Received DISCONNECT from {i}", start=start), i


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_an_old_client_raises_and_a_new_one_works(broker, unique_topic):
    topic = unique_topic
    code = f"""
        import os, sys
        from awsiot_rs.sync import Client
        opts = dict(port={broker.port}, tls=False, limits="mqtt")
        old = Client("127.0.0.1", **opts)
        old.connect()
        sub = old.subscribe("{topic}/parent")
        pid = os.fork()
        if pid == 0:
            try:
                for attempt in (lambda: old.publish("{topic}/x", b"1"), lambda: sub.get(timeout=1),
                                lambda: old.publish_nowait("{topic}/x", b"1"), old.disconnect):
                    try:
                        attempt()
                        print("child: no error", flush=True)
                        os._exit(3)
                    except RuntimeError as e:
                        assert "fork" in str(e), e
                print("child: old client refused", flush=True)
                with Client("127.0.0.1", **opts) as new:
                    s = new.subscribe("{topic}/child")
                    new.publish("{topic}/child", b"hi", qos=1)
                    print("child: new client", s.get(timeout=5).payload.decode(), flush=True)
                os._exit(0)
            except BaseException as e:
                print("child failed:", repr(e), flush=True)
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        old.publish("{topic}/parent", b"p", qos=1)
        print("parent:", sub.get(timeout=5).payload.decode(), flush=True)
        old.disconnect()
    """
    r = run_script(code, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "child: old client refused" in r.stdout
    assert "child: new client hi" in r.stdout
    assert "child exit 0" in r.stdout
    assert "parent: p" in r.stdout
