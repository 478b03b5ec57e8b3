"""Any other `*ForCausalLM` transformers can build, run with ferrite's paged KV cache.

The transformers model runs as it is (its embeddings, norms, rotary, MLPs, weights loaded by
`from_pretrained`); only attention is ferrite's. transformers dispatches attention through
`AttentionInterface` by `config._attn_implementation`: ferrite registers "ferrite_paged"
there. Each step's KV caches, attention metadata and backend are put in a `StepSlot` that
every attention module of the model holds (set at load); the attention function finds it on
the module it is called for. (A keyword argument through forward would be neater, but not
every family's decoder layer passes its extra arguments on to attention — StableLM drops
them.) The step's tokens of all sequences go in as one row ([1, T], positions per
token), exactly like the native families, so requests batch continuously; with no mask
function registered for "ferrite_paged" transformers builds no mask (the backend knows each
sequence's causal extent, and the layer's own `sliding_window` / `softcap` arrive as
arguments).

What this path does not do: tensor parallelism, quantized weights, CUDA graphs (it is refused
or skipped at start), and post-processing a family does after its LM head inside
`ForCausalLM.forward` (e.g. logit scaling): logits are the output embedding of the hidden
states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.attention.backend import (
    AttentionBackend,
    AttentionMetadata,
    AttentionVariant,
)
from ferrite_server.layers.rope_scaling import RopeConfig
from ferrite_server.models.config import DecoderConfig, HfConfig
from ferrite_server.models.interface import KVCache
from ferrite_server.weights import CheckpointLayout

ATTENTION_IMPLEMENTATION = "ferrite_paged"
_SLOT_ATTRIBUTE = "ferrite_step_slot"


@dataclass(frozen=True)
class PagedStep:
    """What one forward's attention calls need besides q / k / v."""

    kv_caches: list[KVCache]
    metadata: AttentionMetadata
    backend: AttentionBackend


class StepSlot:
    """The step being computed, shared by one model's attention modules; set per forward."""

    def __init__(self) -> None:
        self.current: PagedStep | None = None


def paged_attention(
    module: nn.Module,
    query: torch.Tensor,  # [1, num_heads, T, D]
    key: torch.Tensor,  # [1, num_kv_heads, T, D]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # ([1, T, num_heads, D], no attention weights)
    slot: StepSlot | None = getattr(module, _SLOT_ATTRIBUTE, None)
    step = slot.current if slot is not None else None
    if step is None:
        raise RuntimeError("ferrite_paged attention called without the step's paged KV cache")
    layer_index = int(getattr(module, "layer_idx"))
    key_cache, value_cache = step.kv_caches[layer_index]
    if key.shape[1] != key_cache.shape[2] or key.shape[3] != key_cache.shape[3]:
        raise UnsupportedModelError(
            f"layer {layer_index} attends with {key.shape[1]} KV heads of {key.shape[3]} "
            f"features; the KV cache was sized for {key_cache.shape[2]} of {key_cache.shape[3]}"
        )
    q = query[0].transpose(0, 1).contiguous()  # [T, num_heads, D]
    k = key[0].transpose(0, 1).contiguous()  # [T, num_kv_heads, D]
    v = value[0].transpose(0, 1).contiguous()
    step.backend.write_kv(k, v, key_cache, value_cache, step.metadata.slot_mapping)
    variant = AttentionVariant(sliding_window_tokens=sliding_window, logit_softcap=softcap)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    attended = step.backend.forward(q, key_cache, value_cache, step.metadata, scale, variant)
    return attended[None], None


def _register_attention() -> None:
    from transformers import AttentionInterface

    # transformers' registry is process-wide; registering the same function again is a no-op.
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, paged_attention)


def fallback_config(hf_config: Any) -> DecoderConfig:
    """The facts the engine sizes the KV cache and limits from; the rest are not used."""
    text = hf_config.get_text_config()
    num_heads = int(text.num_attention_heads)
    hidden_size = int(text.hidden_size)
    head_dim = getattr(text, "head_dim", None) or hidden_size // num_heads
    return DecoderConfig(
        vocab_size=int(text.vocab_size),
        hidden_size=hidden_size,
        intermediate_size=int(getattr(text, "intermediate_size", None) or 4 * hidden_size),
        num_layers=int(text.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(getattr(text, "num_key_value_heads", None) or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=0.0,  # the transformers model's own norms run
        rope=RopeConfig(),  # the transformers model's own rotary runs
        max_position_embeddings=int(getattr(text, "max_position_embeddings", None) or 2048),
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )


def is_causal_lm(architecture: str, hf: HfConfig) -> bool:
    """A class transformers' AutoModelForCausalLM builds (GPT2LMHeadModel counts), or one the
    checkpoint's own code maps to it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if architecture in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return True
    return "AutoModelForCausalLM" in (hf.get("auto_map") or {})


def needs_remote_code(hf: HfConfig) -> bool:
    """A checkpoint whose classes live in its own Python files (`auto_map`)."""
    return bool(hf.get("auto_map"))


class TransformersCausalLM(nn.Module):
    """The `CausalLM` interface over a transformers model (see the module docstring)."""

    def __init__(self, hf_model: nn.Module, config: DecoderConfig, backend: AttentionBackend):
        super().__init__()
        self.hf_model = hf_model
        self.config = config
        self.backend = backend
        self.slot = StepSlot()
        attention_modules = [m for m in hf_model.modules() if hasattr(m, "layer_idx")]
        if len(attention_modules) < config.num_layers:
            raise UnsupportedModelError(
                f"{type(hf_model).__name__}: found {len(attention_modules)} attention modules "
                f"with a layer index for {config.num_layers} layers"
            )
        for module in attention_modules:
            setattr(module, _SLOT_ATTRIBUTE, self.slot)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        dtype: torch.dtype,
        device: torch.device,
        backend: AttentionBackend,
        trust_remote_code: bool,
    ) -> TransformersCausalLM:
        from transformers import AutoConfig, AutoModelForCausalLM

        _register_attention()
        hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=dtype,
                attn_implementation=ATTENTION_IMPLEMENTATION,
                trust_remote_code=trust_remote_code,
            )
        except (ValueError, KeyError) as error:
            raise UnsupportedModelError(
                f"transformers cannot build {model_dir} with pluggable attention: {error}"
            ) from error
        hf_model = hf_model.to(device).eval()
        return cls(hf_model, fallback_config(hf_config), backend)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        self.slot.current = PagedStep(kv_caches, attn_metadata, self.backend)
        try:
            output = self.hf_model.base_model(  # type: ignore[operator]
                input_ids=input_ids[None], position_ids=positions[None], use_cache=False
            )
        finally:
            self.slot.current = None
        return output.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] float32
        head = self.hf_model.get_output_embeddings()  # type: ignore[operator]
        return head(hidden).float()

    def checkpoint_layout(self) -> CheckpointLayout:
        return CheckpointLayout()  # unused: from_pretrained loaded the weights
