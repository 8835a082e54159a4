"""Contrast: a generic gateway's fixed-window Redis limit (INCR per one-second window, shared by
4 workers) at 3x the budget, against the same emulator. It lets 200 calls through at the end of
one window and 200 more at the start of the next, so a sliding second at Tencent sees up to 400.

    python -m bench fixed_window      (env: SECONDS=10 RATE=600)
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import httpx
import redis.asyncio as aioredis
from tests.redis_servers import standalone
from tests.support import APP_ID, KEY
from TLSSigAPIv2 import TLSSigAPIv2

from bench._harness import GATEWAY, free_port, process


async def run(emulator: str, redis_url: str, rate: float, seconds: float) -> None:
    sig = TLSSigAPIv2(APP_ID, KEY).gen_sig("administrator", 86400)
    url = (
        f"{emulator}/v4/live_engine_http_srv/update_room_info?sdkappid={APP_ID}&identifier=administrator"
        f"&usersig={sig}&random=7&contenttype=json"
    )
    body = b'{"RoomInfo":{"RoomId":"room-1","ActivityStatus":2}}'
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64))
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            window = f"fw:{int(time.time())}"
            count = await client.incr(window)
            if count == 1:
                await client.expire(window, 2)
            if count <= 200:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    await client.aclose()


def main() -> None:
    seconds, rate = float(os.environ.get("SECONDS", "10")), float(os.environ.get("RATE", "600"))
    emu_port = free_port()
    with (
        process(
            [*GATEWAY, "emulator", "--port", str(emu_port), "--no-rate-limit"],
            port=emu_port,
            env={"EMULATOR_SECRET_KEY": KEY},
        ),
        standalone() as redis,
    ):
        emulator = f"http://127.0.0.1:{emu_port}"
        asyncio.run(run(emulator, redis.url, rate, seconds))
        stats = httpx.get(f"{emulator}/_emulator/stats").json()
    key = f"{APP_ID}:update_room_info"
    print(
        f"fixed window (INCR per second), {rate:.0f}/s offered for {seconds:.0f} s: busiest sliding second at "
        f"Tencent {stats['busiest_second'][key]} (limit 200)"
    )


if __name__ == "__main__":
    main()
