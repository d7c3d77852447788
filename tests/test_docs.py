"""The guides (docs/*.md) and the README say what the code does.

- Every ```python snippet whose first line is ``# runs against: <target>`` runs, in a
  subprocess, with ``ENDPOINT``, ``PORT``, ``CA``, ``CERT`` and ``KEY`` set (docs/README.md,
  "Conventions") for its target: ``mosquitto``, the session mosquitto's mutual-TLS listener;
  ``local core``, an embedded AWS IoT Core (``awsiot_rs.local.LocalIoTCore``, with its Device
  Shadow, Jobs and fleet provisioning services) and the certificate of the thing ``my-thing``;
  ``local core (claim certificate)``, the same core and a fleet provisioning claim certificate
  for the template ``MyTemplate``. It must exit 0 and write nothing on stderr (no traceback, no
  warning logged by awsiot_rs).
- Every ```python snippet, runnable or not (the AWS-only ones: SigV4, custom authorizers),
  compiles, and every awsiot_rs name it imports or reaches (``awsiot_rs.X``), every method or
  attribute it uses on the conventional variables (``client``, ``sub``, ``shadow``, ...) and
  every keyword argument it passes to awsiot_rs exists.
- Every ``$ awsiot-rs ...`` line of a ```console block is accepted by the command's parser.
- The README links every guide, and every relative link of the guides resolves.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any, NamedTuple

import pytest

import awsiot_rs
import awsiot_rs.sync
from awsiot_rs import provisioning
from awsiot_rs.cli import build_parser
from awsiot_rs.local import LocalIoTCore

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: docs/architecture.md is the map of the code, not a guide.
GUIDES = sorted(p for p in DOCS.glob("*.md") if p.name not in ("README.md", "architecture.md"))
PAGES = [ROOT / "README.md", DOCS / "README.md", *GUIDES]
#: The first line of a snippet that runs, before its target.
RUN_PREFIX = "# runs against: "
MOSQUITTO = "mosquitto"
LOCAL_CORE = "local core"
LOCAL_CORE_CLAIM = "local core (claim certificate)"
TARGETS = (MOSQUITTO, LOCAL_CORE, LOCAL_CORE_CLAIM)
SNIPPET_TIMEOUT = 60.0


class Block(NamedTuple):
    page: pathlib.Path
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def target(self) -> str | None:
        """What the snippet runs against (``# runs against: <target>``), or None."""
        first = self.text.split("\n", 1)[0]
        if self.lang != "python" or not first.startswith(RUN_PREFIX):
            return None
        return first[len(RUN_PREFIX):].strip()

    @property
    def runs(self) -> bool:
        return self.target is not None


def blocks(page: pathlib.Path) -> list[Block]:
    """The fenced code blocks of a Markdown page."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if m:
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            found.append(Block(page, start + 1, m.group(1), "\n".join(body) + "\n"))
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.lang == "python"]
RUNNABLE = [b for b in PYTHON if b.runs]
ON_MOSQUITTO = [b for b in RUNNABLE if b.target == MOSQUITTO]
ON_LOCAL_CORE = [b for b in RUNNABLE if b.target in (LOCAL_CORE, LOCAL_CORE_CLAIM)]
CONSOLE = [b for b in ALL if b.lang == "console"]


# -- names -----------------------------------------------------------------------------------

S = awsiot_rs.sync
#: The conventional variable names of the guides and what they stand for (asyncio or sync).
ROLES: dict[str, tuple[Any, ...]] = {
    **dict.fromkeys(("client", "claim", "device", "d", "app", "sync_client"), (awsiot_rs.Client, S.Client)),
    **dict.fromkeys(("sub", "doors", "stored"), (awsiot_rs.Subscription, S.Subscription)),
    "shadow": (awsiot_rs.Shadow, S.Shadow),
    "fp": (awsiot_rs.FleetProvisioning, S.FleetProvisioning),
    "jobs": (awsiot_rs.Jobs, S.Jobs),
    **dict.fromkeys(("message", "msg"), (awsiot_rs.Message,)),
    "keys": (provisioning.CreateKeysAndCertificateResponse,),
    "signed": (provisioning.CreateCertificateFromCsrResponse,),
    "thing": (provisioning.RegisterThingResponse,),
    "result": (awsiot_rs.ConnectResult,),
    "event": (awsiot_rs.ConnectEvent, awsiot_rs.DisconnectEvent, awsiot_rs.topics.LifecycleEvent, dict),
}


def has(obj: Any, name: str) -> bool:
    if hasattr(obj, name):
        return True
    return dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}


def resolve_module_attr(module: str, name: str) -> Any:
    """``module.name``: an attribute, or a submodule."""
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return getattr(mod, name)
    try:
        return importlib.import_module(f"{module}.{name}")
    except ImportError:
        raise AssertionError(f"{module}.{name} does not exist") from None


class NameChecker(ast.NodeVisitor):
    """Checks the awsiot_rs names a snippet uses; ``problems`` lists what does not exist."""

    def __init__(self) -> None:
        #: Names bound by the snippet's imports of awsiot_rs.
        self.bound: dict[str, Any] = {}
        self.problems: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "awsiot_rs":
                try:
                    module = importlib.import_module(alias.name)
                except ImportError:
                    self.problems.append(f"line {node.lineno}: no module {alias.name}")
                    continue
                if alias.asname:
                    self.bound[alias.asname] = module
                else:
                    self.bound["awsiot_rs"] = awsiot_rs
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.split(".")[0] == "awsiot_rs":
            for alias in node.names:
                try:
                    self.bound[alias.asname or alias.name] = resolve_module_attr(node.module, alias.name)
                except (AssertionError, ImportError) as e:
                    self.problems.append(f"line {node.lineno}: {e}")
        self.generic_visit(node)

    def targets(self, node: ast.expr) -> list[Any]:
        """The objects an expression may stand for (empty when unknown)."""
        if isinstance(node, ast.Name):
            if node.id in self.bound:
                return [self.bound[node.id]]
            return list(ROLES.get(node.id, ()))
        if isinstance(node, ast.Attribute):
            found = []
            for base in self.targets(node.value):
                if inspect.ismodule(base) and base.__name__.startswith("awsiot_rs"):
                    try:
                        found.append(resolve_module_attr(base.__name__, node.attr))
                    except AssertionError:
                        pass
                elif has(base, node.attr) and hasattr(base, node.attr):
                    found.append(getattr(base, node.attr))
            return found
        return []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        bases = self.targets(node.value)
        if bases and not any(
            has(b, node.attr) or (inspect.ismodule(b) and self.targets(node)) for b in bases
        ):
            names = " or ".join(getattr(b, "__qualname__", getattr(b, "__name__", repr(b))) for b in bases)
            self.problems.append(f"line {node.lineno}: {names} has no attribute {node.attr!r}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        callees = [c for c in self.targets(node.func) if callable(c)]
        if keywords and callees:
            accepted = False
            for callee in callees:
                try:
                    params = inspect.signature(callee).parameters
                except (TypeError, ValueError):  # a native callable without a signature
                    accepted = True
                    break
                if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or all(
                    k in params for k in keywords
                ):
                    accepted = True
                    break
            if not accepted:
                name = ast.unparse(node.func)
                self.problems.append(f"line {node.lineno}: {name}() does not take all of {keywords}")
        self.generic_visit(node)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_the_snippet_compiles_and_every_awsiot_rs_name_it_uses_exists(block: Block):
    tree = compile(block.text, block.id, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    compile(tree, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    checker = NameChecker()
    checker.visit(tree)
    assert not checker.problems, f"{block.id}:\n" + "\n".join(checker.problems)


def test_the_name_checker_catches_what_does_not_exist():
    checker = NameChecker()
    checker.visit(ast.parse(
        "import awsiot_rs\nfrom awsiot_rs import Client, Nope\n"
        "awsiot_rs.Client('x', colour=1)\nawsiot_rs.topics.nope('a')\n"
        "async def f():\n    await client.publsh('a')\n    sub.get(timeout=1)\n    thing.thing_name\n"
    ))
    assert len(checker.problems) == 4, checker.problems
    assert any("Nope" in p for p in checker.problems)
    assert any("colour" in p for p in checker.problems)
    assert any("'nope'" in p for p in checker.problems)
    assert any("'publsh'" in p for p in checker.problems)


# -- running ---------------------------------------------------------------------------------

#: Runs one snippet file with the connection names set (from the environment, as JSON).
RUNNER = """\
import json, os, sys
path, name = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    code = compile(f.read(), name, "exec")
exec(code, {"__name__": "__main__", **json.loads(os.environ["DOCS_SNIPPET_NAMES"])})
"""

THING = "my-thing"
TEMPLATE = "MyTemplate"
#: The provisioning template of the guides: the thing is ``sensor-<SerialNumber>``.
TEMPLATE_BODY: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
    },
    "DeviceConfiguration": {"sampleRate": "60"},
}


def run_snippet(block: Block, names: dict[str, Any], tmp_path: pathlib.Path) -> None:
    """Runs ``block`` in a subprocess with ``names`` defined: exit 0, nothing on stderr, something
    on stdout."""
    path = tmp_path / "snippet.py"
    path.write_text(block.text, encoding="utf-8")
    env = dict(os.environ, DOCS_SNIPPET_NAMES=json.dumps(names))
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), block.id], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=SNIPPET_TIMEOUT,
    )
    report = f"{block.id} exited {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    print(r.stdout)  # shown with pytest -rP
    assert r.returncode == 0, report
    assert r.stderr == "", report
    assert r.stdout.strip(), f"{block.id} printed nothing: a guide's snippet shows its result"


@pytest.mark.broker
@pytest.mark.timeout(SNIPPET_TIMEOUT + 30)
@pytest.mark.parametrize("block", ON_MOSQUITTO, ids=lambda b: b.id)
def test_the_snippet_runs_against_mosquitto(block: Block, broker, pki, tmp_path):
    names = {"ENDPOINT": "localhost", "PORT": broker.mtls_port, "CA": str(pki.ca_cert),
             "CERT": str(pki.client_cert), "KEY": str(pki.client_key)}
    run_snippet(block, names, tmp_path)


@pytest.mark.timeout(SNIPPET_TIMEOUT + 30)
@pytest.mark.parametrize("block", ON_LOCAL_CORE, ids=lambda b: b.id)
def test_the_snippet_runs_against_the_local_core(block: Block, local_iot_core: LocalIoTCore, tmp_path):
    """The thing ``my-thing`` with two queued jobs, and the template ``MyTemplate``; ``CERT`` and
    ``KEY`` are the thing's certificate, or the template's claim certificate."""
    core = local_iot_core
    device = core.register_thing(THING)
    claim = core.add_provisioning_template(TEMPLATE, TEMPLATE_BODY)
    core.add_job(THING, "firmware-1-2-3", {"operation": "update", "version": "1.2.3"})
    core.add_job(THING, "reboot", {"operation": "reboot"})
    cert = claim if block.target == LOCAL_CORE_CLAIM else device
    names = {"ENDPOINT": core.endpoint, "PORT": core.ports["mqtt"], "CA": core.ca_file,
             "CERT": cert.cert_file, "KEY": cert.key_file}
    run_snippet(block, names, tmp_path)


def test_every_runnable_snippet_names_a_known_target():
    for block in RUNNABLE:
        assert block.target in TARGETS, f"{block.id}: '{RUN_PREFIX}{block.target}' is none of {TARGETS}"


def test_every_guide_has_a_snippet_that_runs():
    assert GUIDES, "no guides in docs/"
    for page in GUIDES:
        assert any(b.runs for b in blocks(page)), f"{page.name} has no '{RUN_PREFIX}...' snippet"


# -- command lines ---------------------------------------------------------------------------


def command_lines() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``$ awsiot-rs ...`` / ``$ python -m awsiot_rs ...`` line."""
    found = []
    for block in CONSOLE:
        for offset, line in enumerate(block.text.splitlines(), start=1):
            if not line.startswith("$ "):
                continue
            lex = shlex.shlex(line[2:], posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            words = []
            for word in lex:
                if word in ("|", "<", ">", ">>", "&&", ";"):
                    break
                words.append(word)
            if words[:1] == ["awsiot-rs"]:
                found.append((f"{block.id}+{offset}", words[1:]))
            elif words[:3] == ["python", "-m", "awsiot_rs"]:
                found.append((f"{block.id}+{offset}", words[3:]))
    return found


@pytest.mark.parametrize(("where", "argv"), command_lines(), ids=[w for w, _ in command_lines()])
def test_the_documented_command_line_is_accepted_by_the_parser(where, argv, capsys):
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: awsiot-rs {' '.join(argv)}: exit {e.code}\n{capsys.readouterr().err}")


# -- links -----------------------------------------------------------------------------------


def test_the_readme_links_every_guide_and_every_relative_link_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in GUIDES:
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
            assert ROOT in path.parents, f"{page.relative_to(ROOT)} links outside the repository: {target}"
