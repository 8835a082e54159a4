"""``live-engine-emulator``: the emulator alone, on a port, for anyone's tests.

    live-engine-emulator --port 9100 --app 1400000001:SECRET_KEY[:ADMIN] --rooms 3

Without ``--app`` it registers one app, 1400000001, admin ``administrator``, its key from
``EMULATOR_SECRET_KEY`` (or ``emulator-secret-key``). Control it over ``/_emulator/*`` (README).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence

from live_engine_emulator.server import serve_emulator
from live_engine_emulator.state import Emulator

DEFAULT_SDKAPPID = 1400000001
DEFAULT_ADMIN = "administrator"


def parse_app(spec: str) -> tuple[int, str, str]:
    """``SDKAPPID:KEY[:ADMIN]`` as (sdkappid, key, admin)."""
    sdkappid, _, rest = spec.partition(":")
    key, _, admin = rest.partition(":")
    if not sdkappid.isdigit() or not key:
        raise argparse.ArgumentTypeError(f"{spec!r} is not SDKAPPID:KEY[:ADMIN]")
    return int(sdkappid), key, admin or DEFAULT_ADMIN


def register(emulator: Emulator, apps: Sequence[tuple[int, str, str]], env: Mapping[str, str]) -> list[str]:
    """Register ``apps`` (or the default one); describe them."""
    if not apps:
        key = env.get("EMULATOR_SECRET_KEY", "emulator-secret-key")
        emulator.add_app(DEFAULT_SDKAPPID, key, {DEFAULT_ADMIN})
        return [f"sdkappid {DEFAULT_SDKAPPID}, admin {DEFAULT_ADMIN!r}, key from EMULATOR_SECRET_KEY (or the default)"]
    for sdkappid, key, admin in apps:
        emulator.add_app(sdkappid, key, {admin})
    return [f"sdkappid {sdkappid}, admin {admin!r}" for sdkappid, _, admin in apps]


async def serve_forever(emulator: Emulator, host: str, port: int, *, rooms: int, described: Sequence[str]) -> None:
    """Give every app rooms ``room-1..room-N``, serve until cancelled, print where."""
    for app in list(emulator.apps):
        for n in range(1, rooms + 1):
            emulator.add_room(app, f"room-{n}")
    async with serve_emulator(emulator, host, port) as base_url:
        print(f"Live Engine emulator on {base_url}; apps: " + "; ".join(described), flush=True)
        await asyncio.Event().wait()


def parser(prog: str = "live-engine-emulator") -> argparse.ArgumentParser:
    """The options of ``live-engine-emulator`` (``gateway emulator`` takes the same and ``--config``)."""
    parse = argparse.ArgumentParser(prog=prog, description="Tencent Live Engine REST API emulator")
    parse.add_argument("--host", default="127.0.0.1")
    parse.add_argument("--port", type=int, default=9100)
    parse.add_argument("--rooms", type=int, default=3, help="rooms room-1..room-N per app")
    parse.add_argument("--latency-ms", type=float, default=0.0, help="added to every call")
    parse.add_argument("--no-rate-limit", action="store_true", help="do not answer 60007 (benchmarks)")
    return parse


def configured(args: argparse.Namespace) -> Emulator:
    """An emulator with the knobs of the command line."""
    emulator = Emulator()
    emulator.enforce_rate_limit = not args.no_rate_limit
    emulator.faults.latency = args.latency_ms / 1000
    return emulator


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parse = parser()
    parse.add_argument("--app", action="append", type=parse_app, default=[], help="SDKAPPID:KEY[:ADMIN] (repeat it)")
    args = parse.parse_args(argv)
    emulator = configured(args)
    described = register(emulator, args.app, os.environ if env is None else env)
    try:
        asyncio.run(serve_forever(emulator, args.host, args.port, rooms=args.rooms, described=described))
    except KeyboardInterrupt:
        return 0
    return 0
