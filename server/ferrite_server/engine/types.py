"""Engine-side request and step types: what the gRPC service maps the proto to and from.

These are plain, immutable descriptions of one step's work and its results. The service
(`service.py`) converts proto messages into these and back; nothing below the service imports
the generated proto code, so the engine can be driven directly in tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grammar:
    """Structured output: every generated token keeps the output a prefix of the grammar's
    language. Hashable: the shard's compiled-grammar cache is keyed by it."""

    kind: str  # "json" (value: a JSON schema) or "regex"
    value: str


@dataclass(frozen=True)
class SamplingParams:
    """Hugging Face / TGI sampling semantics; neutral values mean "off"."""

    do_sample: bool = False
    temperature: float = 1.0  # 0 or 1: unchanged logits
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 0 or 1: off
    typical_p: float = 1.0  # 0 or 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # over prompt + generated tokens; 0 or 1: off
    frequency_penalty: float = 0.0  # over generated tokens
    presence_penalty: float = 0.0  # over generated tokens
    seed: int | None = None  # None: the shard draws one
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token_id, additive bias)
    watermark: bool = False  # greenlist bias keyed on the previous token (sampling/watermark.py)
    grammar: Grammar | None = None  # None: unconstrained


@dataclass(frozen=True)
class StoppingParams:
    max_new_tokens: int = 20
    ignore_eos: bool = False


@dataclass(frozen=True)
class RequestParams:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stopping: StoppingParams = field(default_factory=StoppingParams)
    top_n_tokens: int = 0
    prompt_logprobs: bool = False
    adapter_id: str = ""  # LoRA adapter name; "": the base model


@dataclass(frozen=True)
class NewRequest:
    """A request the engine does not hold, with the whole token history the router owns."""

    request_id: int
    token_ids: tuple[int, ...]  # prompt, then tokens generated before a preemption
    num_prompt_tokens: int  # token_ids[:num_prompt_tokens] is the prompt
    num_cached_tokens: int  # leading tokens whose K/V are already in block_table's blocks
    num_scheduled_tokens: int  # computed now, from num_cached_tokens on
    block_table: tuple[int, ...]
    params: RequestParams | None  # None (a malformed request) is rejected


@dataclass(frozen=True)
class RunningRequest:
    """A request the engine holds: only what changed since its previous step."""

    request_id: int
    new_token_ids: tuple[int, ...]  # appended by the router (normally the last sampled token)
    new_block_ids: tuple[int, ...]  # appended to its block table
    num_scheduled_tokens: int  # computed now, continuing where the previous step stopped
    # KV slots reserved after them for proposed tokens (speculative decoding); 0: none.
    num_lookahead_tokens: int = 0
    # Asynchronous scheduling: the router planned this step before it saw the request's
    # previous generation; the shard appends those tokens itself (new_token_ids is empty).
    append_generated_tokens: bool = False


@dataclass(frozen=True)
class StepInput:
    """One forward over the scheduled tokens of new and running requests (as diffs)."""

    new_requests: tuple[NewRequest, ...] = ()
    running_requests: tuple[RunningRequest, ...] = ()
    release_request_ids: tuple[int, ...] = ()


class FinishReason(enum.IntEnum):
    NONE = 0
    EOS = 1
    LENGTH = 2


@dataclass(frozen=True)
class GeneratedToken:
    token_id: int
    logprob: float  # log-softmax of the raw logits
    top_tokens: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), most likely first


@dataclass(frozen=True)
class Generation:
    request_id: int
    tokens: tuple[GeneratedToken, ...] = ()
    prompt_logprobs: tuple[float, ...] = ()  # aligned with the chunk's input_ids; NaN for token 0
    finish_reason: FinishReason = FinishReason.NONE
    error: str = ""  # non-empty: this request was rejected and forgotten; others ran
    num_proposed_tokens: int = 0  # speculative proposals verified in this step


@dataclass(frozen=True)
class StepTimings:
    forward_ns: int = 0
    sampling_ns: int = 0
    total_ns: int = 0
    # time.perf_counter_ns() when the forward began (sampling follows it at once); 0 when no
    # forward ran. Lets tracing place forward / sampling spans on the timeline.
    forward_start_ns: int = 0


@dataclass(frozen=True)
class StepOutput:
    generations: tuple[Generation, ...]
    timings: StepTimings


@dataclass(frozen=True)
class EngineInfo:
    """Model facts for the Info RPC (see InfoResponse in the proto for each field)."""

    model_id: str
    architecture: str
    dtype: str
    device: str
    block_size: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int
    world_size: int
    attention_backend: str
    quantization: str = ""
    kv_cache_dtype: str = "auto"  # "auto" (the compute dtype) or "fp8"
    supports_chunked_prefill: bool = True
    supports_prompt_logprobs: bool = True
    max_top_n_tokens: int = 20
    # "native" (a ferrite model file) or "transformers" (the fallback for other causal LMs).
    model_implementation: str = "native"
    # Every rank's gRPC endpoint (set by the shard's start-up, not the engine; see endpoints.py).
    rank_endpoints: tuple[str, ...] = ()
    lora_adapters: tuple[str, ...] = ()  # LoRA adapter names, in index order


@dataclass(frozen=True)
class WarmupResult:
    num_blocks: int
    max_supported_total_tokens: int
    model_memory_bytes: int
    kv_cache_memory_bytes: int
    peak_activation_memory_bytes: int
