"""The shard's command-line flags, and the ShardConfig they make (`ferrite-server`'s parser;
cli.py runs the commands)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import get_args

from ferrite_server.config import (
    DEFAULT_BLOCK_SIZE_TOKENS,
    DistributedConfig,
    DistributedTimeouts,
    GrammarLimits,
    KVCacheDtypeName,
    LoraConfig,
    QuantizeName,
    RopeOverride,
    SpeculativeMethodName,
    ShardConfig,
    TcpListen,
    TracingConfig,
    WatermarkConfig,
)
from ferrite_server.lora.flags import add_lora_flags

DEFAULT_MODEL_CACHE_DIR = Path("~/.cache/ferrite/models")
_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_byte_size(text: str) -> int:
    """'1073741824', '2GiB', '500MB' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 1073741824, 2GiB, 500MB)")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def parse_cuda_graph_sizes(text: str) -> tuple[int, ...]:
    """"1,2,4,8" -> (1, 2, 4, 8); "0" (as in TGI) or "" -> () = no CUDA graphs."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cuda-graphs takes comma-separated batch sizes, e.g. 1,2,4,8 (got {text!r})"
        ) from None
    if any(size < 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"--cuda-graphs batch sizes must be >= 0 (got {text!r})")
    return tuple(size for size in sizes if size > 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferrite-server", description="ferrite model shard")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load a model and serve the shard gRPC API")
    serve.add_argument("--model-id", required=True, type=Path, help="local model directory")
    serve.add_argument("--uds-path", required=True, type=Path, help="unix socket to serve on")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                       help="auto: the checkpoint's dtype on GPU; on CPU bfloat16 where it has bf16 instructions, else float32")
    serve.add_argument("--attention-backend", choices=["auto", "torch", "triton"], default="auto")
    serve.add_argument("--kv-cache-memory", type=parse_byte_size, default=None,
                       help="bytes of KV cache (e.g. 2GiB); default: derived from free memory")
    serve.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE_TOKENS,
                       help="tokens per KV block")
    serve.add_argument("--quantize", choices=list(get_args(QuantizeName)), default=None,
                       help="quantize the weights at load (int8, int4, bitsandbytes*, fp8) or load a "
                       "GPTQ/AWQ checkpoint; default: the checkpoint's quantization_config")
    serve.add_argument("--kv-cache-dtype", choices=list(get_args(KVCacheDtypeName)),
                       default="auto", help="fp8: store K/V as float8 e4m3 with a scale")
    serve.add_argument("--model-implementation", choices=["auto", "native", "transformers"],
                       default="auto", help="auto: ferrite's own model file when the "
                       "architecture has one, else the transformers fallback")
    serve.add_argument("--trust-remote-code", action="store_true",
                       help="run a checkpoint's own Python code (auto_map) on the transformers "
                       "fallback")
    serve.add_argument("--rope-scaling", choices=["linear", "dynamic"], default=None,
                       help="replace the checkpoint's RoPE scaling (TGI's flag; with "
                       "--rope-factor, default 1.0)")
    serve.add_argument("--rope-factor", type=float, default=None,
                       help="RoPE scaling factor (TGI's flag; alone: linear scaling)")
    serve.add_argument("--cuda-graphs", type=parse_cuda_graph_sizes, default=None,
                       help="decode batch sizes to capture as CUDA graphs (CUDA, triton attention), "
                       "e.g. 1,2,4,8; 0 turns graphs off; default: buckets up to the max batch size")
    serve.add_argument("--speculative-method", choices=list(get_args(SpeculativeMethodName)),
                       default=None, help="propose tokens for the slots the router reserves "
                       "(--speculate): ngram = prompt lookup, draft = a smaller model "
                       "(--draft-model-id); default: no speculation")
    serve.add_argument("--draft-model-id", type=Path, default=None,
                       help="--speculative-method draft: local directory of a smaller causal LM "
                       "with the model's tokenizer")
    serve.add_argument("--max-grammar-bytes", type=int, default=GrammarLimits.max_grammar_bytes,
                       help="largest structured-output grammar (JSON schema / regex) accepted")
    serve.add_argument("--grammar-compile-timeout-s", type=float,
                       default=GrammarLimits.compile_timeout_s,
                       help="a grammar that does not compile within this is refused")
    _add_tensor_parallel_flags(serve)
    add_lora_flags(serve)
    serve.add_argument("--watermark-gamma", type=float, default=WatermarkConfig.gamma,
                       help="share of the vocabulary in each watermark greenlist")
    serve.add_argument("--watermark-delta", type=float, default=WatermarkConfig.delta,
                       help="logit bias of watermark greenlist tokens")
    serve.add_argument("--cuda-memory-fraction", type=float, default=ShardConfig.cuda_memory_fraction,
                       help="CUDA: share of the GPU's memory the shard may use in total")
    serve.add_argument("--cpu-single-thread-max-rows", type=int,
                       default=ShardConfig.cpu_single_thread_max_rows,
                       help="CPU: steps of at most this many rows run on one torch thread (0: never)")
    serve.add_argument("--cpu-measured-step-threads", action="store_true",
                       help="CPU, bfloat16 models: those small steps run on one or all threads, "
                            "whichever measures faster at the time")
    serve.add_argument("--no-cpu-native-decode", dest="cpu_native_decode", action="store_false",
                       help="CPU: run decode steps through the Python layers, not the native "
                            "decoder stack")
    serve.add_argument("--native-kernel-dir", type=Path, default=ShardConfig.native_kernel_dir,
                       help="where the native CPU kernels are compiled to (once per source, "
                            "torch and CPU)")
    serve.add_argument("--otlp-endpoint", default=None,
                       help="OTLP/gRPC collector to export step spans to (default: tracing off)")
    serve.add_argument("--otlp-service-name", default=TracingConfig.otlp_service_name,
                       help="service.name of the exported spans")
    _add_log_level(serve)
    prepare = commands.add_parser("prepare-model", help="resolve a model into a local directory")
    prepare.add_argument("--model-id", default=None, help="hub id or directory; default: bundled SmolLM2")
    prepare.add_argument("--revision", default=None)
    prepare.add_argument("--cache-dir", type=Path, default=DEFAULT_MODEL_CACHE_DIR)
    prepare.add_argument("--hub-cache-dir", type=Path, default=None,
                         help="Hugging Face hub cache for downloads (default: HF_HUB_CACHE / HF_HOME)")
    prepare.add_argument("--gguf-file", default=None,
                         help="the GGUF file to serve of a directory or hub repo holding several")
    _add_log_level(prepare)
    return parser


def _add_tensor_parallel_flags(parser: argparse.ArgumentParser) -> None:
    defaults = DistributedTimeouts()
    parser.add_argument("--collective-timeout-s", type=float, default=defaults.collective_s,
                        help="tensor parallelism: longest wait of one collective before the "
                             "shard gives up and exits")
    parser.add_argument("--rendezvous-timeout-s", type=float, default=defaults.rendezvous_s,
                        help="tensor parallelism: how long to wait for every rank to join")
    parser.add_argument("--grpc-tcp-port", type=int, default=None,
                        help="multi-node: also serve gRPC on this TCP port (0: any free port) "
                             "for a router on another node")
    parser.add_argument("--advertise-addr", default=None,
                        help="multi-node: address to listen on and give the router; default: "
                             "this host's address on the route to MASTER_ADDR")


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        type=str.upper)
    parser.add_argument("--json-output", action="store_true", help="log one JSON object per line")


def rope_override_from_args(args: argparse.Namespace) -> RopeOverride | None:
    """TGI's pair: either flag alone means linear scaling, factor 1.0."""
    if args.rope_scaling is None and args.rope_factor is None:
        return None
    return RopeOverride(
        scaling=args.rope_scaling or "linear",
        factor=args.rope_factor if args.rope_factor is not None else 1.0,
    )


