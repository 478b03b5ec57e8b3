"""Turning a static batch's per-step clock into per-request records.

A static batch runs every row until the slowest one is done; a row's output ends at its EOS or
its own `max_new_tokens`. Its token timestamps are the batch's step times up to that point, so
TTFT, TPOT and ITL mean the same as for a server.
"""

from __future__ import annotations

from collections.abc import Sequence

from ferrite_benchmark.records import BenchRequest, RequestRecord


def chunks(requests: Sequence[BenchRequest], batch_size: int) -> list[list[BenchRequest]]:
    """Consecutive batches in arrival order (a static batcher does not reorder)."""
    return [list(requests[i:i + batch_size]) for i in range(0, len(requests), batch_size)]


def row_output_len(new_token_ids: Sequence[int], eos_ids: frozenset[int], max_new_tokens: int) -> int:
    """Tokens a row generated: up to and including its first EOS, at most max_new_tokens."""
    for position, token_id in enumerate(new_token_ids[:max_new_tokens]):
        if token_id in eos_ids:
            return position + 1
    return min(len(new_token_ids), max_new_tokens)


def record_from_steps(request: BenchRequest, send_time_s: float, step_times_s: Sequence[float],
                      output_tokens: int, text: str) -> RequestRecord:
    """A record for a row that produced `output_tokens` tokens at the given step times."""
    record = RequestRecord(prompt_len=request.prompt_len, send_time_s=send_time_s)
    record.chunk_times_s = list(step_times_s[:output_tokens])
    record.output_tokens = output_tokens
    record.end_time_s = record.chunk_times_s[-1] if record.chunk_times_s else send_time_s
    record.generated_text = text
    record.finish_reason = "length" if output_tokens >= request.output_len else "eos"
    record.success = output_tokens > 0 and len(record.chunk_times_s) == output_tokens
    if not record.success:
        record.error = f"{output_tokens} tokens but {len(record.chunk_times_s)} step times"
    return record
