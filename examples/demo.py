"""``make demo``: generate a throw-away PKI, start mosquitto with mutual TLS on loopback, run
``examples/quickstart.py`` against it, and stop the broker."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.certs import make_pki  # noqa: E402
from support.mosquitto import Mosquitto  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="awsiot-rs-demo-") as tmp:
        work = pathlib.Path(tmp)
        pki = make_pki(work / "pki")
        with Mosquitto(pki, work / "broker") as broker:
            print(f"mosquitto with mutual TLS on 127.0.0.1:{broker.mtls_port} (certificates in {work / 'pki'})")
            cmd = [
                sys.executable, str(ROOT / "examples" / "quickstart.py"),
                "--endpoint", "localhost", "--port", str(broker.mtls_port),
                "--ca", str(pki.ca_cert), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
            ]
            return subprocess.run(cmd, timeout=60).returncode


if __name__ == "__main__":
    raise SystemExit(main())
