"""``awsiot-rs``: the command line (also ``python -m awsiot_rs``).

Commands: ``pub``, ``sub``, ``shadow`` and ``provision`` talk to AWS IoT Core (or any MQTT
3.1.1 broker); ``demo`` and ``local`` run the embedded AWS IoT Core (:mod:`awsiot_rs.local`):
``demo`` walks a device through it and prints a transcript, ``local`` serves it in the
foreground for clients in any language. ``awsiot-rs --help`` and ``awsiot-rs COMMAND --help``
list the options, with examples.

Exit codes: 0 success; 2 usage or configuration error (reported on stderr before anything is
sent); 3 connection or authentication failure; 4 operation failed or timed out (a refused
subscription, a rejected service request, no answer in time); 130 interrupted (Ctrl-C: the
DISCONNECT is still sent); 143 terminated (SIGTERM, handled the same way).

Design: the commands use the blocking client, :mod:`awsiot_rs.sync`, rather than
``asyncio.run`` with the asyncio client. A command is a straight sequence (connect, one or a
few operations, disconnect) that reads best as plain code, and Ctrl-C needs no signal-handler
plumbing: it raises ``KeyboardInterrupt`` in the main thread wherever it waits, the waiting
operation is cancelled on the background loop, and ``with client:`` still sends DISCONNECT on
the way out. It also makes the command line the sync layer's first everyday user. Everything
on stdout is machine-readable (JSON); progress and errors go to stderr and never contain a
secret (only the endpoint, port, client id, topics and file paths are named).

``demo`` and ``local`` are the exceptions: they run the embedded core, which needs an event
loop of its own for a while, so they use the asyncio API under ``asyncio.run``; their stdout is
a transcript for people (``local --json`` prints one JSON line instead).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO, TypeVar

from . import __version__, topics
from .auth import Credentials, MtlsAuth, SigV4Auth
from .errors import AwsIotError, ConfigError
from .sync import Client

__all__ = [
    "EXIT_CONNECT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "message_to_json",
]

_T = TypeVar("_T")

#: The command did what it was asked.
EXIT_OK = 0
#: Bad arguments or configuration (files, environment); nothing was sent.
EXIT_USAGE = 2
#: The connection could not be made (network, TLS, authentication).
EXIT_CONNECT = 3
#: An operation failed or timed out after the connection was made.
EXIT_FAILED = 4
#: Interrupted by Ctrl-C (SIGINT).
EXIT_INTERRUPTED = 130
#: Terminated by SIGTERM.
EXIT_TERMINATED = 143

#: The largest payload AWS IoT Core accepts (checked before connecting unless ``--no-tls``).
_AWS_MAX_PAYLOAD = 128 * 1024
#: Filters per SUBSCRIBE that AWS IoT Core accepts.
_AWS_MAX_FILTERS = 8

_ENV = {
    "endpoint": "AWSIOT_ENDPOINT",
    "port": "AWSIOT_PORT",
    "client_id": "AWSIOT_CLIENT_ID",
    "cert": "AWSIOT_CERT",
    "key": "AWSIOT_KEY",
    "ca": "AWSIOT_CA",
    "sigv4": "AWSIOT_SIGV4_REGION",
    "proxy": "AWSIOT_PROXY",
}

_EPILOG = """\
environment (each connection option may also come from it; options go before or after COMMAND):
  AWSIOT_ENDPOINT, AWSIOT_PORT, AWSIOT_CLIENT_ID, AWSIOT_CERT, AWSIOT_KEY, AWSIOT_CA,
  AWSIOT_PROXY, AWSIOT_SIGV4_REGION (SigV4 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN, else wherever botocore finds them if it is installed)

examples:
  export AWSIOT_ENDPOINT=abc123-ats.iot.us-west-2.amazonaws.com
  export AWSIOT_CERT=device.pem.crt AWSIOT_KEY=private.pem.key
  awsiot-rs pub sensors/room1 '{"temp": 21.5}'
  echo -n hello | awsiot-rs pub sensors/room1 -
  awsiot-rs sub 'sensors/#' --count 10 | jq .payload
  awsiot-rs shadow update my-thing --desired '{"light": "on"}'
  awsiot-rs shadow get my-thing --name config
  awsiot-rs provision --template MyTemplate --param SerialNumber=42 --out ./device \\
      --cert claim.pem.crt --key claim.pem.key
  awsiot-rs --sigv4 us-west-2 sub '$aws/events/presence/#'
  awsiot-rs --endpoint localhost --port 1883 --no-tls sub 'test/#'   # a local broker

