"""Config reload: the tenants-and-callers file (and the secret-key files it names) re-read when
they change on disk, without a restart.

Kubernetes updates a mounted Secret by swapping a symlink, so changes are found by content (a
hash), not by modification time. A new file that loads is swapped in whole: in-flight requests
keep the tenant they resolved, later ones see the new config. One that does not load is refused
with one log line naming the field, and the old config keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.errors import ConfigError
from gateway.tenants import Directory, load_directory

log = logging.getLogger("gateway.reload")


class ConfigWatcher:
    def __init__(
        self,
        *,
        path: str,
        env: Mapping[str, str],
        current: Directory,
        apply: Callable[[Directory], None],
        interval: float,
    ) -> None:
        self._path = path
        self._env = env
        self._apply = apply
        self._interval = interval
        # The secret-key files the config names count too (a rotated key in a mounted Secret).
        self._files = current.sources or (path,)
        self._seen = self._fingerprint()
        self.reloads = 0
        self.refusals = 0

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in self._files:
            try:
                digest.update(Path(name).read_bytes())
            except OSError:
                digest.update(b"\0missing\0" + name.encode())
        return digest.hexdigest()

    def check(self) -> bool:
        """Reload if the files changed; True when a new config was applied."""
        now = self._fingerprint()
        if now == self._seen:
            return False
        self._seen = now
        try:
            directory = load_directory(self._path, self._env)
        except ConfigError as exc:
            self.refusals += 1
            log.error(  # noqa: TRY400 - the reason names the field; a traceback would add nothing
                "config reload refused, the previous config keeps serving", extra={"fields": {"reason": str(exc)}}
            )
            return False
        self._apply(directory)
        self._files = directory.sources
        self._seen = self._fingerprint()
        self.reloads += 1
        log.info(
            "config reloaded",
            extra={"fields": {"tenants": sorted(directory.tenants), "callers": len(directory.callers)}},
        )
        return True

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            self.check()  # a few small file reads: cheap enough for the event loop
