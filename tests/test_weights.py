"""Checkpoint loading: single / sharded safetensors, fused and tensor-parallel loaders, tied
embeddings, dtype conversion, config reading and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.layers.linear import (
    AttentionHeads,
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.rotary import RopeConfig
from ferrite_server.models import model_family
from ferrite_server.models.config import decoder_config_from_hf, read_eos_token_ids
from ferrite_server.weights import (
    CheckpointError,
    TensorParallelRank,
    checkpoint_files,
    weight_loader_of,
)
from tests.support.engines import shard_config
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(model_dir):
        tensors.update(load_file(path))
    return tensors


def _load(model_dir: Path, dtype: str = "float32") -> ModelRunner:
    return ModelRunner.load(shard_config(model_dir, dtype=dtype))


def test_sharded_and_single_file_checkpoints_load_the_same_weights(tmp_path: Path) -> None:
    single = write_tiny_model(tmp_path / "single", TinyModelSpec(family="qwen2", seed=5))
    sharded_spec = TinyModelSpec(family="qwen2", seed=5, sharded=True)
    sharded = write_tiny_model(tmp_path / "sharded", sharded_spec)
    assert len(checkpoint_files(sharded)) > 1 and len(checkpoint_files(single)) == 1
    single_state = _load(single).model.state_dict()
    sharded_state = _load(sharded).model.state_dict()
    assert single_state.keys() == sharded_state.keys()
    for name, tensor in single_state.items():
        assert torch.equal(tensor, sharded_state[name]), name


def test_fused_projections_hold_the_checkpoint_tensors_side_by_side(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "qwen2", TinyModelSpec(family="qwen2", seed=6))
    tensors = _checkpoint_tensors(model_dir)
    params = dict(_load(model_dir).model.named_parameters())
    prefix = "model.layers.1.self_attn"
    for kind in ("weight", "bias"):  # Qwen2 has q / k / v biases
        parts = [tensors[f"{prefix}.{p}_proj.{kind}"] for p in "qkv"]
        assert torch.equal(params[f"{prefix}.qkv_proj.{kind}"].cpu(), torch.cat(parts))
    assert f"{prefix}.o_proj.bias" not in params
    mlp = "model.layers.0.mlp"
    gate_up = torch.cat([tensors[f"{mlp}.gate_proj.weight"], tensors[f"{mlp}.up_proj.weight"]])
    assert torch.equal(params[f"{mlp}.gate_up_proj.weight"].cpu(), gate_up)


def test_tied_embeddings_share_one_tensor(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "tied", TinyModelSpec(tie_word_embeddings=True))
    model = _load(model_dir).model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embedding = _checkpoint_tensors(model_dir)["model.embed_tokens.weight"]
    assert torch.equal(model.lm_head.weight.cpu(), embedding)


def test_weights_are_converted_to_the_requested_dtype(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=7))
    runner = _load(model_dir, dtype="bfloat16")
    assert runner.facts.dtype == torch.bfloat16
    norm = runner.model.model.norm.weight
    assert norm.dtype == torch.bfloat16
    expected = _checkpoint_tensors(model_dir)["model.norm.weight"].to(torch.bfloat16)
    assert torch.equal(norm.cpu(), expected)


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=8))
    tensors = _checkpoint_tensors(model_dir)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.qkv_proj.weight"):
        _load(model_dir)


def test_an_unexpected_tensor_is_refused(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=9))
    tensors = _checkpoint_tensors(model_dir)
    tensors["model.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="mystery"):
        _load(model_dir)


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=10))
    config = json.loads((model_dir / "config.json").read_text())
    # Not a causal LM: neither a native family nor one the transformers fallback can serve.
    config["architectures"] = ["BertForMaskedLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as error:
        _load(model_dir)
    for name in ("BertForMaskedLM", "LlamaForCausalLM", "Gemma3ForCausalLM", "Qwen3ForCausalLM"):
        assert name in str(error.value)
    with pytest.raises(UnsupportedModelError):
        model_family("GPTNeoXForCausalLM")  # no native file (it runs on the fallback)


def _placement(rank: int, world_size: int) -> LayerPlacement:
    return LayerPlacement(torch.float32, CPU, TensorParallelRank(rank, world_size))


def test_tensor_parallel_loaders_keep_their_rank_slice() -> None:
    full = torch.arange(8 * 6, dtype=torch.float32).view(8, 6)  # [out 8, in 6]
    column = ColumnParallelLinear(6, 8, bias=False, placement=_placement(1, 2))
    weight_loader_of(column.weight)(column.weight, full, None)
    assert torch.equal(column.weight, full[4:])
    row = RowParallelLinear(6, 8, bias=False, placement=_placement(1, 2))
    weight_loader_of(row.weight)(row.weight, full, None)
    assert torch.equal(row.weight, full[:, 3:])
    heads = AttentionHeads(num_heads=4, num_kv_heads=2, head_dim=2)
    qkv = QKVParallelLinear(6, heads, bias=False, placement=_placement(0, 2))
    q, k, v = torch.randn(8, 6), torch.randn(4, 6), torch.randn(4, 6)
    for shard_id, tensor in (("q", q), ("k", k), ("v", v)):
        weight_loader_of(qkv.weight)(qkv.weight, tensor, shard_id)
    assert torch.equal(qkv.weight, torch.cat([q[:4], k[:2], v[:2]]))
    with pytest.raises(CheckpointError, match="shape"):
        weight_loader_of(column.weight)(column.weight, torch.zeros(8, 5), None)


def test_config_reading_understands_both_rope_spellings() -> None:
    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    llama3 = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    v4 = decoder_config_from_hf(
        {**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **llama3}}
    )
    v5 = decoder_config_from_hf(
        {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **llama3}}
    )
    assert v4.rope == v5.rope == RopeConfig(theta=5e5, rope_type="llama3", **llama3)
    linear = decoder_config_from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert (linear.rope.rope_type, linear.rope.factor, linear.rope.theta) == ("linear", 2.0, 1e4)
    assert v4.num_kv_heads == 2 and v4.head_dim == 4
    with pytest.raises(UnsupportedModelError, match="proportional"):
        decoder_config_from_hf({**base, "rope_scaling": {"rope_type": "proportional"}})


def test_eos_ids_merge_config_and_generation_config(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 3]}))
    assert read_eos_token_ids(tmp_path, {"eos_token_id": 3}) == (3, 7)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert read_eos_token_ids(tmp_path, {"eos_token_id": [1, 9]}) == (1, 9)
