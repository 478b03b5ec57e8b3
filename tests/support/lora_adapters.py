"""PEFT LoRA adapters written by `peft` itself on a test checkpoint, with non-zero random
weights (PEFT initializes lora_B to zero, which would make every adapter the base model), and
transformers + PEFT greedy references on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    seed: int
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_PROJECTIONS
    use_rslora: bool = False
    # Standard deviation of lora_A / lora_B entries: large enough to change greedy outputs,
    # small enough not to turn the model into noise.
    weight_std: float = 0.05
    extra_config: dict[str, Any] = field(default_factory=dict)  # other LoraConfig fields


def write_peft_adapter(base_dir: Path, adapter_dir: Path, spec: AdapterSpec) -> Path:
    """Save an adapter for the checkpoint in `base_dir` with peft's `save_pretrained`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
        use_rslora=spec.use_rslora, lora_dropout=0.0, task_type="CAUSAL_LM", **spec.extra_config,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                noise = torch.randn(parameter.shape, generator=generator) * spec.weight_std
                parameter.copy_(noise)
    model.save_pretrained(adapter_dir)
    return adapter_dir


def load_peft_reference(base_dir: Path, adapter_dir: Path) -> torch.nn.Module:
    """transformers + PEFT on the adapter, float32, for greedy references."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()
