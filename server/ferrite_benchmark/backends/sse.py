"""Server-sent events from an aiohttp response: the JSON payload of every `data:` line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

DONE_SENTINEL = "[DONE]"


class StreamError(RuntimeError):
    """The server sent an error event or something that is not an SSE JSON stream."""


async def sse_json_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Yield each `data:` payload as JSON until the stream (or OpenAI's `[DONE]`) ends.

    Lines are read as they arrive, so the caller can timestamp each event; comments,
    `event:`/`id:` lines and blank separators are skipped.
    """
    async for raw_line in response.content:
        line = raw_line.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == DONE_SENTINEL:
            return
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as error:
            raise StreamError(f"not JSON in the event stream: {payload[:200]!r}") from error
        if isinstance(event, dict) and event.get("error"):
            raise StreamError(f"server error event: {event['error']}")
        yield event