exit codes: 0 ok, 2 usage or configuration error (nothing sent), 3 connection or
authentication failure, 4 operation failed or timed out, 130 interrupted (Ctrl-C)
"""

_SUB_EPILOG = """\
Each message is one JSON line on stdout: {"topic", "qos", "retain", "payload"}. The payload
is the parsed JSON when it is JSON, else the text when it is UTF-8, else base64 (and the line
then also has "encoding": "base64"). Progress goes to stderr.

examples:
  awsiot-rs sub 'sensors/+/temp' --count 1 --wait 30
  awsiot-rs sub 'sensors/#' 'alerts/#' | jq -c 'select(.payload.temp > 30)'
"""


class _Exit(Exception):
    """Ends the command with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Terminated(BaseException):
    """SIGTERM arrived (raised from the signal handler, like ``KeyboardInterrupt``)."""


def _usage(message: str) -> NoReturn:
    raise _Exit(EXIT_USAGE, message)


# -- options -----------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options every command takes. Their defaults are SUPPRESSed so that they may be given
    before or after the command without one overwriting the other."""
    s = argparse.SUPPRESS
    g = parser.add_argument_group("connection options")
    g.add_argument("--endpoint", default=s, metavar="HOST", help="AWS IoT endpoint (AWSIOT_ENDPOINT)")
    g.add_argument("--port", default=s, metavar="N", help="port (AWSIOT_PORT; default 8883, 443 with --sigv4, 1883 with --no-tls)")
    g.add_argument("--client-id", default=s, metavar="ID", help="MQTT client id (AWSIOT_CLIENT_ID; default generated)")
    g.add_argument("--cert", default=s, metavar="FILE", help="device certificate, PEM (AWSIOT_CERT)")
    g.add_argument("--key", default=s, metavar="FILE", help="private key, PEM (AWSIOT_KEY)")
    g.add_argument("--ca", default=s, metavar="FILE", help="trusted CA certificates, PEM (AWSIOT_CA; default Amazon roots)")
    g.add_argument("--sigv4", default=s, metavar="REGION", help="MQTT over WebSocket signed with SigV4 (AWSIOT_SIGV4_REGION)")
    g.add_argument("--proxy", default=s, metavar="URL", help="HTTP CONNECT proxy http://[user:password@]host:port, or env for HTTPS_PROXY/NO_PROXY (AWSIOT_PROXY)")
    g.add_argument("--qos", default=s, type=int, choices=(0, 1), help="QoS for pub and sub (default 1)")
    g.add_argument("--timeout", default=s, type=float, metavar="S", help="seconds to wait for the connection and each answer (default 10)")
    g.add_argument("--log-file", default=s, metavar="FILE", help="append one line per MQTT packet to FILE (no payloads, no secrets)")
    g.add_argument("--no-tls", default=s, action="store_true", help="plain TCP with MQTT limits (local brokers only)")
    g.add_argument("-v", "--verbose", default=s, action="store_true", help="debug logging of the awsiot_rs logger on stderr")
    g.add_argument("-q", "--quiet", default=s, action="store_true", help="no progress on stderr (errors still)")


def build_parser() -> argparse.ArgumentParser:
    """The ``awsiot-rs`` argument parser."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="awsiot-rs",
        description="Talk to AWS IoT Core (or any MQTT 3.1.1 broker) from a terminal or a script.",
        epilog=_EPILOG,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"awsiot-rs {__version__}")
    _add_connection_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:  # noqa: A002
        p = commands.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=raw)
        _add_connection_options(p)
        return p

    p = command(
        "pub",
        "publish one message",
        "examples:\n  awsiot-rs pub sensors/room1 '{\"temp\": 21.5}'\n  awsiot-rs pub sensors/image - < photo.jpg\n",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("payload", metavar="PAYLOAD", nargs="?", default="", help="the payload text; - reads it from stdin (default empty)")
    p.add_argument("--retain", action="store_true", help="set the retain flag")
    p.set_defaults(handler=_cmd_pub)

    p = command("sub", "subscribe and print each message as one JSON line", _SUB_EPILOG)
    p.add_argument("filters", metavar="FILTER", nargs="+")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument("--wait", type=float, metavar="S", help="stop after S seconds (exit 4 if --count was not reached)")
    p.set_defaults(handler=_cmd_sub)

    p = command(
        "shadow",
        "get, update or delete a Device Shadow (the answer document on stdout)",
        "examples:\n  awsiot-rs shadow get my-thing\n"
        "  awsiot-rs shadow update my-thing --desired '{\"light\": \"on\"}' --reported '{\"light\": \"off\"}'\n"
        "  awsiot-rs shadow delete my-thing --name config\n",
    )
    p.add_argument("action", choices=("get", "update", "delete"))
    p.add_argument("thing", metavar="THING")
    p.add_argument("--name", metavar="N", help="a named shadow (default: the classic shadow)")
    p.add_argument("--desired", metavar="JSON", help="update: the desired state (a JSON object, or null)")
    p.add_argument("--reported", metavar="JSON", help="update: the reported state (a JSON object, or null)")
    p.add_argument("--version", type=int, metavar="V", help="update: only if the shadow is at version V")
    p.set_defaults(handler=_cmd_shadow)

    p = command(
        "provision",
        "fleet provisioning: new certificate and key, register a thing, save them in a directory",
        "Connect with the claim certificate (--cert/--key). Writes DIR/certificate.pem.crt and\n"
        "DIR/private.pem.key (mode 0600), and prints the thing name, certificate id and paths.\n\n"
        "example:\n  awsiot-rs provision --template MyTemplate --param SerialNumber=42 --out ./device\n",
    )
    p.add_argument("--template", required=True, metavar="T", help="the provisioning template name")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="a template parameter (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the certificate and the key")
    p.add_argument("--csr", metavar="FILE", help="sign this CSR instead of having AWS create the key (no key file written)")
    p.add_argument("--force", action="store_true", help="replace existing files in DIR")
    p.set_defaults(handler=_cmd_provision)

    # The embedded core's commands take no connection options: they make their own.
    p = commands.add_parser(
        "demo",
        help="run the embedded AWS IoT Core and walk a device through it (a transcript on stdout)",
        description="Starts the embedded AWS IoT Core on loopback, registers a thing, connects it over "
        "mutual TLS, watches its lifecycle events from a second client, publishes, updates its shadow "
        "and prints the delta. Needs no AWS account and no network.",
        formatter_class=raw,
    )
    p.add_argument("--thing", default="demo-sensor", metavar="THING", help="the demo thing's name (default demo-sensor)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for each step (default 5)")
    p.set_defaults(standalone=_cmd_demo)

    p = commands.add_parser(
        "local",
        help="run the embedded AWS IoT Core in the foreground (Ctrl-C stops it)",
        description="Runs the embedded AWS IoT Core for clients in any language and prints its "
        "endpoint, ports and CA file (and each --register'ed thing's certificate and key files). "
        "Ctrl-C or SIGTERM stops it (exit 0).",
        epilog="example:\n  awsiot-rs local --mqtt-port 8883 --register sensor-1 --state-dir ./local-iot\n",
        formatter_class=raw,
    )
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--mqtt-port", type=int, default=0, metavar="N", help="mutual TLS port (default: a free port)")
    p.add_argument("--alpn-port", type=int, default=0, metavar="N", help="mutual TLS + ALPN x-amzn-mqtt-ca port")
    p.add_argument("--custom-auth-port", type=int, default=0, metavar="N", help="custom authorizer port (TLS, ALPN mqtt)")
    p.add_argument("--wss-port", type=int, default=0, metavar="N", help="MQTT over WebSocket port (SigV4 or custom authorizer)")
    p.add_argument("--register", action="append", default=[], metavar="THING", help="register THING and write its certificate and key (repeatable)")
    p.add_argument("--state-dir", metavar="DIR", help="where the CA, certificates and keys go (default: a temporary directory, removed on exit)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the text block")
    p.set_defaults(standalone=_cmd_local)
    return parser


