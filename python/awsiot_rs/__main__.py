"""``python -m awsiot_rs``: the ``awsiot-rs`` command line (see :mod:`awsiot_rs.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
