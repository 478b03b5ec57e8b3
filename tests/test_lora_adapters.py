"""Adapters ferrite cannot serve stop the shard at start with a message naming the adapter
(lora/peft_adapter.py, lora/attach.py): no directory, no PEFT files, a rank above
--max-lora-rank, a target module outside the decoder projections, DoRA, an adapter of another
base model; and PEFT's scaling rules (alpha / r, rsLoRA, alpha_pattern)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ferrite_server.config import LoraConfig
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.lora.flags import parse_lora_adapters
from ferrite_server.lora.peft_adapter import LoraAdapterError, load_peft_adapter
from tests.support.engines import shard_config
from tests.support.lora_adapters import AdapterSpec, write_peft_adapter
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

PREFIX = "base_model.model.model.layers"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("lora-errors") / "model", TinyModelSpec(seed=4))


def write_adapter(directory: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def q_pair(layer: int = 0, rank: int = 4, width: int = 64) -> dict[str, torch.Tensor]:
    return {
        f"{PREFIX}.{layer}.self_attn.q_proj.lora_A.weight": torch.randn(rank, width),
        f"{PREFIX}.{layer}.self_attn.q_proj.lora_B.weight": torch.randn(64, rank),
    }


def load_with(model_dir: Path, name: str, source: Path | str, max_rank: int = 64) -> None:
    lora = LoraConfig(adapters=((name, str(source)),), max_rank=max_rank)
    ModelRunner.load(replace(shard_config(model_dir), lora=lora))


def test_a_missing_or_empty_directory_names_the_adapter(model_dir, tmp_path) -> None:
    with pytest.raises(LoraAdapterError, match=r"LoRA adapter 'support': .*no such directory"):
        load_with(model_dir, "support", tmp_path / "nowhere" / "adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraAdapterError, match=r"'support': .*has no adapter_config.json"):
        load_with(model_dir, "support", tmp_path / "empty")
    only_config = write_adapter(tmp_path / "no-weights", q_pair())
    (only_config / "adapter_model.safetensors").unlink()
    with pytest.raises(LoraAdapterError, match=r"has no adapter_model.safetensors"):
        load_with(model_dir, "support", only_config)


def test_a_rank_above_the_maximum_names_the_adapter_and_both_ranks(model_dir, tmp_path) -> None:
    adapter = write_peft_adapter(model_dir, tmp_path / "big", AdapterSpec(seed=1, rank=16))
    with pytest.raises(LoraAdapterError, match=r"'big-one': rank 16 .* above --max-lora-rank 8"):
        load_with(model_dir, "big-one", adapter, max_rank=8)


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_targets_ferrite_cannot_apply_are_refused(model_dir, tmp_path, target: str) -> None:
    adapter = write_peft_adapter(model_dir, tmp_path / target, AdapterSpec(seed=2, targets=("q_proj", target)))
    with pytest.raises(LoraAdapterError, match=rf"'odd': targets '{target}', which ferrite cannot"):
        load_with(model_dir, "odd", adapter)
    # The weights alone give it away too, whatever target_modules says.
    sneaky = write_adapter(tmp_path / f"{target}-weights", {
        **q_pair(), f"base_model.model.{'model.' if target == 'embed_tokens' else ''}{target}"
        ".lora_A.weight": torch.randn(4, 64),
        f"base_model.model.{'model.' if target == 'embed_tokens' else ''}{target}"
        ".lora_B.weight": torch.randn(320, 4),
    }, target_modules="all-linear")
    with pytest.raises(LoraAdapterError, match=rf"'odd': targets .*{target}.*ferrite cannot"):
        load_with(model_dir, "odd", sneaky)


def test_dora_and_another_base_model_are_refused(model_dir, tmp_path) -> None:
    dora = write_adapter(tmp_path / "dora", q_pair(), use_dora=True)
    with pytest.raises(LoraAdapterError, match=r"'dora': DoRA \(use_dora\) is not supported"):
        load_with(model_dir, "dora", dora)
    wider = write_adapter(tmp_path / "wider", q_pair(width=96))
    with pytest.raises(LoraAdapterError, match=r"'wider': layer 0 q_proj: .* another base model"):
        load_with(model_dir, "wider", wider)
    deeper = write_adapter(tmp_path / "deeper", q_pair(layer=9))
    with pytest.raises(LoraAdapterError, match=r"'deeper': .*layer 9, but the base model has 2"):
        load_with(model_dir, "deeper", deeper)


def test_scaling_follows_peft(tmp_path) -> None:
    tensors = {**q_pair(rank=4), **{key.replace("q_proj", "v_proj"): value
                                     for key, value in q_pair(rank=4).items()}}
    plain = load_peft_adapter("a", write_adapter(tmp_path / "plain", tensors), 64, 2)
    assert [module.scale for module in plain.modules] == [2.0, 2.0]  # 8 / 4
    rslora = load_peft_adapter("a", write_adapter(tmp_path / "rs", tensors, use_rslora=True), 64, 2)
    assert rslora.modules[0].scale == pytest.approx(8 / math.sqrt(4))
    pattern = write_adapter(tmp_path / "pattern", tensors, alpha_pattern={"v_proj": 32})
    scales = {module.module: module.scale for module in load_peft_adapter("a", pattern, 64, 2).modules}
    assert scales == {"q_proj": 2.0, "v_proj": 8.0}


def test_the_flag_spelling() -> None:
    assert parse_lora_adapters("a=/x, org/b") == (("a", "/x"), ("org/b", "org/b"))
    with pytest.raises(ValueError, match="twice"):
        parse_lora_adapters("a=/x,a=/y")


def test_the_contract_carries_adapters_both_ways() -> None:
    from ferrite_server.engine.types import EngineInfo
    from ferrite_server.proto import shard_pb2 as pb
    from ferrite_server.proto_convert import info_to_proto, request_params_from_proto

    params = request_params_from_proto(pb.RequestParameters(adapter_id="math"))
    assert params.adapter_id == "math"
    assert request_params_from_proto(pb.RequestParameters()).adapter_id == ""
    info = EngineInfo("m", "LlamaForCausalLM", "float32", "cpu", 16, 320, (2,), 128, 1, "torch",
                      lora_adapters=("math", "code"))
    assert list(info_to_proto(info).lora_adapters) == ["math", "code"]
