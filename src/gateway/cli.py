"""``gateway serve | demo | emulator | openapi | callbacks``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
import uvicorn
import uvloop
import yaml

from gateway import logs
from gateway.errors import ConfigError
from gateway.settings import LISTEN_BACKLOG, Settings, settings_from_env
from gateway.tenants import Caller, Directory, Secret, Tenant, hash_token, load_directory

if TYPE_CHECKING:  # (the service's modules load only for the commands that run it, the emulator
    # package only for `demo` and `emulator`: the image that runs `serve` does not install it)
    from litestar import Litestar

    from live_engine_emulator import Emulator

DEMO_TOKEN = "demo-token"  # noqa: S105 - the demo's published token; the demo binds loopback
DEMO_SDKAPPID = 1400000001
DEMO_ROOMS = ("demo-room-1", "demo-room-2", "demo-room-3")
EMULATOR_MISSING = (
    "gateway: `gateway {command}` needs the Live Engine emulator package (live-engine-emulator), "
    "which is not installed: pip install ./emulator (from the repository root), "
    "or run `python3 scripts/dev.py demo`"
)


class GatewayServer(uvicorn.Server):
    """uvicorn, draining the way a Kubernetes pod should on SIGTERM: readiness turns false first,
    the listener closes, in-flight requests finish (at most ``GATEWAY_DRAIN_SECONDS``), the
    lifespan shuts down, and the process exits 0 (uvicorn itself re-raises the signal)."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # the overload monitor reads the listeners' accept queues (TCP only: a Unix socket has no TCP_INFO)
        overload = self._app.state.gateway.overload
        overload.listeners = [s for server in self.servers for s in server.sockets if s.family != socket.AF_UNIX]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.state.gateway.drain()
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def _server(app: Litestar, settings: Settings) -> uvicorn.Server:
    from gateway.admission import protocol

    logs.configure(settings.log_level)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        # httptools', refusing overload before the app (a factory: uvicorn calls it as it would a class)
        http=protocol(app.state.gateway.overload),  # type: ignore[arg-type]
        lifespan="on",
        access_log=False,  # the gateway writes its own JSON access line per request
        proxy_headers=False,  # nothing reads the client's address: skip uvicorn's middleware for it
        log_config=None,
        server_header=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        backlog=LISTEN_BACKLOG,
    )
    return GatewayServer(config, app)


def _run(coro: object) -> None:
    # Everything imported and built so far lives as long as the process: move it out of the
    # collector's sight, so that a full collection scans only what requests allocate and cannot
    # stall the event loop for tens of milliseconds (the budget's slots assume prompt sends).
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


def serve(settings: Settings, env: Mapping[str, str]) -> int:
    """Run the service; a bad config stops it here with a message naming the field."""
    from gateway.app import create_app

    try:
        directory = load_directory(settings.config, env)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    _run(_server(create_app(settings, env=env, directory=directory), settings).serve())
    return 0


def demo_directory(base_url: str, secret_key: str, callback_token: str | None = None) -> Directory:
    tenant = Tenant(
        name="demo",
        sdkappid=DEMO_SDKAPPID,
        identifier="administrator",
        secret_key=Secret(secret_key),
        base_url=base_url,
        qps=200,
        callback_token=None if callback_token is None else Secret(callback_token),
    )
    caller = Caller(
        name="demo",
        token_sha256=bytes.fromhex(hash_token(DEMO_TOKEN)),
        tenants=frozenset({"demo"}),
        scopes=frozenset({"read", "write", "events"}),
    )
    return Directory(tenants={"demo": tenant}, callers=(caller,))


def seed_demo(emulator: Emulator, secret_key: str) -> None:
    emulator.add_app(DEMO_SDKAPPID, secret_key, {"administrator"})
    for n, room_id in enumerate(DEMO_ROOMS, start=1):
        emulator.add_room(
            DEMO_SDKAPPID,
            room_id,
            RoomName=f"Demo room {n}",
            Owner_Account=f"14411523377572769{n}",
            Category=[n],
            ViewCount=10 * n,
        )
        emulator.apps[DEMO_SDKAPPID].metadata[room_id] = {"topic": f"demo {n}"}


