"""The emulator over real HTTP (aiohttp.web), with a small JSON control API for tests.

Tencent's side: ``POST /v4/live_engine_http_srv/{command}?sdkappid=&identifier=&usersig=&random=&contenttype=json``,
and ``/v4/live_config/{command}`` (the callback settings). Writes owe the app a signed callback
when it registered a URL for that command; it is POSTed after the reply, as Tencent does.
Control: ``GET /_emulator/stats``, ``POST /_emulator/faults``, ``POST /_emulator/fail_next``,
``POST /_emulator/reset``, ``POST /_emulator/rooms``, ``POST /_emulator/members`` (see the README's
emulator section).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from live_engine_emulator.state import APPLY_THEN_DROP, DROP, HTTP_502, PASS, Callback, Emulator

EMULATOR = web.AppKey("emulator", Emulator)
SESSION = web.AppKey("session", aiohttp.ClientSession)
PENDING: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("pending")


async def _send_callback(app: web.Application, callback: Callback) -> None:
    """POST a callback as Tencent does (2 s timeout, no retry); counted by outcome."""
    emu = app[EMULATOR]
    try:
        async with app[SESSION].post(
            callback.url,
            data=callback.body,
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=2.0),
        ) as reply:
            await reply.read()
            emu.callbacks_sent["ok" if reply.status == 200 else f"http_{reply.status}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        emu.callbacks_sent[type(exc).__name__] += 1


async def _tencent(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    api = request.match_info["command"]
    query = dict(request.query)
    emu.arrive(api, query)
    raw = await request.read()
    if emu.faults.latency:
        await asyncio.sleep(emu.faults.latency)
    fault = emu.fault_for(api)
    if fault == HTTP_502:
        return web.Response(status=502, text="Bad Gateway")
    if fault != DROP:
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        service = request.path.split("/")[2]
        reply = emu.handle(api, query, body, injected=fault if fault and fault > 0 else None, service=service)
    if emu.faults.reply_latency:
        await asyncio.sleep(emu.faults.reply_latency)
    for callback in emu.take_outbox():  # sent after the reply, as Tencent calls back after the event
        task = asyncio.create_task(_send_callback(request.app, callback))
        request.app[PENDING].add(task)
        task.add_done_callback(request.app[PENDING].discard)
    if fault in (DROP, APPLY_THEN_DROP):
        assert request.transport is not None
        request.transport.close()  # a dropped connection: no status line at all
        return web.Response()
    return web.Response(body=json.dumps(reply).encode(), content_type="application/json")


async def _watch_stalls(emu: Emulator, every: float = 0.02) -> None:
    """Record when this event loop ran late (``Emulator.stall``): arrivals are stamped on it, so a
    stall of the process (the machine, a collection) bunches the stamps of the calls that came
    meanwhile, and a sliding second can count more than were sent in one."""
    while True:
        start = emu.clock()
        await asyncio.sleep(every)
        emu.stall(start + every, emu.clock() - start - every)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].stats())


async def _faults(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    spec = await request.json()
    f = emu.faults
    f.latency = float(spec.get("latency_ms", 0)) / 1000
    f.reply_latency = float(spec.get("reply_latency_ms", 0)) / 1000
    f.error_rate = float(spec.get("error_rate", 0))
    f.error_code = int(spec.get("error_code", 100001))
    f.http_502_rate = float(spec.get("http_502_rate", 0))
    f.drop_rate = float(spec.get("drop_rate", 0))
    return web.json_response({"ok": True})


_FAULTS = {"http_502": HTTP_502, "drop": DROP, "apply_then_drop": APPLY_THEN_DROP, "pass": PASS}


async def _fail_next(request: web.Request) -> web.Response:
    """The next calls' faults: ErrorCodes, or the faults by name ("apply_then_drop": the call is
    applied and its reply lost) or number (``state.HTTP_502`` ...)."""
    spec = await request.json()
    codes = [_FAULTS[c] if isinstance(c, str) else int(c) for c in spec["codes"]]
    request.app[EMULATOR].fail_next(str(spec["api"]), *codes)
    return web.json_response({"ok": True})


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset_counters()
    return web.json_response({"ok": True})


async def _rooms(request: web.Request) -> web.Response:
    spec = await request.json()
    room = request.app[EMULATOR].add_room(int(spec.pop("sdkappid")), str(spec.pop("RoomId")), **spec)
    return web.json_response(room)


async def _members(request: web.Request) -> web.Response:
    spec = await request.json()
    request.app[EMULATOR].add_members(int(spec["sdkappid"]), str(spec["RoomId"]), [str(a) for a in spec["accounts"]])
    return web.json_response({"ok": True})


def create_emulator_app(emulator: Emulator) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[EMULATOR] = emulator
    app[PENDING] = set()

    async def session(app: web.Application) -> AsyncIterator[None]:
        watch = asyncio.create_task(_watch_stalls(emulator))
        async with aiohttp.ClientSession() as client:
            app[SESSION] = client
            yield
            watch.cancel()
            pending: set[asyncio.Task[None]] = app[PENDING]
            for task in pending.copy():
                task.cancel()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v4/live_engine_http_srv/{command}", _tencent)
    app.router.add_post("/v4/live_config/{command}", _tencent)
    app.router.add_post("/v4/room_engine_http_mic/{command}", _tencent)
    app.router.add_post("/_emulator/members", _members)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_post("/_emulator/faults", _faults)
    app.router.add_post("/_emulator/fail_next", _fail_next)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_post("/_emulator/rooms", _rooms)
    return app


@asynccontextmanager
async def serve_emulator(
    emulator: Emulator, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Run the emulator in the current event loop (over TLS with ``ssl_context``); yields its base URL."""
    runner = web.AppRunner(create_emulator_app(emulator), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    bound = sock.getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://{host}:{bound}"
    finally:
        await runner.cleanup()
