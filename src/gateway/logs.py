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


def configure(level: str) -> None:
    """Send every logger's records to stderr as JSON at ``level`` (GATEWAY_LOG_LEVEL)."""
    # Records need no thread or process names: the JSON lines do not carry them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
