"""Loading a checkpoint onto the device, and running forwards / logits on it.

Device: `config.device`, else cuda:<local_rank> when CUDA is available, else cpu.
Dtype "auto" on CPU: bfloat16 where the CPU has native bf16 instructions (AVX-512 BF16, AMX),
else float32 — without them bf16 matrix products are emulated and, batched, ~10x slower than
float32 (bench/RESULTS.md: batch 32 decode 1763 vs 185 ms per step on an AVX2 EPYC).
On GPU the checkpoint's dtype, except that a float32 checkpoint
runs in bfloat16 (float16 where bfloat16 is unsupported) — GPU serving is half precision, and
--dtype float32 still asks for full precision explicitly.

Tensor parallelism (world size > 1): the runner joins the group first (engine/distributed.py),
then every layer is built with this rank's share and loads only its slices of the checkpoint;
`facts` then describe this rank (its weight bytes, its KV heads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ferrite_server.config import QuantizeName, ShardConfig
from ferrite_server.engine.distributed import check_tensor_parallel, init_tensor_parallel
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.engine.forward_inputs import ForwardInputs
from ferrite_server.engine.host_cpu import cpu_has_native_bfloat16
from ferrite_server.engine.kv_cache import KVCacheSpec
from ferrite_server.engine.memory import anonymous_resident_bytes, model_memory_bytes
from ferrite_server.layers.attention.kv_quant import KVCacheQuant
from ferrite_server.layers.attention.selector import create_attention_backend
from ferrite_server.layers.head_partition import HeadPartition
from ferrite_server.layers.linear import process_weights_after_loading
from ferrite_server.layers.parallel_group import TensorParallelGroup
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.config import QuantizationConfig, resolve_quantization
from ferrite_server.model_prep.gguf_source import suggested_quantization
from ferrite_server.models import MODEL_REGISTRY
from ferrite_server.models.config import (
    DecoderConfig,
    HfConfig,
    architecture_of,
    checkpoint_dtype_name,
    read_eos_token_ids,
    read_hf_config,
)
from ferrite_server.models.interface import CausalLM, KVCache
from ferrite_server.models.rope_config import with_rope_override
from ferrite_server.models.transformers_fallback import (
    TransformersCausalLM,
    is_causal_lm,
    needs_remote_code,
)
from ferrite_server.weights import iter_checkpoint_slices, load_named_tensors

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelFacts:
    """What the engine reports about the loaded model (Info) and sizes the KV cache from."""

    model_id: str
    architecture: str
    config: DecoderConfig
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    attention_backend: str
    model_memory_bytes: int  # this rank's parameters and buffers
    num_local_kv_heads: int  # KV heads this rank computes and caches
    quantization: str = ""  # "" when the weights are not quantized
    kv_cache_dtype: torch.dtype | None = None  # None: the compute dtype
    # "native" (a ferrite model file) or "transformers" (the fallback for any other causal LM).
    implementation: str = "native"
    # LoRA adapters loaded beside the weights (lora/), by name; a request's adapter index is
    # its position here.
    lora_adapters: tuple[str, ...] = ()

    @property
    def kv_cache_dtype_name(self) -> str:
        return "fp8" if self.kv_cache_dtype == torch.float8_e4m3fn else "auto"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_device(config: ShardConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{config.distributed.local_rank}")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device, hf: HfConfig) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda":
        return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    checkpoint_dtype = _DTYPES.get(checkpoint_dtype_name(hf) or "", torch.float32)
    if checkpoint_dtype != torch.float32:
        return checkpoint_dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def default_quantize(config: ShardConfig, device: torch.device) -> QuantizeName | None:
    """--quantize, or for a GGUF-converted model on CPU with --dtype auto the integer width
    its GGUF stored (model_prep/gguf_source.py has the rule and why)."""
    if config.quantize is not None or config.dtype != "auto" or device.type != "cpu":
        return config.quantize
    suggested = suggested_quantization(Path(config.model_id))
    if suggested is not None:
        logger.info(
            "the GGUF this model came from stores its weights quantized: serving them as "
            "--quantize %s (pass --quantize or --dtype to choose otherwise)", suggested,
        )
    return suggested


class ModelRunner:
    def __init__(
        self, model: CausalLM, facts: ModelFacts, group: TensorParallelGroup | None = None
    ) -> None:
        self.model = model
        self.facts = facts
        self.group = group if group is not None else TensorParallelGroup()

    @classmethod
    def load(cls, config: ShardConfig, random_weights: bool = False) -> ModelRunner:
        """Build the model and load its checkpoint (`random_weights`: fill with noise instead,
        for benchmarks of large shapes whose speed does not depend on the values)."""
        model_dir = Path(config.model_id)
        hf = read_hf_config(model_dir)
        if config.rope_override is not None:
            hf = with_rope_override(hf, config.rope_override.scaling, config.rope_override.factor)
        architecture = architecture_of(hf)
        family = MODEL_REGISTRY.get(architecture)
        if family is None and config.model_implementation == "native":
            raise UnsupportedModelError(
                f"architecture {architecture!r} has no ferrite model file (native: "
                f"{', '.join(sorted(MODEL_REGISTRY))}); --model-implementation auto runs it on "
                "the transformers fallback"
            )
        if family is None or config.model_implementation == "transformers":
            return cls._load_fallback(config, hf, architecture)
        model_config = family.config_from_hf(hf)
        check_tensor_parallel(model_config, config.distributed.world_size)
        device = resolve_device(config)
        # Refuses impossible combinations before any weight is read.
        quantization = resolve_quantization(default_quantize(config, device), hf)
        dtype = resolve_dtype(config.dtype, device, hf)
        kv_quant = KVCacheQuant.from_name(config.kv_cache_dtype)
        backend = create_attention_backend(config.attention_backend, device, kv_quant)
        group = init_tensor_parallel(config, device)
        placement = replace(
            LayerPlacement.for_group(dtype, device, group), quantization=quantization
        )
        resident_before_bytes = anonymous_resident_bytes()
        model = family(model_config, backend, placement)
        if random_weights:
            _fill_with_noise(model)  # type: ignore[arg-type]
        else:
            _load_weights(model, model_dir, device, quantization)  # type: ignore[arg-type]
        process_weights_after_loading(model)  # type: ignore[arg-type]
        lora_bytes = _attach_lora(model, config, model_config.num_layers)  # type: ignore[arg-type]
        if config.cpu_native_decode and device.type == "cpu":
            enable = getattr(model, "enable_native_cpu_decode", None)
            if enable is not None:  # Llama's stack and the families that reuse it
                enable(config.native_kernel_dir)
        # Adapters included: weights the KV cache must leave room for.
        weight_bytes = model_memory_bytes(model)  # type: ignore[arg-type]
        # Read by the tests of tensor parallelism (each rank ~1/N of the weights); one line.
        logger.info(
            "rank %d of %d holds %d weight bytes; anonymous resident memory grew by %d bytes "
            "while loading",
            group.rank, group.world_size, weight_bytes,
            anonymous_resident_bytes() - resident_before_bytes,
        )
        heads = HeadPartition.of(model_config.num_heads, model_config.num_kv_heads, placement.tp)
        facts = ModelFacts(
            model_id=str(config.model_id),
            architecture=architecture,
            config=model_config,
            eos_token_ids=read_eos_token_ids(model_dir, hf),
            dtype=dtype,
            device=device,
            attention_backend=backend.name,
            model_memory_bytes=weight_bytes,
            num_local_kv_heads=heads.num_kv_heads,
            quantization=quantization.name if quantization is not None else "",
            kv_cache_dtype=kv_quant.cache_dtype(dtype),
            lora_adapters=tuple(name for name, _ in config.lora.adapters),
        )
        logger.info(
            "weights: %.1f MiB on %s (%s, quantization: %s; LoRA adapters: %.1f MiB); KV cache "
            "dtype: %s",
            weight_bytes / 2**20, device, facts.dtype_name, facts.quantization or "none",
            lora_bytes / 2**20, str(facts.kv_cache_dtype).removeprefix("torch."),
        )
        return cls(model, facts, group)

    @classmethod
    def _load_fallback(cls, config: ShardConfig, hf: HfConfig, architecture: str) -> ModelRunner:
        """An architecture without a ferrite file: the transformers model with paged attention
        (models/transformers_fallback.py); one rank, unquantized."""
        if not is_causal_lm(architecture, hf):
            raise UnsupportedModelError(
                f"architecture {architecture!r} is not a causal LM transformers can build; "
                f"natively supported: {', '.join(sorted(MODEL_REGISTRY))}"
            )
        if needs_remote_code(hf) and not config.trust_remote_code:
            raise UnsupportedModelError(
                f"{architecture} needs the checkpoint's own Python code (auto_map); start with "
                "--trust-remote-code to run it"
            )
        if config.rope_override is not None:
            raise UnsupportedModelError(
                f"{architecture} runs on the transformers fallback, which takes RoPE scaling "
                "from config.json only: --rope-scaling / --rope-factor apply to native families"
            )
        if config.lora.adapters:
            raise UnsupportedModelError(
                f"{architecture} runs on the transformers fallback, which serves no LoRA "
                "adapters (--lora-adapters applies to native families)"
            )
        if config.distributed.world_size != 1 or resolve_quantization(config.quantize, hf):
            raise UnsupportedModelError(
                f"{architecture} runs on the transformers fallback, which supports neither "
                "tensor parallelism nor quantization"
            )
        device = resolve_device(config)
        dtype = resolve_dtype(config.dtype, device, hf)
        kv_quant = KVCacheQuant.from_name(config.kv_cache_dtype)
        backend = create_attention_backend(config.attention_backend, device, kv_quant)
        model = TransformersCausalLM.load(
            Path(config.model_id), dtype, device, backend, config.trust_remote_code
        )
        weight_bytes = model_memory_bytes(model)
        facts = ModelFacts(
            model_id=str(config.model_id),
            architecture=architecture,
            config=model.config,
            eos_token_ids=read_eos_token_ids(Path(config.model_id), hf),
            dtype=dtype,
            device=device,
            attention_backend=backend.name,
            model_memory_bytes=weight_bytes,
            num_local_kv_heads=model.config.num_kv_heads,
            kv_cache_dtype=kv_quant.cache_dtype(dtype),
            implementation="transformers",
        )
        logger.info(
            "%s has no ferrite model file: running the transformers model with ferrite's paged "
            "attention (%.1f MiB on %s, %s)",
            architecture, weight_bytes / 2**20, device, facts.dtype_name,
        )
        return cls(model, facts)  # type: ignore[arg-type]

    def kv_cache_spec(self, block_size: int) -> KVCacheSpec:
        config = self.facts.config
        return KVCacheSpec(
            num_layers=config.num_layers,
            block_size=block_size,
            num_kv_heads=self.facts.num_local_kv_heads,
            head_dim=config.head_dim,
            dtype=self.facts.kv_cache_dtype or self.facts.dtype,
        )

    @torch.inference_mode()
    def forward(self, inputs: ForwardInputs, kv_caches: list[KVCache]) -> torch.Tensor:
        """Hidden states [T, hidden] of every input token."""
        return self.model.forward(
            inputs.input_ids, inputs.positions, kv_caches, inputs.attn_metadata
        )

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] float32
        return self.model.compute_logits(hidden)


def _attach_lora(model: torch.nn.Module, config: ShardConfig, num_layers: int) -> int:
    """Loads --lora-adapters into the model's layers; their bytes (0 without adapters)."""
    if not config.lora.adapters:
        return 0
    from ferrite_server.lora.attach import attach_adapters, load_adapters

    return attach_adapters(model, load_adapters(config.lora, num_layers))


