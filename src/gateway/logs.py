"""JSON logs, one object per line, for the gateway and the libraries under it.

Standard-library logging with a small msgspec formatter: uvicorn and redis-py log through
``logging`` already, so every line the process writes is JSON without a second logging system.
A record's ``fields`` (``extra={"fields": {...}}``) become top-level keys. Nothing secret is ever
passed in: tokens, secret keys and UserSigs are not fields anywhere.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it was raised, never the message: messages may carry request data
            # (an HTTP client's error can quote the signed URL).
            entry["error"] = record.exc_info[0].__name__
            frames = traceback.extract_tb(record.exc_info[2])[-8:]
            entry["where"] = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]
        return _encode(entry).decode()


class AccessLog:
    """The access line, one per request: what ``logger.info(msg, extra={"fields": ...})`` writes.

    When the process logs through ``configure``'s handler alone (as ``gateway serve`` does), the
    line is encoded and written straight to that handler's stream: a LogRecord, the handler chain
    and a strftime per line cost ~140 µs of a request's ~700 µs at one caller (BENCHMARKS.md).
    Otherwise (tests capturing logs, another configuration) it goes through logging as usual.
    """

    def __init__(self, logger: logging.Logger, msg: str) -> None:
        self._logger = logger
        self._msg = msg
        self._second = -1
        self._prefix = ""

    def __call__(self, fields: dict[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _HANDLER
        if handler is None or not self._direct(handler):
            extra = {"fields": fields}
            logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, self._msg, (), None, extra=extra))
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "ts": f"{self._prefix}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": logger.name,
            "msg": self._msg,
            **fields,
        }
        line = _encode(entry).decode() + handler.terminator
        handler.acquire()
        try:
            handler.stream.write(line)
            handler.stream.flush()
        finally:
            handler.release()

    def _direct(self, handler: logging.StreamHandler[Any]) -> bool:
        """Whether logging would send this logger's INFO records to ``handler`` alone, unfiltered."""
        logger = self._logger
        return (
            not logger.handlers
            and not logger.filters
            and logger.propagate
            and logger.parent is logging.root
            and logging.root.handlers == [handler]
            and not handler.filters
            and handler.level <= logging.INFO
        )


_HANDLER: logging.StreamHandler[Any] | None = None  # configure()'s, while it is in place


def configure(level: str) -> None:
    """Send every logger's records to stderr as JSON at ``level`` (GATEWAY_LOG_LEVEL)."""
    global _HANDLER  # noqa: PLW0603 - the one handler this module installs
    # Records need no thread or process names: the JSON lines do not carry them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _HANDLER = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
