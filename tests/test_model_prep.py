"""Model preparation (`ferrite-server prepare-model`): local directories, `.bin` conversion and
the Hugging Face hub cache, all without network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from ferrite_server.model_prep.bin_conversion import safetensors_name
from ferrite_server.model_prep.errors import InvalidModelError, ModelNotFoundError
from ferrite_server.model_prep.prepare import looks_like_path, prepare_model
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_bin_checkpoint(model_dir: Path, *, shards: int, tie_word_embeddings: bool) -> Path:
    """A tiny Llama saved the old way: pytorch_model*.bin (+ index when sharded)."""
    source = write_tiny_model(
        model_dir.parent / f"{model_dir.name}-safetensors",
        TinyModelSpec(seed=7, tie_word_embeddings=tie_word_embeddings),
    )
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model_dir.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        (model_dir / name).write_bytes((source / name).read_bytes())
    state = model.state_dict()  # tied: lm_head.weight and embed_tokens.weight share storage
    names = sorted(state)
    if shards == 1:
        torch.save(state, model_dir / "pytorch_model.bin")
        return model_dir
    weight_map = {}
    for index in range(shards):
        file_name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[index::shards]}
        torch.save(part, model_dir / file_name)
        weight_map.update(dict.fromkeys(part, file_name))
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return model_dir


def greedy_ids(model_dir: Path) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        output = model.generate(prompt, max_new_tokens=6, do_sample=False)
    return output[0].tolist()


def test_a_safetensors_directory_is_used_in_place(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "llama")
    before = sorted(path.name for path in model_dir.iterdir())
    assert prepare_model(str(model_dir), None, tmp_path / "cache") == model_dir.resolve()
    assert sorted(path.name for path in model_dir.iterdir()) == before
    assert not (tmp_path / "cache").exists()


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        prepare_model(str(missing), None, tmp_path / "cache")


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="config.json"):
        prepare_model(str(tmp_path / "empty"), None, tmp_path / "cache")


def test_paths_and_hub_ids_are_told_apart() -> None:
    assert looks_like_path("/models/x") and looks_like_path("./x") and looks_like_path("a/b/c")
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not looks_like_path("gpt2")
    assert safetensors_name("pytorch_model-00001-of-00002.bin") == "model-00001-of-00002.safetensors"
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"


@pytest.mark.parametrize("shards", [1, 3])
def test_bin_weights_are_converted_once_into_the_cache(tmp_path: Path, shards: int) -> None:
    source = write_bin_checkpoint(tmp_path / "old", shards=shards, tie_word_embeddings=True)
    source_files = sorted(path.name for path in source.iterdir())
    cache_dir = tmp_path / "cache"

    converted = prepare_model(str(source), None, cache_dir)

    assert converted.is_relative_to(cache_dir), "converted into the cache, not in place"
    assert sorted(path.name for path in source.iterdir()) == source_files
    assert not list(converted.glob("*.bin"))
    assert (converted / "config.json").read_bytes() == (source / "config.json").read_bytes()
    safetensors_files = sorted(converted.glob("*.safetensors"))
    assert len(safetensors_files) == shards
    if shards > 1:
        index = json.loads((converted / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {path.name for path in safetensors_files}
        for path in safetensors_files:
            with safe_open(str(path), framework="pt") as reader:
                assert all(index["weight_map"][name] == path.name for name in reader.keys())
    # transformers reads both directories the same way: the weights survived the conversion.
    assert greedy_ids(converted) == greedy_ids_from_bin(source)

    config_mtime_ns = (converted / "config.json").stat().st_mtime_ns
    assert prepare_model(str(source), None, cache_dir) == converted
    assert (converted / "config.json").stat().st_mtime_ns == config_mtime_ns, "reused"


def greedy_ids_from_bin(model_dir: Path) -> list[int]:
    """The reference: the same tiny Llama with the .bin state dict loaded directly."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for path in sorted(model_dir.glob("pytorch_model*.bin")):
        state.update(torch.load(path, weights_only=True))
    model.load_state_dict(state, strict=True)
    model.eval()
    prompt = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        output = model.generate(prompt, max_new_tokens=6, do_sample=False)
    return output[0].tolist()


def run_prepare(
    model_id: str, env_overrides: dict[str, str], cache_dir: Path, *extra_args: str
) -> subprocess.CompletedProcess[str]:
    """`ferrite-server prepare-model` in a fresh process: huggingface_hub reads HF_HOME and
    HF_HUB_OFFLINE when imported, so a hub cache test needs its own interpreter."""
    env = {**os.environ, **env_overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "server"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ferrite_server.cli", "prepare-model", "--model-id", model_id,
         "--cache-dir", str(cache_dir), *extra_args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def populate_hub_cache(hf_home: Path, repo_id: str, model_dir: Path) -> Path:
    """The layout huggingface_hub writes: hub/models--org--name/{refs/main, snapshots/<commit>/}."""
    org, name = repo_id.split("/")
    repo_cache = hf_home / "hub" / f"models--{org}--{name}"
    snapshot = repo_cache / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    for path in model_dir.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(FAKE_COMMIT)
    return snapshot


def test_a_hub_id_resolves_from_the_offline_cache(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    snapshot = populate_hub_cache(hf_home, "ferrite-test/tiny-llama", write_tiny_model(tmp_path / "m"))
    bin_snapshot = populate_hub_cache(
        hf_home, "ferrite-test/tiny-bin",
        write_bin_checkpoint(tmp_path / "old", shards=1, tie_word_embeddings=False),
    )
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}

    result = run_prepare("ferrite-test/tiny-llama", env, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == snapshot

    result = run_prepare("ferrite-test/tiny-bin", env, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    converted = Path(result.stdout.strip().splitlines()[-1])
    assert converted.is_relative_to(tmp_path / "cache")
    assert (converted / "model.safetensors").is_file()
    assert list(bin_snapshot.glob("*.bin")), "the hub cache is left as it was"

    result = run_prepare("ferrite-test/not-cached", env, tmp_path / "cache")
    assert result.returncode != 0
    assert "ferrite-test/not-cached" in result.stderr
    assert result.stdout.strip() == ""


def test_hub_cache_dir_chooses_the_cache_over_hf_home(tmp_path: Path) -> None:
    """`--hub-cache-dir` (the launcher's `--huggingface-hub-cache`, TGI's HUGGINGFACE_HUB_CACHE)."""
    elsewhere = tmp_path / "elsewhere"
    snapshot = populate_hub_cache(elsewhere, "ferrite-test/tiny-llama", write_tiny_model(tmp_path / "m"))
    env = {"HF_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"}
    assert run_prepare("ferrite-test/tiny-llama", env, tmp_path / "cache").returncode != 0
    result = run_prepare("ferrite-test/tiny-llama", env, tmp_path / "cache",
                         "--hub-cache-dir", str(elsewhere / "hub"))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == snapshot


def test_the_cli_names_a_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = run_prepare(str(missing), {}, tmp_path / "cache")
    assert result.returncode != 0
    assert str(missing) in result.stderr
