"""Tiny random-weight GGUF files written with the `gguf` package (llama.cpp's own writer).

A tiny Qwen2 (tests/support/tiny_models.py) is saved the way llama.cpp's converter would save
it: llama.cpp tensor names, `qwen2.*` hyper-parameters, a byte-level BPE tokenizer (GPT-2
style: 3 control tokens, the 256 byte symbols and two merges) and a chat template; the decoder's
matrices as F32 or Q8_0 (quantized by gguf-py itself). transformers loading the same file
(`from_pretrained(dir, gguf_file=...)`) is the reference for what ferrite serves from it.

    path = write_tiny_gguf(tmp_path / "tiny-qwen2.gguf", weight_type="Q8_0")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from tests.support.tiny_models import TINY_EOS_TOKEN_ID, TinyModelSpec, tiny_config

TINY_GGUF_CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
_CONTROL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 as the tiny config's pad / bos / eos
_CONTROL, _NORMAL = 3, 1  # llama.cpp token types
# A vocabulary needs merges (transformers reads none as "derive them from scores").
_MERGES = ("h e", "l l")
GgufWeightType = Literal["F32", "Q8_0"]


def _byte_symbols() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _add_tokenizer(writer: object) -> None:
    tokens = [*_CONTROL_TOKENS, *_byte_symbols(), *(merge.replace(" ", "") for merge in _MERGES)]
    writer.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    writer.add_tokenizer_pre("qwen2")  # type: ignore[attr-defined]
    writer.add_token_list(tokens)  # type: ignore[attr-defined]
    writer.add_token_types([_CONTROL] * len(_CONTROL_TOKENS) + [_NORMAL] * (len(tokens) - 3))  # type: ignore[attr-defined]
    writer.add_token_merges(list(_MERGES))  # type: ignore[attr-defined]
    writer.add_bos_token_id(1)  # type: ignore[attr-defined]
    writer.add_eos_token_id(TINY_EOS_TOKEN_ID)  # type: ignore[attr-defined]
    writer.add_pad_token_id(0)  # type: ignore[attr-defined]
    writer.add_add_bos_token(False)  # type: ignore[attr-defined]
    writer.add_chat_template(TINY_GGUF_CHAT_TEMPLATE)  # type: ignore[attr-defined]


def write_tiny_gguf(path: Path, seed: int = 21, weight_type: GgufWeightType = "F32") -> Path:
    """A tiny Qwen2 GGUF at `path`: decoder matrices in `weight_type`, the rest F32."""
    import gguf

    config = tiny_config(TinyModelSpec(family="qwen2", seed=seed))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_uint32("qwen2.vocab_size", config.vocab_size)
    _add_tokenizer(writer)
    for hf_name, tensor in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KeyError(f"no GGUF name for {hf_name}")
        values = tensor.numpy().astype(np.float32)
        if weight_type == "Q8_0" and name.startswith("blk.") and values.ndim == 2:
            quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