@dataclass
class _Options:
    """The connection options, resolved from the command line and the environment."""

    endpoint: str
    port: int | None
    client_id: str | None
    cert: str | None
    key: str | None
    ca: str | None
    sigv4: str | None
    proxy: str | None
    qos: int
    timeout: float
    log_file: str | None
    no_tls: bool
    verbose: bool
    quiet: bool

    @property
    def limits(self) -> str:
        return "mqtt" if self.no_tls else "aws"


def _resolve(args: argparse.Namespace, env: dict[str, str]) -> _Options:
    def pick(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is None and name in _ENV:
            value = env.get(_ENV[name]) or None
        return value

    def source(name: str) -> str:
        flag = "--" + name.replace("_", "-")
        return flag if getattr(args, name, None) is not None else _ENV.get(name, flag)

    endpoint = pick("endpoint")
    if not endpoint:
        _usage("no endpoint: give --endpoint HOST or set AWSIOT_ENDPOINT")
    port_text = pick("port")
    port: int | None = None
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            _usage(f"{source('port')} must be a port number, not {port_text!r}")
    timeout = float(getattr(args, "timeout", 10.0))
    if not timeout > 0:
        _usage("--timeout must be a number of seconds > 0")
    opts = _Options(
        endpoint=endpoint,
        port=port,
        client_id=pick("client_id"),
        cert=pick("cert"),
        key=pick("key"),
        ca=pick("ca"),
        sigv4=pick("sigv4"),
        proxy=pick("proxy"),
        qos=int(getattr(args, "qos", 1)),
        timeout=timeout,
        log_file=getattr(args, "log_file", None),
        no_tls=bool(getattr(args, "no_tls", False)),
        verbose=bool(getattr(args, "verbose", False)),
        quiet=bool(getattr(args, "quiet", False)),
    )
    if (opts.cert is None) != (opts.key is None):
        missing = "key" if opts.key is None else "cert"
        _usage(f"{source('cert' if missing == 'key' else 'key')} needs --{missing} (or {_ENV[missing]}) too")
    if opts.cert is not None and opts.sigv4 is not None:
        _usage(f"choose one authentication: {source('cert')} (mutual TLS) or {source('sigv4')} (SigV4), not both")
    if opts.no_tls:
        for name in ("cert", "ca", "sigv4"):
            if getattr(opts, name) is not None:
                _usage(f"--no-tls cannot be combined with {source(name)}: plain TCP carries no certificates or signatures")
    return opts


def _sigv4_auth(region: str, env: dict[str, str]) -> SigV4Auth:
    """SigV4 credentials from ``AWS_ACCESS_KEY_ID``/..., else from botocore's chain (profiles,
    SSO, container and instance roles) when botocore is installed; refreshed per connection."""
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_SECRET_ACCESS_KEY"):
        return SigV4Auth(region)
    try:
        session_module: Any = importlib.import_module("botocore.session")
    except ImportError:
        return SigV4Auth(region)  # raises ConfigError naming the variables it needs
    found = session_module.get_session().get_credentials()
    if found is None:
        _usage("--sigv4 found no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure a profile")

    def fetch_now() -> Credentials:
        frozen = found.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def fetch() -> Credentials:
        return await asyncio.to_thread(fetch_now)  # botocore may do network I/O: off the loop

    return SigV4Auth(region, credentials=fetch)


def _port(opts: _Options) -> int:
    """The port to connect to: given, or the default for the authentication."""
    if opts.port is not None:
        return opts.port
    if opts.no_tls:
        return 1883
    return 443 if opts.sigv4 is not None else 8883


def _client(opts: _Options, env: dict[str, str]) -> Client:
    """Builds the client: every configuration error surfaces here, before any I/O."""
    auth: MtlsAuth | SigV4Auth | None = None
    if opts.cert is not None and opts.key is not None:
        auth = MtlsAuth(opts.cert, opts.key)
    elif opts.sigv4 is not None:
        auth = _sigv4_auth(opts.sigv4, env)
    return Client(
        opts.endpoint,
        client_id=opts.client_id,
        port=_port(opts),
        auth=auth,
        ca=opts.ca,
        tls=not opts.no_tls,
        limits="mqtt" if opts.no_tls else "aws",
        operation_timeout=opts.timeout,
        connect_timeout=opts.timeout,
        log_file=opts.log_file,
        proxy=opts.proxy,
    )


class _Session:
    """``with _Session(client, opts):`` connects (a failure exits 3) and always disconnects."""

    def __init__(self, client: Client, opts: _Options, out: _Output) -> None:
        self.client = client
        self.opts = opts
        self.out = out

    def __enter__(self) -> Client:
        where = f"{self.opts.endpoint}:{_port(self.opts)}"
        try:
            self.client.connect()
        except ConfigError:
            raise
        except (AwsIotError, OSError, TimeoutError) as e:
            raise _Exit(EXIT_CONNECT, f"cannot connect to {where}: {e}") from None
        self.out.progress(f"connected to {where} as {self.client.client_id}")
        return self.client

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.disconnect()
        except AwsIotError as e:  # the command's outcome stands; say why the goodbye failed
            self.out.progress(f"disconnect failed: {e}")


class _Output:
    """stdout for results (JSON), stderr for progress and errors."""

    def __init__(self, quiet: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.quiet = quiet
        self.stdout = stdout
        self.stderr = stderr

    def progress(self, text: str) -> None:
        if not self.quiet:
            print(f"awsiot-rs: {text}", file=self.stderr, flush=True)

    def json_line(self, value: Any, *, pretty: bool = False) -> None:
        text = json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)
        self.stdout.write(text + "\n")
        self.stdout.flush()


# -- commands ----------------------------------------------------------------------------------


def _read_payload(arg: str, stdin: TextIO) -> bytes:
    if arg == "-":
        buffer = getattr(stdin, "buffer", None)
        return bytes(buffer.read()) if buffer is not None else stdin.read().encode()
    return arg.encode()


def _cmd_pub(args: argparse.Namespace, opts: _Options, env: dict[str, str], out: _Output) -> int:
    topics.validate_topic(args.topic, opts.limits)
    payload = _read_payload(args.payload, sys.stdin)
    if not opts.no_tls and len(payload) > _AWS_MAX_PAYLOAD:
        _usage(f"the payload is {len(payload)} bytes; AWS IoT Core accepts at most {_AWS_MAX_PAYLOAD}")
    client = _client(opts, env)
    with _Session(client, opts, out):
        client.publish(args.topic, payload, qos=opts.qos, retain=args.retain)
    done = "acknowledged" if opts.qos else "sent"
    out.progress(f"published {len(payload)} bytes to {args.topic} (QoS {opts.qos}, {done})")
    return EXIT_OK


def _payload_value(data: bytes) -> tuple[Any, bool]:
    """``(value, is_base64)``: the parsed JSON, else the UTF-8 text, else base64 text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not standard JSON")  # NaN/Infinity would break jq

    try:
        return json.loads(text, parse_constant=no_constants), False
    except (ValueError, RecursionError):
        return text, False


def message_to_json(topic: str, qos: int, retain: bool, payload: bytes) -> dict[str, Any]:
    """The JSON object ``sub`` prints for one message: ``{"topic", "qos", "retain",
    "payload"}`` (and ``"encoding": "base64"`` when the payload is not UTF-8)."""
    value, is_base64 = _payload_value(payload)
    line: dict[str, Any] = {"topic": topic, "qos": qos, "retain": retain, "payload": value}
    if is_base64:
        line["encoding"] = "base64"
    return line


def _cmd_sub(args: argparse.Namespace, opts: _Options, env: dict[str, str], out: _Output) -> int:
    filters: list[str] = args.filters
    for f in filters:
        topics.validate_filter(f, opts.limits)
    if not opts.no_tls and len(filters) > _AWS_MAX_FILTERS:
        _usage(f"AWS IoT Core accepts at most {_AWS_MAX_FILTERS} filters per subscription, not {len(filters)}")
    if args.count is not None and args.count < 1:
        _usage("--count must be at least 1")
    if args.wait is not None and not args.wait > 0:
        _usage("--wait must be a number of seconds > 0")
    client = _client(opts, env)
    received = 0
    subscribed = False
    try:
        with _Session(client, opts, out):
            sub = client.subscribe(filters, qos=opts.qos)
            subscribed = True
            granted = ", ".join(f"{f} (QoS {q})" for f, q in zip(filters, sub.granted_qos))
            out.progress(f"subscribed to {granted}")
            deadline = None if args.wait is None else time.monotonic() + args.wait
            while args.count is None or received < args.count:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    msg = sub.get(timeout=remaining)
                except TimeoutError:
                    break
                out.json_line(message_to_json(msg.topic, msg.qos, msg.retain, msg.payload))
                received += 1
    except BrokenPipeError:
        # The reader went away (``| head -1``): that ends the subscription, not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    finally:
        if subscribed:
            out.progress(f"{received} message{'' if received == 1 else 's'}")
    if args.count is not None and received < args.count and args.wait is not None:
        raise _Exit(EXIT_FAILED, f"timed out after {args.wait:g} s with {received} of {args.count} messages")
    return EXIT_OK


def _json_arg(flag: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        _usage(f"{flag} is not valid JSON: {e}")
    if value is not None and not isinstance(value, dict):
        _usage(f"{flag} must be a JSON object or null, not {type(value).__name__}")
    return value


def _cmd_shadow(args: argparse.Namespace, opts: _Options, env: dict[str, str], out: _Output) -> int:
    topics.shadow(args.thing, "get", args.name)  # validates the names
    update_args: dict[str, Any] = {}
    if args.action == "update":
        if args.desired is None and args.reported is None:
            _usage("shadow update needs --desired and/or --reported")
        if args.desired is not None:
            update_args["desired"] = _json_arg("--desired", args.desired)
        if args.reported is not None:
            update_args["reported"] = _json_arg("--reported", args.reported)
        update_args["version"] = args.version
    elif args.desired is not None or args.reported is not None or args.version is not None:
        _usage(f"--desired, --reported and --version apply to 'shadow update', not 'shadow {args.action}'")
    client = _client(opts, env)
    with _Session(client, opts, out):
        shadow = client.shadow(args.thing, args.name)
        if args.action == "get":
            doc = shadow.get()
        elif args.action == "update":
            doc = shadow.update(**update_args)
        else:
            doc = shadow.delete()
    out.json_line(doc, pretty=out.stdout.isatty())
    return EXIT_OK


def _cmd_provision(args: argparse.Namespace, opts: _Options, env: dict[str, str], out: _Output) -> int:
    topics.fleet_provisioning("provision", template=args.template)  # validates the name
    parameters: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _usage(f"--param must look like NAME=VALUE, not {item!r}")
        parameters[name] = value
    csr: str | None = None
    if args.csr is not None:
        try:
            with open(args.csr, encoding="utf-8") as f:
                csr = f.read()
        except (OSError, UnicodeDecodeError) as e:
            _usage(f"--csr {args.csr!r} cannot be read: {e}")
    directory = os.path.abspath(args.out)
    cert_path = os.path.join(directory, "certificate.pem.crt")
    key_path = os.path.join(directory, "private.pem.key")
    written = [cert_path] if csr is not None else [cert_path, key_path]
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        _usage(f"--out {args.out!r} cannot be created: {e.strerror}")
    if not os.access(directory, os.W_OK | os.X_OK):
        _usage(f"--out {args.out!r} is not writable")
    existing = [p for p in written if os.path.lexists(p)]
    if existing and not args.force:
        _usage(f"{existing[0]} exists (--force replaces it; the old key cannot be recovered from AWS)")
    client = _client(opts, env)
    with _Session(client, opts, out):
        fp = client.fleet_provisioning()
        if csr is not None:
            signed = fp.create_certificate_from_csr(csr)
            certificate_id = signed.certificate_id
            out.progress(f"certificate {certificate_id} created")
            thing = fp.register_thing(
                args.template, parameters, certificate_ownership_token=signed.certificate_ownership_token
            )
            with open(cert_path, "w", encoding="utf-8") as f:
                f.write(signed.certificate_pem)
        else:
            keys = fp.create_keys_and_certificate()
            certificate_id = keys.certificate_id
            out.progress(f"certificate {certificate_id} created")
            thing = fp.register_thing(
                args.template, parameters, certificate_ownership_token=keys.certificate_ownership_token
            )
            keys.save(cert_path, key_path)  # both 0600, atomically replaced
    out.progress(f"thing {thing.thing_name} registered; wrote {', '.join(written)}")
    result: dict[str, Any] = {
        "thing_name": thing.thing_name,
        "certificate_id": certificate_id,
        "certificate": cert_path,
        "private_key": None if csr is not None else key_path,
        "device_configuration": thing.device_configuration,
    }
    out.json_line(result, pretty=out.stdout.isatty())
    return EXIT_OK


# -- the embedded core: demo and local -------------------------------------------------------


class _DemoFailed(Exception):
    """A demo step did not happen in time."""


async def _demo(thing: str, timeout: float, say: Callable[[str, str], None]) -> None:
    """The ``demo`` walk-through (``say(who, text)`` prints one transcript line)."""
    from .local import LocalIoTCore

    async def within(what: str, aw: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(aw, timeout)
        except asyncio.TimeoutError:
            raise _DemoFailed(f"{what}: nothing within {timeout:g} s") from None

    async with LocalIoTCore() as core:
        ports = core.ports
        say("core", f"AWS IoT Core (embedded) listening on {core.endpoint}: mutual TLS {ports['mqtt']}, "
                    f"ALPN {ports['alpn']}, custom auth {ports['custom_auth']}, WebSocket {ports['wss']}")
        say("core", f"CA certificate: {core.ca_file}")
        dev = core.register_thing(thing, attributes={"room": "lab"})
        say("core", f"registered thing {thing!r}, certificate {dev.certificate_id[:16]}... (ACTIVE)")
        watcher_name = f"{thing}-observer"
        core.register_thing(watcher_name)

        async with core.client(watcher_name) as observer:
            presence_filter = f"$aws/events/presence/+/{thing}"
            presence = await observer.subscribe(presence_filter, qos=1)
            telemetry_filter = f"demo/{thing}/telemetry"
            telemetry = await observer.subscribe(telemetry_filter, qos=1)
            say("observer", f"connected; subscribed to {presence_filter} and {telemetry_filter}")

            sensor = core.client(thing)
            result = await within("connect", sensor.connect())
            say(thing, f"connected over mutual TLS (session present: {result.session_present})")
            msg = await within("the connected lifecycle event", presence.__anext__())
            ev = msg.json()
            say("observer", f"{msg.topic}: eventType={ev.get('eventType')} clientId={ev.get('clientId')} "
                            f"principal={str(ev.get('principalIdentifier'))[:16]}...")

            await within("publish", sensor.publish(f"demo/{thing}/telemetry", {"temp": 21.5, "unit": "C"}, qos=1))
            say(thing, f"published {{\"temp\": 21.5, \"unit\": \"C\"}} to demo/{thing}/telemetry (QoS 1, acknowledged)")
            msg = await within("the telemetry message", telemetry.__anext__())
            say("observer", f"received on {msg.topic}: {msg.text()}")

            deltas: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            shadow = sensor.shadow(thing)
            await within("the delta subscription", shadow.on_delta(deltas.put_nowait))
            doc = await within("shadow update", shadow.update(reported={"light": "off", "temp": 21.5}))
            say(thing, f"reported {json.dumps(doc['state']['reported'])} (shadow version {doc['version']})")
            doc = await within("shadow update", observer.shadow(thing).update(desired={"light": "on"}))
            say("observer", f"desired {json.dumps(doc['state']['desired'])} (shadow version {doc['version']})")
            delta = await within("the shadow delta", deltas.get())
            say(thing, f"delta: {json.dumps(delta['state'])} (version {delta['version']}) -> switching the light on")
            doc = await within("shadow update", shadow.update(reported={"light": "on"}))
            say(thing, f"reported {json.dumps(doc['state']['reported'])} (shadow version {doc['version']})")
            doc = await within("shadow get", shadow.get())
            state = doc["state"]
            say(thing, f"shadow now: desired {json.dumps(state.get('desired'))}, reported "
                       f"{json.dumps(state.get('reported'))}, delta {json.dumps(state.get('delta'))}")

            await within("disconnect", sensor.disconnect())
            say(thing, "disconnected")
            msg = await within("the disconnected lifecycle event", presence.__anext__())
            ev = msg.json()
            say("observer", f"{msg.topic}: eventType={ev.get('eventType')} "
                            f"clientInitiatedDisconnect={ev.get('clientInitiatedDisconnect')} "
                            f"disconnectReason={ev.get('disconnectReason')}")
    say("core", "stopped")


def _cmd_demo(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``awsiot-rs demo``: the embedded core, one device, a transcript."""
    if not args.timeout > 0:
        print("awsiot-rs: --timeout must be a number of seconds > 0", file=stderr)
        return EXIT_USAGE
    width = max(len("observer"), len(args.thing)) + 2

    def say(who: str, text: str) -> None:
        stdout.write(f"{'[' + who + ']':<{width}} {text}\n")
        stdout.flush()

    try:
        asyncio.run(_demo(args.thing, args.timeout, say))
    except _DemoFailed as e:
        print(f"awsiot-rs: demo failed: {e}", file=stderr)
        return EXIT_FAILED
    except ConfigError as e:
        print(f"awsiot-rs: {e}", file=stderr)
        return EXIT_USAGE
    except (AwsIotError, OSError) as e:
        print(f"awsiot-rs: demo failed: {type(e).__name__}: {e}", file=stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("awsiot-rs: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    say("demo", "done")
    return EXIT_OK


async def _serve_local(args: argparse.Namespace, stdout: TextIO) -> None:
    """Runs the core until SIGINT or SIGTERM."""
    from .local import LocalIoTCore

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            pass
    try:
        core = LocalIoTCore(
            host=args.host, mqtt_port=args.mqtt_port, alpn_port=args.alpn_port,
            custom_auth_port=args.custom_auth_port, wss_port=args.wss_port, state_dir=args.state_dir,
        )
        async with core:
            things = [core.register_thing(name) for name in args.register]
            ports = core.ports
            if args.json:
                info = {
                    "endpoint": core.endpoint,
                    "host": args.host,
                    "ports": ports,
                    "ca_file": core.ca_file,
                    "things": [
                        {"thing_name": t.thing_name, "cert_file": t.cert_file, "key_file": t.key_file,
                         "certificate_id": t.certificate_id}
                        for t in things
                    ],
                }
                stdout.write(json.dumps(info) + "\n")
            else:
                lines = [
                    "AWS IoT Core (embedded, awsiot_rs.local) is running",
                    f"endpoint: {core.endpoint}",
                    f"host: {args.host}",
                    f"port mqtt: {ports['mqtt']} (mutual TLS)",
                    f"port alpn: {ports['alpn']} (mutual TLS, ALPN x-amzn-mqtt-ca)",
                    f"port custom_auth: {ports['custom_auth']} (TLS, ALPN mqtt, custom authorizer)",
                    f"port wss: {ports['wss']} (MQTT over WebSocket at /mqtt: SigV4 or custom authorizer)",
                    f"ca: {core.ca_file}",
                ]
                for t in things:
                    lines.append(f"thing {t.thing_name}: cert {t.cert_file} key {t.key_file} "
                                 f"certificate_id {t.certificate_id}")
                lines.append("ready (Ctrl-C stops it)")
                stdout.write("\n".join(lines) + "\n")
            stdout.flush()
            await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _cmd_local(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``awsiot-rs local``: the embedded core in the foreground until SIGINT/SIGTERM."""
    try:
        asyncio.run(_serve_local(args, stdout))
    except ConfigError as e:
        print(f"awsiot-rs: {e}", file=stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"awsiot-rs: cannot start the local core: {e}", file=stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # SIGINT before the handler was in place
        pass
    print("awsiot-rs: local core stopped", file=stderr)
    return EXIT_OK


# -- main --------------------------------------------------------------------------------------


def _setup_logging(verbose: bool, stderr: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("awsiot-rs: %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("awsiot_rs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    return handler


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


Handler = Callable[[argparse.Namespace, _Options, dict[str, str], _Output], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``awsiot-rs`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    stdout, stderr = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2, already printed)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    standalone: Callable[[argparse.Namespace, TextIO, TextIO], int] | None = getattr(args, "standalone", None)
    if standalone is not None:
        return standalone(args, stdout, stderr)
    env = dict(os.environ)
    out = _Output(bool(getattr(args, "quiet", False)), stdout, stderr)
    handler: Handler = args.handler
    log_handler = _setup_logging(bool(getattr(args, "verbose", False)), stderr)
    previous_sigterm: Any = None
    if sys.platform != "win32":
        try:
            previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave SIGTERM alone
            previous_sigterm = None
    try:
        opts = _resolve(args, env)
        return handler(args, opts, env, out)
    except _Exit as e:
        print(f"awsiot-rs: {e.message}", file=stderr)
        return e.code
    except ConfigError as e:
        print(f"awsiot-rs: {e}", file=stderr)
        return EXIT_USAGE
    except (AwsIotError, TimeoutError) as e:
        print(f"awsiot-rs: {type(e).__name__}: {e}", file=stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("awsiot-rs: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("awsiot-rs: terminated", file=stderr)
        return EXIT_TERMINATED
    finally:
        logging.getLogger("awsiot_rs").removeHandler(log_handler)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
