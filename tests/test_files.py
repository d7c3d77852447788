"""Files the client writes: fleet-provisioning results (an AWS-issued private key is often the
only copy there is) and the traffic log. Owner-only modes, no symlink following, atomic
replacement, no temporary files left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import awsiot_rs
from awsiot_rs.provisioning import CreateKeysAndCertificateResponse

pytestmark = [pytest.mark.security]


@pytest.fixture
def issued(pki) -> CreateKeysAndCertificateResponse:  # type: ignore[no-untyped-def]
    """What CreateKeysAndCertificate returns (a real certificate and its key)."""
    return CreateKeysAndCertificateResponse(
        "c0ffee" * 10 + "abcd", pki.client_cert.read_text(), pki.client_key.read_text(), "S3NTINEL-OWN"
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def is_regular(p: Path) -> bool:
    return stat.S_ISREG(os.lstat(p).st_mode)


def test_saved_certificate_and_key_are_owner_only_regular_files(issued, tmp_path):
    old = os.umask(0)  # a permissive umask must not widen the files
    try:
        auth = issued.save(tmp_path / "device.pem.crt", tmp_path / "private.pem.key")
    finally:
        os.umask(old)
    assert isinstance(auth, awsiot_rs.MtlsAuth)
    for p, text in ((tmp_path / "device.pem.crt", issued.certificate_pem), (tmp_path / "private.pem.key", issued.private_key)):
        assert is_regular(p) and mode(p) == 0o600, oct(mode(p))
        assert p.read_text() == text
    assert sorted(os.listdir(tmp_path)) == ["device.pem.crt", "private.pem.key"], "no temporary files left"


def test_a_planted_symlink_is_replaced_never_followed(issued, tmp_path):
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in ("device.pem.crt", "private.pem.key"):
        victim = victim_dir / name
        victim.write_text("not yours to overwrite\n")
        victim.chmod(0o644)
        (out / name).symlink_to(victim)
        victims[name] = victim
    issued.save(out / "device.pem.crt", out / "private.pem.key")
    for name, victim in victims.items():
        assert victim.read_text() == "not yours to overwrite\n", "the symlink was followed"
        assert mode(victim) == 0o644
        assert is_regular(out / name) and mode(out / name) == 0o600
    assert (out / "private.pem.key").read_text() == issued.private_key
    assert (out / "device.pem.crt").read_text() == issued.certificate_pem
    assert sorted(os.listdir(out)) == ["device.pem.crt", "private.pem.key"]


def test_a_dangling_symlink_is_replaced_and_creates_nothing_at_its_target(issued, tmp_path):
    target = tmp_path / "planted-target.key"
    (tmp_path / "private.pem.key").symlink_to(target)
    issued.save(tmp_path / "device.pem.crt", tmp_path / "private.pem.key")
    assert not target.exists() and not target.is_symlink()
    assert is_regular(tmp_path / "private.pem.key")
    assert (tmp_path / "private.pem.key").read_text() == issued.private_key


def test_overwriting_existing_files_replaces_them_and_not_other_links(issued, tmp_path):
    cert, key = tmp_path / "device.pem.crt", tmp_path / "private.pem.key"
    cert.write_text("old cert\n")
    key.write_text("old key\n")
    cert.chmod(0o644)
    key.chmod(0o644)
    other_name = tmp_path / "hardlink-to-old-key"
    os.link(key, other_name)  # another name for the old key's inode
    issued.save(cert, key)
    assert cert.read_text() == issued.certificate_pem and key.read_text() == issued.private_key
    assert mode(cert) == mode(key) == 0o600
    assert other_name.read_text() == "old key\n", "the new key was written through the old inode"
    assert sorted(os.listdir(tmp_path)) == ["device.pem.crt", "hardlink-to-old-key", "private.pem.key"]


def test_a_failed_save_keeps_the_previous_files_and_leaves_no_temporary_file(issued, tmp_path):
    """A write that fails half-way (here: the file size limit, EFBIG) must not cost the copy
    already on disk."""
    cert, key = tmp_path / "device.pem.crt", tmp_path / "private.pem.key"
    cert.write_text("previous cert\n")
    key.write_text("previous key\n")
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from awsiot_rs.provisioning import CreateKeysAndCertificateResponse
        cert, key, cert_pem, key_pem = sys.argv[1:5]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        r = CreateKeysAndCertificateResponse("id", open(cert_pem).read(), open(key_pem).read(), "t")
        try:
            r.save(cert, key)
        except OSError as e:
            print("OSError", e.errno)
        except Exception as e:
            print("other", type(e).__name__)
        else:
            print("saved")
        """
    )
    src_cert, src_key = tmp_path / "src.crt", tmp_path / "src.key"
    src_cert.write_text(issued.certificate_pem)
    src_key.write_text(issued.private_key)
    run = subprocess.run(
        [sys.executable, "-c", script, str(cert), str(key), str(src_cert), str(src_key)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == "OSError", run.stdout
    assert cert.read_text() == "previous cert\n"
    assert key.read_text() == "previous key\n"
    assert sorted(os.listdir(tmp_path)) == ["device.pem.crt", "private.pem.key", "src.crt", "src.key"]


def test_saving_onto_a_directory_fails_cleanly(issued, tmp_path):
    (tmp_path / "private.pem.key").mkdir()
    with pytest.raises(OSError):
        issued.save(tmp_path / "device.pem.crt", tmp_path / "private.pem.key")
    leftovers = sorted(n for n in os.listdir(tmp_path) if n not in ("device.pem.crt", "private.pem.key"))
    assert leftovers == [], leftovers
    assert (tmp_path / "private.pem.key").is_dir()


# --- the traffic log ---------------------------------------------------------------------


@pytest.mark.broker
async def test_the_traffic_log_a_client_creates_is_owner_only(broker, tmp_path, unique_topic):
    log = tmp_path / "traffic.log"
    old = os.umask(0)  # a permissive umask must not make the log readable by others
    try:
        c = awsiot_rs.Client("localhost", port=broker.port, tls=False, log_file=log)
    finally:
        os.umask(old)
    async with c:
        await c.publish(unique_topic, b"x", qos=1)
    assert is_regular(log) and mode(log) == 0o600, oct(mode(log))
    assert "PUBLISH" in log.read_text()


@pytest.mark.broker
async def test_an_existing_traffic_log_keeps_its_mode(broker, tmp_path, unique_topic):
    log = tmp_path / "traffic.log"
    log.write_text("")
    log.chmod(0o640)
    async with awsiot_rs.Client("localhost", port=broker.port, tls=False, log_file=log) as c:
        await c.publish(unique_topic, b"x", qos=1)
    assert mode(log) == 0o640
    assert "PUBLISH" in log.read_text()
