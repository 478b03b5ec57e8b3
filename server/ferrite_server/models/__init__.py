"""Model families, chosen by the checkpoint's `architectures[0]` through `MODEL_REGISTRY`.

Adding a family: one file with its classes (reusing the shared layers, or Llama's modules when
it is a Llama variant) and one line in the registry below.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.models.gemma2 import Gemma2ForCausalLM
from ferrite_server.models.gemma3 import Gemma3ForCausalLM
from ferrite_server.models.interface import CausalLMFamily
from ferrite_server.models.llama import LlamaForCausalLM
from ferrite_server.models.mistral import MistralForCausalLM
from ferrite_server.models.mixtral import MixtralForCausalLM
from ferrite_server.models.phi3 import Phi3ForCausalLM
from ferrite_server.models.qwen2 import Qwen2ForCausalLM
from ferrite_server.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: Mapping[str, CausalLMFamily] = MappingProxyType(
    {
        "Gemma2ForCausalLM": Gemma2ForCausalLM,
        "Gemma3ForCausalLM": Gemma3ForCausalLM,
        "LlamaForCausalLM": LlamaForCausalLM,
        "MistralForCausalLM": MistralForCausalLM,
        "MixtralForCausalLM": MixtralForCausalLM,
        "Phi3ForCausalLM": Phi3ForCausalLM,
        "Qwen2ForCausalLM": Qwen2ForCausalLM,
        "Qwen3ForCausalLM": Qwen3ForCausalLM,
    }
)


def model_family(architecture: str) -> CausalLMFamily:
    family = MODEL_REGISTRY.get(architecture)
    if family is None:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; supported architectures: "
            f"{', '.join(sorted(MODEL_REGISTRY))}"
        )
    return family


__all__ = ["MODEL_REGISTRY", "UnsupportedModelError", "model_family"]
