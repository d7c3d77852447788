"""Runs the test suite against the ONE release wheel on every supported CPython.

``make test-versions`` runs ``python tests/matrix.py``: for each version a fresh virtual
environment gets the wheel from ``dist/`` (``make wheel``) plus the ``test`` extra, and pytest
runs there from the repository root, so ``awsiot_rs`` is the installed wheel, never
``python/``. Two versions run side by side (the suite mostly waits on sockets and timers),
each with its own mosquitto; each log is kept in ``target/matrix/``.

    python tests/matrix.py [--versions 3.9 3.13] [--jobs N] [-- PYTEST ARGS]

Exit status 0 only if every version passed. Not a test module (pytest collects ``test_*.py``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
LOGS = ROOT / "target" / "matrix"
VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
#: The suite minus what is not about the interpreter: the slow soak/fault runs and the wheel
#: tests (which build their own virtual environments; ``make test`` runs them once).
DEFAULT_PYTEST_ARGS = ["-m", "not slow and not wheel"]


def find_python(version: str) -> Optional[str]:
    """The newest installed CPython ``version`` (``3.9``): pyenv's, else ``pythonX.Y`` on PATH."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv")) / "versions"
    found = sorted(
        (p for p in pyenv.glob(f"{version}.*/bin/python") if re.fullmatch(rf"{re.escape(version)}\.\d+", p.parent.parent.name)),
        key=lambda p: int(p.parent.parent.name.rsplit(".", 1)[1]),
    )
    if found:
        return str(found[-1])
    return shutil.which(f"python{version}")


def the_wheel() -> pathlib.Path:
    wheels = sorted(DIST.glob("awsiot_rs-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"matrix: expected one wheel in {DIST}, found {[w.name for w in wheels]}: run `make wheel`")
    return wheels[0]


class Result(NamedTuple):
    version: str
    ok: bool
    seconds: float
    summary: str
    log: pathlib.Path


def run_one(version: str, wheel: pathlib.Path, pytest_args: list[str]) -> Result:
    start = time.monotonic()
    log = LOGS / f"py{version}.log"
    python = find_python(version)
    if python is None:
        log.write_text(f"CPython {version} is not installed\n")
        return Result(version, False, 0.0, f"CPython {version} not found", log)
    with tempfile.TemporaryDirectory(prefix=f"awsiot-rs-py{version}-") as tmp, log.open("w") as out:
        venv = pathlib.Path(tmp) / "venv"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore", PYTHONDONTWRITEBYTECODE="1")
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary", "awsiot_rs", f"{wheel}[test]"],
            # The package under test must be the wheel in the venv, not the source tree.
            [str(venv / "bin" / "python"), "-c", "import awsiot_rs, sys; f = awsiot_rs.__file__; "
             f"print('awsiot_rs', awsiot_rs.__version__, 'from', f, 'on', sys.version); "
             f"sys.exit(not f.startswith({str(venv)!r}))"],
            [str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
        ]
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                break
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    return Result(version, rc == 0, time.monotonic() - start, summary, log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=VERSIONS, metavar="X.Y")
    # Two at a time: more makes the suite's timing-sensitive tests flaky on this 2-core machine.
    parser.add_argument("--jobs", type=int, default=2, help="versions run at once (default: 2)")
    parser.add_argument("--wheel", type=pathlib.Path, help="default: the one wheel in dist/")
    parser.add_argument("pytest_args", nargs="*", help="after --; default: " + " ".join(DEFAULT_PYTEST_ARGS))
    args = parser.parse_args()
    wheel = args.wheel or the_wheel()
    LOGS.mkdir(parents=True, exist_ok=True)
    print(f"matrix: {wheel.name} on CPython {' '.join(args.versions)} ({args.jobs} at a time); logs in {LOGS}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda v: run_one(v, wheel, args.pytest_args or DEFAULT_PYTEST_ARGS), args.versions))
    for r in results:
        if not r.ok:
            print(f"\n---------- CPython {r.version}: {r.log} (last 60 lines) ----------")
            print("\n".join(r.log.read_text(errors="replace").splitlines()[-60:]))
    print()
    for r in results:
        print(f"CPython {r.version:<5} {'ok  ' if r.ok else 'FAIL'} {r.seconds:6.0f} s  {r.summary}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