def _load_weights(
    model: CausalLM, model_dir: Path, device: torch.device, quantization: QuantizationConfig | None
) -> None:
    layout = model.checkpoint_layout()
    tensors = iter_checkpoint_slices(model_dir, device)
    if quantization is not None:
        suffixes = layout.ignored_suffixes + quantization.ignored_checkpoint_suffixes
        layout = replace(layout, ignored_suffixes=suffixes)
        tensors = quantization.checkpoint_tensors(tensors)  # type: ignore[assignment]
    load_named_tensors(model, tensors, layout)  # type: ignore[arg-type]


@torch.no_grad()
def _fill_with_noise(model: torch.nn.Module) -> None:
    """Small random values everywhere (never zeros: they hide bugs and time differently).

    Packed integer weights get random bits; group indices (GPTQ's g_idx) stay valid groups.
    """
    for name, parameter in model.named_parameters():
        if parameter.dtype.is_floating_point:
            noise = torch.randn(parameter.shape, device=parameter.device) * 0.02
            parameter.copy_(noise.to(parameter.dtype))
        elif name.endswith("g_idx"):
            groups = model.get_submodule(name.rsplit(".", 1)[0]).scales.shape[0]
            positions = torch.arange(parameter.numel(), device=parameter.device)
            parameter.copy_(positions * groups // parameter.numel())
        else:
            parameter.random_(-(2**31), 2**31 - 1)
