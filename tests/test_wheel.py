"""The release artifacts of ``make wheel`` (``dist/``), used the way users get them.

The ONE abi3 wheel is installed into a fresh virtual environment of the oldest and the newest
supported CPython with no Rust toolchain on PATH, and a child process there imports it, makes a
publish/subscribe round trip through the session mosquitto (async and sync clients), runs the
command line and type-checks a snippet with mypy against the shipped stubs. The sdist carries
everything a build needs. ``make test`` builds the wheel first; run alone, the ``wheel`` fixture
runs ``make wheel`` when ``dist/`` has none or it is older than the sources. Deselect with
``-m "not wheel"`` while iterating on something else.
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tarfile
import textwrap
import uuid
import zipfile

import pytest

from matrix import find_python

pytestmark = [pytest.mark.wheel, pytest.mark.broker, pytest.mark.timeout(900)]

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
OLDEST, NEWEST = "3.9", "3.13"
#: What the wheel is built from: a newer file than the wheel means ``make wheel`` again.
SOURCES = ["src", "python/awsiot_rs", "Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md"]


def _newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if "__pycache__" not in f.parts and f.suffix not in (".so", ".pyc"):
                newest = max(newest, f.stat().st_mtime)
    return newest


def _artifacts() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    return sorted(DIST.glob("awsiot_rs-*.whl")), sorted(DIST.glob("awsiot_rs-*.tar.gz"))


@pytest.fixture(scope="module")
def dist() -> tuple[pathlib.Path, pathlib.Path]:
    """``(wheel, sdist)`` from ``dist/``, built by ``make wheel`` when missing or stale."""
    wheels, sdists = _artifacts()
    if len(wheels) != 1 or len(sdists) != 1 or wheels[0].stat().st_mtime < _newest_source():
        subprocess.run(["make", "-C", str(ROOT), "wheel", f"PYTHON={sys.executable}"], check=True)
        wheels, sdists = _artifacts()
    assert len(wheels) == 1 and len(sdists) == 1, (wheels, sdists)
    return wheels[0], sdists[0]


def _no_rust_env() -> dict[str, str]:
    """The environment minus every Rust tool: ``~/.cargo/bin`` (and any directory holding
    ``cargo`` or ``rustc``) off PATH, no CARGO_HOME/RUSTUP_HOME, no outer venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CARGO_HOME", "RUSTUP_HOME", "RUSTC", "CARGO")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    keep = [
        d for d in env.get("PATH", "").split(os.pathsep)
        if d and ".cargo" not in d and not any(os.path.exists(os.path.join(d, t)) for t in ("cargo", "rustc", "rustup"))
    ]
    env["PATH"] = os.pathsep.join(keep)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    for tool in ("cargo", "rustc", "rustup"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} still on PATH"
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: pathlib.Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_wheel_is_one_abi3_manylinux2014_wheel(dist):
    wheel, _ = dist
    name, version, python_tag, abi_tag, platform_tag = wheel.name[: -len(".whl")].split("-")
    assert (python_tag, abi_tag) == ("cp39", "abi3"), wheel.name
    if sys.platform == "linux":
        assert f"manylinux_2_17_{platform.machine()}" in platform_tag.split("."), wheel.name
        report = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, check=True)
        assert f'platform tag: "manylinux_2_17_{platform.machine()}"' in " ".join(report.stdout.split()), report.stdout
        # glibc's unwinder, not one bundled by zig: see LIBGCC_S in the Makefile.
        assert "libgcc_s.so.1 with versions" in " ".join(report.stdout.split()), report.stdout
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        metadata = z.read(f"{name}-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"{name}-{version}.dist-info/entry_points.txt").decode()
    for f in ("py.typed", "_native.pyi", "__init__.py", "__main__.py", "cli.py", "sync.py", "_compat.py"):
        assert f"awsiot_rs/{f}" in files, f
    native = [f for f in files if f.startswith("awsiot_rs/_native")]
    assert sorted(native) == ["awsiot_rs/_native.abi3.so", "awsiot_rs/_native.pyi"], native
    assert "Requires-Python: >=3.9" in metadata
    assert "Classifier: Programming Language :: Python :: 3.9" in metadata
    assert "awsiot-rs=awsiot_rs.cli:main" in entry_points.replace(" ", "")


SMOKE = '''
import asyncio, pathlib, sys
import awsiot_rs
import awsiot_rs.sync

port, topic = int(sys.argv[1]), sys.argv[2]
pkg = pathlib.Path(awsiot_rs.__file__).parent
assert str(pkg).startswith(sys.prefix), pkg          # the venv's copy, not the source tree
assert (pkg / "py.typed").is_file() and (pkg / "_native.pyi").is_file()

async def main():
    client = awsiot_rs.Client("127.0.0.1", port=port, tls=False, limits="mqtt", client_id="wheel-" + topic[-8:])
    async with client:
        sub = await client.subscribe(topic + "/+", qos=1)
        await client.publish(topic + "/a", {"n": 1}, qos=1)
        msg = await asyncio.wait_for(sub.__anext__(), 10)
        assert msg.json() == {"n": 1} and msg.matches(topic + "/#") and not msg.matches("other/#")
        assert msg == awsiot_rs.Message(topic + "/a", msg.payload, qos=1, retain=False, dup=False)
asyncio.run(main())

with awsiot_rs.sync.Client("127.0.0.1", port=port, tls=False, limits="mqtt") as c:
    sub = c.subscribe(topic + "/s", qos=1)
    try:
        sub.get(timeout=0.2)
    except TimeoutError:                               # the builtin one, on 3.9 too
        pass
    else:
        raise AssertionError("get() on an empty subscription returned")
    c.publish(topic + "/s", b"sync", qos=1)
    assert sub.get(timeout=10).payload == b"sync"
print("smoke ok", awsiot_rs.__version__, sys.version.split()[0])
'''

TYPED = '''
import awsiot_rs
import awsiot_rs.sync

async def main() -> None:
    client = awsiot_rs.Client("127.0.0.1", port=1883, tls=False, limits="mqtt")
    async with client:
        sub = await client.subscribe("t/#", qos=1)
        await client.publish("t/1", {"a": 1}, qos=1)
        async for msg in sub:
            topic: str = msg.topic
            payload: bytes = msg.payload
            print(topic, payload, msg.matches("t/#"))
            break

def blocking() -> None:
    with awsiot_rs.sync.Client("127.0.0.1", port=1883, tls=False) as c:
        data: bytes = c.subscribe("t/#").get(timeout=1.0).payload
        print(data)
'''

MISTYPED = '''
import awsiot_rs

awsiot_rs.Client("127.0.0.1", port="1883")
'''


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_the_wheel_works_without_rust_in_a_fresh_venv(version, dist, broker, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.fail(f"CPython {version} is not installed (this machine kind has 3.9-3.13 under pyenv)")
    wheel, _ = dist
    env = _no_rust_env()
    venv = tmp_path / "venv"
    py = str(venv / "bin" / "python")
    r = _run([python, "-m", "venv", str(venv)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    # --only-binary: pip must take the wheel as it is (no build step could run without Rust).
    r = _run([py, "-m", "pip", "install", "-q", "--only-binary", ":all:", str(wheel), "mypy"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    (tmp_path / "smoke.py").write_text(SMOKE)
    r = _run([py, "smoke.py", str(broker.port), f"wheel/{uuid.uuid4().hex}"], env, tmp_path, timeout=60)
    assert r.returncode == 0 and "smoke ok" in r.stdout, r.stdout + r.stderr
    assert f" {version}." in r.stdout

    r = _run([py, "-m", "awsiot_rs", "--help"], env, tmp_path, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stdout + r.stderr
    r = _run([str(venv / "bin" / "awsiot-rs"), "--version"], env, tmp_path, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("awsiot-rs "), r.stdout + r.stderr

    # The stubs are what mypy sees: a correct snippet passes --strict, a wrong argument fails.
    (tmp_path / "typed.py").write_text(textwrap.dedent(TYPED))
    (tmp_path / "mistyped.py").write_text(textwrap.dedent(MISTYPED))
    mypy = [py, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull]
    r = _run([*mypy, "typed.py"], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([*mypy, "mistyped.py"], env, tmp_path)
    assert r.returncode == 1 and "mistyped.py:4: error:" in r.stdout and "[arg-type]" in r.stdout, r.stdout + r.stderr


def test_the_sdist_carries_what_a_build_needs(dist):
    _, sdist = dist
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "src/lib.rs", "src/py/mod.rs",
              "python/awsiot_rs/__init__.py", "python/awsiot_rs/py.typed", "python/awsiot_rs/_native.pyi"):
        assert f in names, f
    assert any(n.startswith("src/core/") for n in names)
    assert not any(n.startswith(("target/", "dist/")) or n.endswith(".so") for n in names)


@pytest.mark.slow
def test_the_sdist_builds_a_wheel(dist, tmp_path):
    """``pip wheel`` from the sdist alone (compiles the Rust extension: minutes; ``-m slow``)."""
    _, sdist = dist
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(sdist)],
                       capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert [w.name.split("-")[2:4] for w in tmp_path.glob("awsiot_rs-*.whl")] == [["cp39", "abi3"]]