def shard_config_from_args(args: argparse.Namespace) -> ShardConfig:
    distributed = DistributedConfig.from_environ()
    tcp_listen = None
    if args.grpc_tcp_port is not None:
        from ferrite_server.endpoints import route_source_address

        host = args.advertise_addr or route_source_address(distributed.master_addr)
        tcp_listen = TcpListen(host=host, port=args.grpc_tcp_port)
    return ShardConfig(
        model_id=args.model_id,
        uds_path=args.uds_path,
        dtype=args.dtype,
        attention_backend=args.attention_backend,
        kv_cache_memory_bytes=args.kv_cache_memory,
        block_size_tokens=args.block_size,
        distributed=distributed,
        distributed_timeouts=DistributedTimeouts(
            collective_s=args.collective_timeout_s, rendezvous_s=args.rendezvous_timeout_s
        ),
        tcp_listen=tcp_listen,
        tracing=TracingConfig(otlp_endpoint=args.otlp_endpoint, otlp_service_name=args.otlp_service_name),
        quantize=args.quantize,
        kv_cache_dtype=args.kv_cache_dtype,
        cuda_graph_batch_sizes=args.cuda_graphs,
        watermark=WatermarkConfig(gamma=args.watermark_gamma, delta=args.watermark_delta),
        cuda_memory_fraction=args.cuda_memory_fraction,
        cpu_single_thread_max_rows=args.cpu_single_thread_max_rows,
        cpu_measured_step_threads=args.cpu_measured_step_threads,
        cpu_native_decode=args.cpu_native_decode,
        native_kernel_dir=args.native_kernel_dir.expanduser(),
        trust_remote_code=args.trust_remote_code,
        model_implementation=args.model_implementation,
        rope_override=rope_override_from_args(args),
        speculative_method=args.speculative_method,
        draft_model_id=args.draft_model_id,
        grammar_limits=GrammarLimits(
            max_grammar_bytes=args.max_grammar_bytes,
            compile_timeout_s=args.grammar_compile_timeout_s,
        ),
        lora=LoraConfig(
            adapters=args.lora_adapters,
            max_rank=args.max_lora_rank,
            hub_cache_dir=args.hub_cache_dir,
        ),
    )