async def _demo(settings: Settings, env: Mapping[str, str]) -> None:
    from gateway.app import create_app
    from live_engine_emulator import Emulator, serve_emulator

    secret_key, callback_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    emulator = Emulator()
    seed_demo(emulator, secret_key)
    base = f"http://{settings.host}:{settings.port}"
    # Tencent's callbacks for the demo app come to this gateway, signed (in production:
    # `gateway callbacks register --tenant T --url https://…/v1/callbacks/tencent`)
    demo_app = emulator.apps[DEMO_SDKAPPID]
    demo_app.callback_url = f"{base}/v1/callbacks/tencent"
    demo_app.callback_commands = default_commands()
    demo_app.callback_token, demo_app.callback_token_enabled = callback_token, True
    async with serve_emulator(emulator) as base_url:
        app = create_app(settings, env=env, directory=demo_directory(base_url, secret_key, callback_token))
        server = _server(app, settings)
        auth = f"-H 'Authorization: Bearer {DEMO_TOKEN}'"
        print(
            f"Live Room Gateway demo on {base} (emulated Tencent at {base_url}, in-process stores).\n"
            f"Try (the PATCH makes Tencent call back: the events stream in another terminal shows it):\n"
            f"  curl -N {auth} {base}/v1/tenants/demo/events\n"
            f"  curl -i {auth} {base}/v1/tenants/demo/rooms/demo-room-1\n"
            f"  curl -i -X PATCH {auth} -H 'Content-Type: application/json' "
            f'-d \'{{"room_name": "Renamed"}}\' {base}/v1/tenants/demo/rooms/demo-room-1\n'
            f"  curl -i {auth} '{base}/v1/tenants/demo/rooms/demo-room-1/metadata'\n"
            f"Press Ctrl+C to stop.",
            flush=True,
        )
        await server.serve()


def emulator_apps(emulator: Emulator, config: str | None, env: Mapping[str, str]) -> list[str]:
    """Register the apps of a gateway config file (or the emulator's default app); describe them."""
    from live_engine_emulator.cli import register

    if config is None:
        return register(emulator, [], env)
    directory = load_directory(config, env)
    apps = [(t.sdkappid, t.secret_key.reveal(), t.identifier) for t in directory.tenants.values()]
    register(emulator, apps, env)
    return [f"sdkappid {t.sdkappid}, admin {t.identifier!r} (tenant {t.name})" for t in directory.tenants.values()]


