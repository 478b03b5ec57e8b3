"""Log record formats of the shard: every record is exactly ONE line, because the launcher
forwards its children's output line by line (tagging each with its origin)."""

from __future__ import annotations

import json
import logging


class OneLineFormatter(logging.Formatter):
    """`LEVEL logger: message`, tracebacks folded into the same line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record (`--json-output`), in the router's field names: the launcher
    adds `origin` to objects it recognizes instead of wrapping them."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "timestamp": record.created,
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False)
