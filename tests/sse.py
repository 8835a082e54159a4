"""A small Server-Sent Events client for the tests: frames parsed as the HTML spec parses them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx


class Frame(NamedTuple):
    """One dispatched block: its fields (``data`` joined with newlines) and its comments."""

    id: str | None
    event: str | None
    data: str | None
    comments: tuple[str, ...]

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


class Stream:
    """An open event stream: ``next()`` returns the next frame, within ``timeout`` seconds."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.last_id: str | None = None  # as an EventSource keeps it

    async def next(self, within: float = 5.0) -> Frame:
        fields: dict[str, list[str]] = {}
        comments: list[str] = []
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    if fields or comments:
                        frame = Frame(
                            fields.get("id", [None])[-1],
                            fields.get("event", [None])[-1],
                            "\n".join(fields["data"]) if "data" in fields else None,
                            tuple(comments),
                        )
                        if frame.id is not None:
                            self.last_id = frame.id
                        return frame
                    continue
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
        raise EOFError("the stream ended")

    async def event(self, within: float = 5.0) -> Frame:
        """The next frame that carries data (an event or a notice), skipping heartbeats."""
        while True:
            frame = await self.next(within)
            if frame.data is not None:
                return frame

    async def ended(self, within: float = 5.0) -> bool:
        """Whether the server ends the stream within ``within`` seconds (frames before the end are skipped)."""
        try:
            while True:
                await self.next(within)
        except EOFError:
            return True
        except TimeoutError:
            return False


@contextlib.asynccontextmanager
async def subscribe(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with client.stream("GET", path, headers=headers, params=params, timeout=30) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        while "connected" not in (await stream.next()).comments:  # (heartbeats until the feed follows)
            pass
        yield stream