async def _emulator(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    from live_engine_emulator.cli import configured, serve_forever

    emulator = configured(args)
    described = emulator_apps(emulator, args.config, env)
    await serve_forever(emulator, args.host, args.port, rooms=args.rooms, described=described)


def _emulator_installed() -> bool:
    """Whether the Live Engine emulator package can be imported (``demo`` and ``emulator`` need it)."""
    try:
        import live_engine_emulator  # noqa: F401 - imported to be found
    except ImportError:
        return False
    return True


def openapi(fmt: str) -> int:
    from gateway.app import create_app

    print(openapi_document(create_app(Settings(), env={}), fmt), end="")
    return 0


def openapi_document(app: Litestar, fmt: str = "yaml") -> str:
    """The app's OpenAPI document as committed in ``openapi/openapi.yaml``."""
    from gateway.api import openapi_document as tidied

    schema = json.loads(msgspec.json.encode(tidied(app).to_schema()))
    if fmt == "json":
        return json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return str(yaml.safe_dump(schema, sort_keys=True, allow_unicode=True))


def default_commands() -> list[str]:
    """The callback commands the gateway registers by default: every one it knows."""
    from gateway.callbacks import COMMANDS

    return sorted(COMMANDS - {"Live.CallbackMemberStateChanged"})  # (the spelling Tencent's body does not use)


async def _callbacks(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    """``gateway callbacks show | register``: the tenant's callback settings at Tencent, read or
    written through the gateway's own budget (shared with the fleet when Redis is configured),
    signing and retries."""
    from gateway.app import create_app
    from gateway.budget import Share
    from gateway.errors import GatewayError

    directory = load_directory(settings.config, env)
    tenant = directory.tenants.get(args.tenant)
    if tenant is None:
        print(f"gateway: no tenant {args.tenant!r} in {settings.config}", file=sys.stderr)
        return 2
    if args.action == "register" and not args.url.startswith(("https://", "http://")):
        print("gateway: --url must be an http(s) URL (Tencent's servers call it)", file=sys.stderr)
        return 2
    app = create_app(settings, env=env, directory=directory)
    share = Share("gateway-cli", 1)
    async with app.lifespan():
        service = app.state.gateway.service
        try:
            if args.action == "show":
                current = await service.get_callback(tenant, share=share)
                shown = {"tenant": tenant.name, "url": current.Url or None, "commands": current.CallbackCommandList}
                print(json.dumps(shown, indent=2))
                return 0
            commands = args.commands or default_commands()
            done = await service.register_callback(tenant, args.url, commands, share=share)
        except GatewayError as exc:
            print(f"gateway: {exc.code}: {exc.detail}", file=sys.stderr)
            return 1
    print(f"callback URL {done} for tenant {tenant.name}: {args.url} ({len(commands)} commands, signed with its token)")
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="gateway", description="Live Room Gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the service"), ("demo", "run on an embedded default with the emulator")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default=None)
        sub.add_argument("--port", type=int, default=None)
    emu = commands.add_parser("emulator", help="run the Live Engine emulator alone")
    # the emulator's own options (live-engine-emulator --help), declared here so that `gateway
    # --help` works without the emulator package
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=9100)
    emu.add_argument("--config", default=None, help="register the tenants of this gateway config")
    emu.add_argument("--rooms", type=int, default=3, help="rooms room-1..room-N per app")
    emu.add_argument("--latency-ms", type=float, default=0.0, help="added to every call")
    emu.add_argument("--no-rate-limit", action="store_true", help="do not answer 60007 (benchmarks)")
    spec = commands.add_parser("openapi", help="print the OpenAPI document")
    spec.add_argument("--format", choices=("yaml", "json"), default="yaml")
    settings_parser = commands.add_parser("callbacks", help="Tencent's callback settings for a tenant")
    actions = settings_parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="where Tencent sends the tenant's callbacks (get_callback)")
    show.add_argument("--tenant", required=True)
    register = actions.add_parser(
        "register", help="point the tenant's callbacks at the gateway, signed with its callback token"
    )
    register.add_argument("--tenant", required=True)
    register.add_argument(
        "--url", required=True, help="this gateway's https://…/v1/callbacks/tencent, as Tencent reaches it"
    )
    register.add_argument(
        "--command",
        action="append",
        dest="commands",
        help="a callback command to receive (repeat it; default: every one the gateway knows)",
    )
    args = parser.parse_args(argv)

    if args.command in ("demo", "emulator") and not _emulator_installed():
        print(EMULATOR_MISSING.format(command=args.command), file=sys.stderr)
        return 2
    try:
        if args.command == "openapi":
            return openapi(args.format)
        if args.command == "emulator":
            _run(_emulator(args, env))
            return 0
        if args.command == "callbacks":
            outcome: list[int] = []

            async def configure() -> None:
                outcome.append(await _callbacks(args, settings_from_env(env), env))

            _run(configure())
            return outcome[0]
        if args.command == "demo":
            settings = settings_from_env(env, host=args.host or "127.0.0.1", port=args.port)
            _run(_demo(settings, env))
            return 0
        return serve(settings_from_env(env, host=args.host, port=args.port), env)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
