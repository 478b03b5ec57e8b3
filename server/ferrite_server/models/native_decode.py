"""A CPU step of decode tokens through a Llama-family stack in one native call.

`NativeDecodeStack` hands the decoder layers' weights (the same tensors the Python layers use,
not copies) to kernels/cpu/decoder_stack.cpp once at load; each step of decodes then runs every
layer there: one call a step instead of ~1,800 aten dispatches from Python.
LlamaModel takes this path for a step when `applies` says so and runs its Python layers
otherwise (prompts, LoRA tokens, larger batches), with the same cache layout either way.

What the native stack runs (`unsupported_reason` refuses the rest at load, with the reason
logged): bfloat16 on the CPU, one rank, Llama's decoder layer (Llama, SmolLM, Mistral and
Qwen2 without sliding windows), SiLU-gated MLP, no q/k norms, full-head RoPE shared by every
layer, a cache in the compute dtype, and weights that are dense or on the CPU's int8 / int4
weight-only kernels. float32 models keep the Python layers: they are this project's reference
for greedy parity with transformers, and a different order of float sums in attention would
change their bits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ferrite_server.kernels.cpu.build import NativeBuildError, load_decoder_stack
from ferrite_server.layers.activation import SiluAndMul
from ferrite_server.layers.attention.backend import FULL_ATTENTION, AttentionMetadata
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend
from ferrite_server.layers.quantization.unquantized import UnquantizedMethod
from ferrite_server.layers.quantization.weight_only import WeightOnlyMethod
from ferrite_server.layers.quantization.weight_only_ops import (
    CpuInt4Linear,
    CpuInt8Linear,
    quantize_int4,
)
from ferrite_server.models.interface import KVCache
from ferrite_server.models.layer_rotaries import CosSin

logger = logging.getLogger(__name__)

# A step of more decode rows runs the Python layers: the native stack's gain is per call, which
# larger steps amortize anyway, and from 64 rows on the int8 layers dequantize instead of
# calling the kernel the native stack calls (weight_only_ops.CPU_INT8_DEQUANT_MIN_ROWS).
NATIVE_DECODE_MAX_ROWS = 32


@dataclass
class NativeDecodeStack:
    stack: Any  # the extension's DecoderStack
    head: Any  # the extension's Linear over the LM head's rows (dense bf16 or quantized)
    # The engine's per-layer cache list, split into key and value lists once (the engine keeps
    # the same list for the shard's life; a new one is split again).
    _caches_of: list[KVCache] | None = field(default=None, init=False)
    _split_caches: tuple[list[torch.Tensor], list[torch.Tensor]] = field(
        default=([], []), init=False
    )

    @staticmethod
    def build(model: nn.Module, head: nn.Module, kernel_dir: Path) -> NativeDecodeStack | None:
        """The native stack of `model` (a LlamaModel) and its LM head (layers/embedding.LMHead),
        or None (logged why) where it cannot run."""
        reason = unsupported_reason(model) or _unsupported_head_reason(head)
        if reason is not None:
            logger.info("native CPU decode off: %s", reason)
            return None
        try:
            native = load_decoder_stack(kernel_dir)
        except NativeBuildError as error:
            logger.warning("native CPU decode off: the kernel did not build here (%s)", error)
            return None
        return NativeDecodeStack.on_module(native, model, head)

    @staticmethod
    def on_module(native: ModuleType, model: nn.Module, head: nn.Module) -> NativeDecodeStack:
        """The stack of `model` and `head` on the loaded extension `native` (a model `build`
        accepted)."""
        kinds = _NativeKinds.of(native)
        stack = _decoder_stack(kinds, model)
        logger.info(
            "native CPU decode on: steps of up to %d decode rows (int4 rows read by %s)",
            NATIVE_DECODE_MAX_ROWS,
            "its own loops" if kinds.int4 == native.INT4_BLOCKED64 else "aten's kernel",
        )
        return NativeDecodeStack(stack, _native_product(kinds, head.weight_only_product, head))

    def applies(self, hidden: torch.Tensor, attn_metadata: AttentionMetadata) -> bool:
        """Whether this step runs natively: decode tokens only, none with a LoRA adapter."""
        return (
            attn_metadata.max_query_len == 1
            and attn_metadata.lora is None
            and hidden.shape[0] <= NATIVE_DECODE_MAX_ROWS
        )

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H] bf16, after the embedding
        cos_sin: CosSin,  # [T, head_dim] each, the one RoPE of every layer
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H] before the final norm
        keys, values = self._caches(kv_caches)
        cos, sin = cos_sin
        return self.stack.forward(
            hidden.contiguous(),
            cos.contiguous(),
            sin.contiguous(),
            keys,
            values,
            attn_metadata.slot_mapping,
            attn_metadata.block_tables.contiguous(),
            attn_metadata.seq_lens.contiguous(),
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, vocab] float32
        """The LM head's product, as LMHead.forward computes it on one rank."""
        return self.head(hidden.contiguous()).float()

    def _caches(self, kv_caches: list[KVCache]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._caches_of is not kv_caches:
            self._caches_of = kv_caches
            self._split_caches = ([k for k, _ in kv_caches], [v for _, v in kv_caches])
        return self._split_caches


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the native stack cannot run `model` (a LlamaModel); None: it can."""
    from ferrite_server.models.llama import LlamaDecoderLayer, LlamaMLP

    placement = model.embed_tokens.placement
    if placement.device.type != "cpu":
        return f"the model is on {placement.device.type}"
    if placement.dtype != torch.bfloat16:
        return f"{placement.dtype} (bfloat16 only; float32 keeps the reference layers)"
    if placement.group.is_parallel:
        return "tensor parallelism"
    rotaries = model.rotary_emb.embeddings
    head_dim = model.layers[0].self_attn.head_dim
    if len(rotaries) != 1 or rotaries[0].rotary_dim != head_dim:
        return "per-layer or partial RoPE"
    for layer in model.layers:
        if type(layer) is not LlamaDecoderLayer or type(layer.mlp) is not LlamaMLP:
            return f"decoder layer {type(layer).__name__}"
        attention = layer.self_attn
        if not isinstance(layer.mlp.act, SiluAndMul):
            return "an activation other than SiLU"
        if attention.q_norm is not None or attention.variant != FULL_ATTENTION:
            return "q/k norms, sliding windows or attention soft-caps"
        backend = attention.backend
        if not isinstance(backend, TorchAttentionBackend) or backend.kv_quant.fp8:
            return "a KV cache other than the compute dtype's"
        for linear in _linears(layer):
            if not _runs_natively(linear):
                return f"{type(linear.quant_method).__name__} weights"
    return None


def _linears(layer: nn.Module) -> tuple[nn.Module, ...]:
    attention, mlp = layer.self_attn, layer.mlp
    return attention.qkv_proj, attention.o_proj, mlp.gate_up_proj, mlp.down_proj


def _runs_natively(linear: nn.Module) -> bool:
    """Dense weights, or a product on the CPU's int8 / int4 weight-only kernels."""
    method = linear.quant_method
    if isinstance(method, UnquantizedMethod):
        return True
    return isinstance(method, WeightOnlyMethod) and isinstance(
        linear.weight_only_product, CpuInt8Linear | CpuInt4Linear
    )


def _unsupported_head_reason(head: nn.Module) -> str | None:
    product = head.weight_only_product
    if product is None or isinstance(product, CpuInt8Linear | CpuInt4Linear):
        return None
    return f"an LM head on {type(product).__name__}"


@dataclass(frozen=True)
class _NativeKinds:
    """The extension, and how it reads int4 weights on this machine."""

    native: ModuleType
    int4: int  # native.INT4_BLOCKED64 where aten's int4 layout is the one its loops read

    @staticmethod
    def of(native: ModuleType) -> _NativeKinds:
        blocked = _int4_layout_is_blocked64(native)
        return _NativeKinds(native, native.INT4_BLOCKED64 if blocked else native.INT4)


def _int4_layout_is_blocked64(native: ModuleType) -> bool:
    """Whether the native loops read aten's int4 packing right here: aten's layout depends on
    its build and the CPU's vector width, so a product of both on random weights decides."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 64, generator=generator)
    product = CpuInt4Linear(quantize_int4(weight, 32))
    x = torch.randn(2, 64, generator=generator).to(torch.bfloat16)
    ours = native.Linear(
        native.INT4_BLOCKED64, product.packed, product.scales_and_zeros, product.group_size, None
    )(x).float()
    expected = product._kernel(x).float()
    return bool(torch.allclose(ours, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item()))


def _native_linear(kinds: _NativeKinds, linear: nn.Module) -> Any:
    # Unquantized layers have no product: their dense weight.
    return _native_product(kinds, getattr(linear, "weight_only_product", None), linear)


def _native_product(kinds: _NativeKinds, product: Any, owner: nn.Module) -> Any:
    """`owner`'s product (None: its dense weight) as the extension's Linear."""
    native = kinds.native
    bias = owner.bias.data if getattr(owner, "bias", None) is not None else None
    if product is None:
        return native.Linear(native.DENSE, owner.weight.data, None, 0, bias)
    if isinstance(product, CpuInt8Linear):
        return native.Linear(native.INT8, product.codes, product.scales, 0, bias)
    return native.Linear(
        kinds.int4, product.packed, product.scales_and_zeros, product.group_size, bias
    )


def _decoder_stack(kinds: _NativeKinds, model: nn.Module) -> Any:
    native = kinds.native
    layers = []
    for layer in model.layers:
        qkv, o, gate_up, down = (_native_linear(kinds, linear) for linear in _linears(layer))
        layers.append(
            native.LayerWeights(
                layer.input_layernorm.weight.data,
                layer.post_attention_layernorm.weight.data,
                qkv,
                o,
                gate_up,
                down,
            )
        )
    first = model.layers[0]
    attention = first.self_attn
    return native.DecoderStack(
        layers,
        attention.num_heads,
        attention.num_kv_heads,
        attention.head_dim,
        first.input_layernorm.eps,
        attention.scale,
    )
