"""One streaming HTTP request, timed: the client every HTTP target is driven with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ferrite_benchmark.backends.decoders import DIALECTS, ApiDialect
from ferrite_benchmark.backends.sse import StreamError, sse_json_events
from ferrite_benchmark.records import BenchRequest, RequestRecord
from ferrite_benchmark.tokenizer import TokenCounter

API_NAMES = tuple(DIALECTS)


@dataclass(frozen=True)
class BackendConfig:
    url: str  # the server's base URL, e.g. http://127.0.0.1:3000
    api: str = "tgi"  # one of API_NAMES
    model: str = "default"  # the OpenAI `model` field
    # Server-specific fields merged into every body (e.g. llama.cpp's repeat_penalty=1 so that
    # its temperature-0 decoding is plain greedy like everyone else's).
    extra_body: dict[str, Any] = field(default_factory=dict)


class HttpBackend:
    def __init__(self, config: BackendConfig, count_tokens: TokenCounter) -> None:
        if config.api not in DIALECTS:
            raise ValueError(f"unknown API {config.api!r}; expected one of {API_NAMES}")
        self.config = config
        self.dialect: ApiDialect = DIALECTS[config.api]()
        self.count_tokens = count_tokens

    async def send(self, session: aiohttp.ClientSession, request: BenchRequest) -> RequestRecord:
        body = {**self.dialect.body(request, self.config.model), **self.config.extra_body}
        url = self.config.url.rstrip("/") + self.dialect.path
        record = RequestRecord(prompt_len=request.prompt_len, send_time_s=time.perf_counter())
        try:
            await self._stream(session, url, body, record)
        except (aiohttp.ClientError, StreamError, TimeoutError) as error:
            record.success, record.error = False, f"{type(error).__name__}: {error}"
        record.end_time_s = time.perf_counter()
        return record

    async def _stream(
        self, session: aiohttp.ClientSession, url: str, body: dict[str, Any], record: RequestRecord
    ) -> None:
        pieces: list[str] = []
        reported: int | None = None
        async with session.post(url, json=body) as response:
            if response.status != 200:
                text = await response.text()
                raise StreamError(f"HTTP {response.status}: {text[:300]}")
            async for event in sse_json_events(response):
                now_s = time.perf_counter()
                chunk = self.dialect.read(event)
                if chunk.carries_output:
                    record.chunk_times_s.append(now_s)
                pieces.append(chunk.text)
                if chunk.reported_output_tokens is not None:
                    reported = chunk.reported_output_tokens
                if chunk.finish_reason:
                    record.finish_reason = str(chunk.finish_reason)
        record.generated_text = "".join(pieces)
        if not record.chunk_times_s and not record.finish_reason:
            raise StreamError("the stream ended without output or a finish reason")
        # No output chunk but a finish reason: the first token ended the request (an EOS, which
        # has no text). That is a completed request, not a lost one.
        # Without a server count, re-tokenize the text (what vLLM's benchmark does).
        record.output_tokens = reported if reported is not None else self.count_tokens(record.generated_text)
        record.success = True


def make_backend(config: BackendConfig, count_tokens: TokenCounter) -> HttpBackend:
    return HttpBackend(config, count_tokens)
