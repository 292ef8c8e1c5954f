"""Log output: readable lines by default, one JSON object per line for log pipelines.

Access lines carry their fields in `record.access` (see `mirror.server.middleware`): the
text format prints them in a fixed order, the JSON format as keys of the object.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...}`, plus an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback: any client
    could flood the log that way. Such a request is the client's fault and has been
    answered with a 400 already, so it becomes one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "refused a malformed request: %s", (exc.message[:200],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, its time formatted once a second (with an access line per request,
    `time.strftime` per line adds up)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._formatted = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._formatted = super().formatTime(record, datefmt).rpartition(",")[0]
            self._second = second
        return f"{self._formatted},{int(record.msecs):03d}"


def configure(level: str, log_format: str) -> None:
    """Send every log line to stderr in `log_format` ("text" or "json") at `level`."""
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
