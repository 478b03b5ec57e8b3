"""What one benchmark request recorded: when it was sent and when each piece of output arrived.

Every target (an HTTP server streaming tokens, or an in-process peer stepping its own decode
loop) produces these, and `metrics` turns them into TTFT, TPOT, ITL and throughput. Times are
`time.perf_counter()` seconds; only differences between them are ever used.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: the prompt and how many tokens to ask for."""

    prompt: str
    prompt_len: int  # tokens, counted with the model's tokenizer
    output_len: int  # max_new_tokens asked for (the reference answer's length for ShareGPT)


@dataclass
class RequestRecord:
    """The outcome of one request as the client saw it."""

    prompt_len: int
    send_time_s: float
    # Arrival time of every streamed chunk that carried output (usually one token each).
    chunk_times_s: list[float] = field(default_factory=list)
    end_time_s: float = 0.0  # when the response was complete
    output_tokens: int = 0  # generated tokens (server-reported, else counted)
    generated_text: str = ""
    finish_reason: str = ""  # as the target said: "length", "stop"/"eos_token", ...
    success: bool = False
    error: str = ""

    @property
    def ttft_s(self) -> float:
        """Time to first token: request sent to first output chunk (to the end of the response
        when the first token ended it without text, e.g. an immediate EOS)."""
        first_s = self.chunk_times_s[0] if self.chunk_times_s else self.end_time_s
        return first_s - self.send_time_s

    @property
    def e2e_latency_s(self) -> float:
        return self.end_time_s - self.send_time_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None for single-token outputs."""
        if self.output_tokens < 2:
            return None
        return (self.e2e_latency_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        """Gaps between consecutive output chunks (inter-token latencies)."""
        times = self.chunk_times_s
        return [later - earlier for earlier, later in zip(times, times[1:])]
