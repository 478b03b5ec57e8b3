"""Per-API reading of streamed events: which text each event carries, and the server's count
of generated tokens when it reports one.

Request bodies ask for greedy decoding (the benchmarks compare speed at identical work, and
greedy is what every peer can do) and for the server's token count: TGI's `details`, OpenAI's
`stream_options.include_usage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ferrite_benchmark.records import BenchRequest


@dataclass(frozen=True)
class Chunk:
    text: str
    carries_output: bool  # a generated token arrived with this event (timestamp it)
    reported_output_tokens: int | None = None  # the server's total, on the final event
    finish_reason: str | None = None  # on the event that ends the answer


class ApiDialect(Protocol):
    path: str

    def body(self, request: BenchRequest, model: str) -> dict[str, Any]: ...

    def read(self, event: dict[str, Any]) -> Chunk: ...


class TgiDialect:
    """TGI `/generate_stream`: one event per token (special tokens such as EOS included)."""

    path = "/generate_stream"

    def body(self, request: BenchRequest, model: str) -> dict[str, Any]:
        params = {"max_new_tokens": request.output_len, "do_sample": False, "details": True}
        return {"inputs": request.prompt, "parameters": params}

    def read(self, event: dict[str, Any]) -> Chunk:
        token = event.get("token") or {}
        text = "" if token.get("special") else str(token.get("text", ""))
        details = event.get("details") or {}
        return Chunk(text, bool(token), details.get("generated_tokens"), details.get("finish_reason"))


def _usage_tokens(event: dict[str, Any]) -> int | None:
    usage = event.get("usage") or {}
    return usage.get("completion_tokens")


class OpenAiCompletionsDialect:
    path = "/v1/completions"

    def body(self, request: BenchRequest, model: str) -> dict[str, Any]:
        return {
            "model": model, "prompt": request.prompt, "max_tokens": request.output_len,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
        }

    def read(self, event: dict[str, Any]) -> Chunk:
        choices = event.get("choices") or [{}]
        text = str(choices[0].get("text") or "")
        return Chunk(text, bool(text), _usage_tokens(event), choices[0].get("finish_reason"))


class OpenAiChatDialect:
    path = "/v1/chat/completions"

    def body(self, request: BenchRequest, model: str) -> dict[str, Any]:
        return {
            "model": model, "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True},
        }

    def read(self, event: dict[str, Any]) -> Chunk:
        choices = event.get("choices") or [{}]
        text = str((choices[0].get("delta") or {}).get("content") or "")
        return Chunk(text, bool(text), _usage_tokens(event), choices[0].get("finish_reason"))


DIALECTS: dict[str, type[ApiDialect]] = {
    "tgi": TgiDialect,
    "openai-completions": OpenAiCompletionsDialect,
    "openai-chat": OpenAiChatDialect,
}
