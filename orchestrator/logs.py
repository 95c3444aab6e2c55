"""JSON-lines logging on stderr: one object per line, a stable ``action``, ids as fields.

Only entry points call ``configure``. Modules log with ``log.info("...%s", x, extra=fields(
"job.published", job=..., account=...))``. As a last line of defence the formatter masks
anything shaped like a TikTok token or an upload token, so a mistake elsewhere does not put
a credential into the journal.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_TOKEN_SHAPES = re.compile(
    r"\b(act|rft|clt)\.[A-Za-z0-9._~+/=-]{6,}|(upload_token=)[^&\s\"']+|(Bearer\s+)[^\s\"']+"
)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def mask_secrets(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(1):
            return f"{match.group(1)}.***"
        return f"{match.group(2) or match.group(3)}***"

    return _TOKEN_SHAPES.sub(repl, text)


def fields(action: str, **ids: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call: a stable action name and the ids it concerns."""
    return {"action": action, **{k: v for k, v in ids.items() if v is not None}}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "action": getattr(record, "action", None) or "log",
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_secrets(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO, upload tokens included.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # APScheduler narrates every job it adds; our own log lines say what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # aiosqlite narrates every statement at DEBUG, parameters (sealed tokens) included.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    logging.Formatter.converter = time.gmtime
