"""The shard's one typed, immutable configuration, built at the edge (cli.py).

This is the only module that reads environment variables: the standard torch.distributed ones
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE). Everything else
arrives as flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
ModelImplementationName = Literal["auto", "native", "transformers"]
AttentionBackendName = Literal["auto", "torch", "triton"]
QuantizeName = Literal[
    "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8", "gptq", "awq", "int8", "int4"
]
KVCacheDtypeName = Literal["auto", "fp8"]
SpeculativeMethodName = Literal["ngram", "draft"]

DEFAULT_BLOCK_SIZE_TOKENS = 16


@dataclass(frozen=True)
class DistributedConfig:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_world_size: int = 1  # ranks on this node (they share its CPU cores)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistributedConfig":
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", env.get("RANK", "0"))),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))),
        )


@dataclass(frozen=True)
class DistributedTimeouts:
    """How long a tensor-parallel group waits (flags, not environment)."""

    # One collective (all-reduce, all-gather): a rank that died or fell out of step turns into
    # an error, and the shard exits, within this time.
    collective_s: float = 120.0
    # Start-up: how long rank 0 waits for every rank (on every node) to join.
    rendezvous_s: float = 900.0


@dataclass(frozen=True)
class TcpListen:
    """Multi-node: serve gRPC on TCP too, for a router on another node."""

    host: str  # address to bind and advertise; must be reachable from the router's node
    port: int  # 0: any free port


@dataclass(frozen=True)
class TracingConfig:
    otlp_endpoint: str | None = None  # OTLP/gRPC collector, e.g. http://localhost:4317; None: off
    otlp_service_name: str = "ferrite.shard"


@dataclass(frozen=True)
class WatermarkConfig:
    """TGI's defaults (`--watermark-gamma`, `--watermark-delta`)."""

    gamma: float = 0.5  # share of the vocabulary in each greenlist, in (0, 1)
    delta: float = 2.0  # logit bias of greenlist tokens

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"watermark gamma must be in (0, 1), got {self.gamma}")
        if self.delta < 0.0:
            raise ValueError(f"watermark delta must be >= 0, got {self.delta}")


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds of one structured-output grammar (engine/grammar/compiler.py); beyond them the
    request gets a 422 naming the limit."""

    max_grammar_bytes: int = 256 * 1024  # the schema / regex text
    compile_timeout_s: float = 10.0  # CompileGrammar answers an error after this
    max_cached_grammars: int = 512
    max_lexer_states: int = 100_000  # llguidance's default is 250k (~1-2 kB each)
    max_grammar_symbols: int = 200_000  # llguidance's default is 500k


@dataclass(frozen=True)
class RopeOverride:
    """TGI's --rope-scaling / --rope-factor: replaces the checkpoint's RoPE scaling (its
    base frequency stays). Either flag alone: linear, factor 1.0 as TGI defaults them."""

    scaling: Literal["linear", "dynamic"] = "linear"
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.factor <= 0.0:
            raise ValueError(f"rope factor must be > 0, got {self.factor}")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters served beside the base model (`--lora-adapters`, lora/)."""

    # (name, source): source is a PEFT adapter directory or a hub id, in the order the shard
    # holds them (a request's adapter index is its position here).
    adapters: tuple[tuple[str, str], ...] = ()
    max_rank: int = 64  # an adapter of a higher rank stops start-up, naming it
    hub_cache_dir: Path | None = None  # hub downloads of adapters; None: huggingface_hub's


@dataclass(frozen=True)
class ShardConfig:
    model_id: Path  # a local directory with config.json + safetensors
    uds_path: Path  # unix socket this shard serves gRPC on
    dtype: DtypeName = "auto"  # auto: see engine/model_runner.resolve_dtype
    attention_backend: AttentionBackendName = "auto"
    kv_cache_memory_bytes: int | None = None  # CPU: bytes of KV; None -> derived
    block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS
    device: str | None = None  # None: cuda:<local_rank> when CUDA is available, else cpu
    distributed: DistributedConfig = DistributedConfig()
    distributed_timeouts: DistributedTimeouts = DistributedTimeouts()
    tcp_listen: TcpListen | None = None  # None: the unix socket only
    tracing: TracingConfig = TracingConfig()
    # None: the checkpoint's own quantization_config, if any (layers/quantization/config.py).
    quantize: QuantizeName | None = None
    kv_cache_dtype: KVCacheDtypeName = "auto"  # auto: the compute dtype; fp8: e4m3 with a scale
    # Decode batch sizes captured as CUDA graphs (CUDA + triton attention only). None: the
    # standard buckets up to the router's max batch size; empty: no graphs (eager decode).
    cuda_graph_batch_sizes: tuple[int, ...] | None = None
    # Greenlist watermark of requests that ask for it (`parameters.watermark`).
    watermark: WatermarkConfig = WatermarkConfig()
    # CUDA: share of the GPU's memory ferrite may use in total (TGI's --cuda-memory-fraction).
    cuda_memory_fraction: float = 0.9
    # CPU: steps of at most this many rows run on one torch thread (engine/host_cpu.StepThreads);
    # 0: every step on all threads. The launcher sets it (8) with passive or adaptive threads.
    cpu_single_thread_max_rows: int = 0
    # CPU, bfloat16 models: those small steps run on one or all threads, whichever their
    # measured times say is faster now (engine/step_thread_choice.py); the launcher sets it
    # with briefly spinning OpenMP threads (`--omp-wait-policy adaptive`).
    cpu_measured_step_threads: bool = False
    # CPU, bfloat16 Llama-family models: a step of decode tokens runs the whole decoder stack
    # in one native call (kernels/cpu/decoder_stack.cpp), compiled once per source, torch and
    # CPU into `native_kernel_dir`. Off: the Python layers (the launcher's
    # --disable-custom-kernels).
    cpu_native_decode: bool = True
    native_kernel_dir: Path = Path("~/.cache/ferrite/native-kernels").expanduser()
    # Run a checkpoint's own Python code (`auto_map`) on the transformers fallback.
    trust_remote_code: bool = False
    # None: the RoPE scaling in the checkpoint's config.json.
    rope_override: RopeOverride | None = None
    # auto: a ferrite model file when there is one, else the transformers fallback;
    # transformers: the fallback even for native families (to compare, or to work around one).
    model_implementation: ModelImplementationName = "auto"
    # How the shard proposes tokens where the router reserved lookahead slots; None: never.
    speculative_method: SpeculativeMethodName | None = None
    # speculative_method "draft": the draft model's local directory (same tokenizer).
    draft_model_id: Path | None = None
    grammar_limits: GrammarLimits = GrammarLimits()
    lora: LoraConfig = LoraConfig()
