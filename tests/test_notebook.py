"""examples/notebook.ipynb runs end to end in a real Jupyter kernel (nbclient + ipykernel):
the asyncio client with top-level ``await`` in the kernel's running loop, the sync client in
cells, against the embedded AWS IoT Core (``local_iot_core``) over mutual TLS: its broker and
its Device Shadow service."""

from __future__ import annotations

import json
import pathlib
import re
import sys
import uuid
from typing import Any

import pytest

try:  # installed by `make install-deps`; missing, the test fails (it is never skipped)
    import ipykernel  # noqa: F401
    import nbclient
    import nbformat
except ImportError as e:  # pragma: no cover - a machine set up by hand
    MISSING: str | None = f"{e.name} is not installed: run `make install-deps`"
else:
    MISSING = None

pytestmark = pytest.mark.timeout(180)

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"
#: A kernelspec of its own, so the kernel is this interpreter whatever else is installed.
KERNEL = "awsiot-rs-test-python"


def cells_by_tag(nb: Any) -> dict[str, Any]:
    return {tag: cell for cell in nb.cells for tag in cell.metadata.get("tags", [])}


def text_of(cell: Any) -> str:
    """Everything a code cell showed as text: printed output and plain-text results."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def html_of(cell: Any) -> str:
    return "".join(
        out.data.get("text/html", "")
        for out in cell.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    )


@pytest.fixture
def kernel_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private Jupyter/IPython setup: a kernelspec running ``sys.executable``, and runtime and
    profile directories under ``tmp_path`` (nothing is written to the home directory)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (awsiot_rs tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))


def test_the_notebook_runs_end_to_end_against_the_local_core(
    local_iot_core, kernel_env, unique_topic, monkeypatch
):
    if MISSING is not None:
        pytest.fail(MISSING, pytrace=False)
    core = local_iot_core
    thing = f"notebook-{uuid.uuid4().hex[:10]}"
    device = core.register_thing(thing)
    monkeypatch.setenv("AWSIOT_ENDPOINT", core.endpoint)
    monkeypatch.setenv("AWSIOT_PORT", str(core.ports["mqtt"]))
    monkeypatch.setenv("AWSIOT_CA", core.ca_file)
    monkeypatch.setenv("AWSIOT_CERT", device.cert_file)
    monkeypatch.setenv("AWSIOT_KEY", device.key_file)
    monkeypatch.setenv("AWSIOT_THING", thing)
    monkeypatch.setenv("AWSIOT_TOPIC", unique_topic)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    for variable in ("AWSIOT_ENDPOINT", "AWSIOT_PORT", "AWSIOT_CERT", "AWSIOT_KEY", "AWSIOT_CA"):
        assert variable in first.source  # documented where a reader starts
    assert "amazonaws.com" in first.source  # and what to put for AWS

    nbclient.NotebookClient(
        nb, timeout=60, kernel_name=KERNEL, resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises CellExecutionError if a cell fails
    stored = core.shadow_document(thing)

    cells = cells_by_tag(nb)
    assert "awsiot_rs" in text_of(cells["setup"])

    # The client and subscription show as tables; the client was connected.
    assert "state=connected" in text_of(cells["connect"])
    connect_html = html_of(cells["connect"])
    assert "awsiot_rs.Client" in connect_html and "connected" in connect_html
    assert "messages_sent" in connect_html
    sub_html = html_of(cells["subscribe"])
    assert f"{unique_topic}/+/temp" in sub_html and "QoS 1" in sub_html

    # The callback received the published values, shown as a Message and tabulated.
    assert "Message(topic=" in text_of(cells["publish"])
    assert "awsiot_rs.Message" in html_of(cells["publish"])
    table = text_of(cells["table"])
    for room, temp in (("kitchen", "21.5"), ("hall", "19.0"), ("office", "22.25")):
        assert re.search(rf"{room}\s+{re.escape(temp)}\s+1\b", table), table

    # The shadow version increased across the two updates; the document shows as a table.
    shadow_text = text_of(cells["shadow"])
    m = re.search(r"shadow version (\d+) -> (\d+)", shadow_text)
    assert m is not None, shadow_text
    before, after = int(m.group(1)), int(m.group(2))
    assert after > before
    assert "Shadow document, version" in html_of(cells["shadow"])
    assert stored is not None and stored["state"]["desired"] == {"fan": "on"}
    assert stored["state"]["reported"] == {"temp": 22.25}
    assert stored["version"] == after

    # The blocking client, in a cell of the same kernel.
    sync_text = text_of(cells["sync"])
    assert f"sync client received {unique_topic}/garage/temp" in sync_text
    assert "'temp': 12.5" in sync_text
    m = re.search(r"shadow version (\d+), desired \{'fan': 'on'\}", sync_text)
    assert m is not None and int(m.group(1)) >= after, sync_text

    # The kernel's loop ran the asyncio client's callback between the cells.
    assert "'garage'" in text_of(cells["between-cells"])

    assert "state=closed" in text_of(cells["disconnect"])
