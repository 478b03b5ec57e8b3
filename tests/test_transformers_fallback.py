"""The transformers fallback (models/transformers_fallback.py): architectures with no ferrite
model file run as transformers models with ferrite's paged attention, batched like the native
families.

GPT-NeoX (parallel residual, partial rotary, LayerNorm with biases) and StableLM (q / k
LayerNorms, qkv biases, GQA, a quarter of each head rotated) go through the same scripted
batch as tests/test_engine_vs_transformers.py (chunked prefill, late joins, mixed steps, prompt
logprobs), and must equal transformers `generate` token for token with logprobs within 1e-4.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ferrite_server.config import DistributedConfig
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.engine.model_runner import ModelRunner
from tests.support.engines import shard_config, warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model
from tests.test_engine_vs_transformers import _run_and_compare, _tiny_prompts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("family", ["gpt_neox", "stablelm"])
def test_fallback_matches_transformers_batched(family: str, tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / family, TinyModelSpec(family=family, seed=41))  # type: ignore[arg-type]
    engine, _ = warmed_up_engine(model_dir)
    info = engine.info()
    assert info.model_implementation == "transformers"
    assert info.architecture in ("GPTNeoXForCausalLM", "StableLmForCausalLM")
    _run_and_compare(model_dir, _tiny_prompts(41), max_new_tokens=12, block_size_tokens=4)


def test_a_native_family_forced_onto_the_fallback_matches_transformers(tmp_path: Path) -> None:
    # --model-implementation transformers: Llama through transformers' own modules.
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=42))
    engine, _ = warmed_up_engine(model_dir, model_implementation="transformers")
    assert engine.info().model_implementation == "transformers"
    _run_and_compare(
        model_dir, _tiny_prompts(42), max_new_tokens=12, block_size_tokens=4,
        model_implementation="transformers",
    )


def test_native_only_refuses_an_architecture_without_a_file(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "neox", TinyModelSpec(family="gpt_neox", seed=4))
    config = replace(shard_config(model_dir), model_implementation="native")
    with pytest.raises(UnsupportedModelError, match="no ferrite model file"):
        ModelRunner.load(config)


def test_native_families_say_so(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(seed=1))
    engine, _ = warmed_up_engine(model_dir)
    assert engine.info().model_implementation == "native"


# A checkpoint shipping its own modeling code: a Llama under another name, as remote-code
# checkpoints on the Hub often are, so transformers can build it only from these files.
_REMOTE_CONFIG = """from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "ferrite_custom_llama"
"""
_REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def _remote_code_checkpoint(model_dir: Path) -> Path:
    write_tiny_model(model_dir, TinyModelSpec(seed=43))
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        architectures=["CustomForCausalLM"],
        model_type="ferrite_custom_llama",
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    config_path.write_text(json.dumps(config))
    (model_dir / "configuration_custom.py").write_text(_REMOTE_CONFIG)
    (model_dir / "modeling_custom.py").write_text(_REMOTE_MODEL)
    return model_dir


def test_remote_code_needs_trust_remote_code(tmp_path: Path) -> None:
    model_dir = _remote_code_checkpoint(tmp_path / "custom")
    with pytest.raises(UnsupportedModelError, match="--trust-remote-code"):
        ModelRunner.load(shard_config(model_dir))


def test_remote_code_runs_on_the_fallback_when_trusted(tmp_path: Path) -> None:
    model_dir = _remote_code_checkpoint(tmp_path / "custom")
    engine, _ = warmed_up_engine(model_dir, trust_remote_code=True)
    info = engine.info()
    assert (info.architecture, info.model_implementation) == ("CustomForCausalLM", "transformers")
    _run_and_compare(
        model_dir, _tiny_prompts(43), max_new_tokens=8, block_size_tokens=4,
        trust_remote_code=True,
    )


def test_fallback_refuses_tensor_parallelism(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "neox", TinyModelSpec(family="gpt_neox", seed=3))
    config = replace(shard_config(model_dir), distributed=DistributedConfig(world_size=2))
    with pytest.raises(UnsupportedModelError, match="tensor parallelism"):
        ModelRunner.load(config)
