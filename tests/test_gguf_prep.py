"""Any GGUF file -> a servable directory (model_prep/gguf.py), and the quantization the shard
serves it with by default (model_prep/gguf_source.py's rule), on tiny Qwen2 GGUFs written
with the `gguf` package."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ferrite_server.engine.model_runner import ModelRunner, default_quantize
from ferrite_server.model_prep.errors import InvalidModelError
from ferrite_server.model_prep.gguf_source import (
    GGUF_SOURCE_NAME,
    storage_class,
    suggested_quantization,
)
from ferrite_server.model_prep.prepare import prepare_model
from tests.support.engines import shard_config
from tests.support.tiny_gguf import TINY_GGUF_CHAT_TEMPLATE, write_tiny_gguf
from tests.test_model_prep import populate_hub_cache, run_prepare

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen2.Q8_0.gguf", weight_type="Q8_0")


def test_a_gguf_file_converts_once_with_its_tokenizer_and_weight_types(
    q8_gguf: Path, tmp_path: Path
) -> None:
    model_dir = prepare_model(str(q8_gguf), None, tmp_path)
    assert model_dir.parent == tmp_path / "gguf" and model_dir.name.startswith("tiny-qwen2.Q8_0-")
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen2"
    assert (model_dir / "tokenizer.json").is_file()  # what the router tokenizes with
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == TINY_GGUF_CHAT_TEMPLATE
    source = json.loads((model_dir / GGUF_SOURCE_NAME).read_text())
    # 2 layers x (q, o 64 x 64; k, v 32 x 64; gate, up, down 128 x 64): every matrix Q8_0.
    assert source["decoder_weight_types"] == {"Q8_0": 2 * (2 * 4096 + 2 * 2048 + 3 * 8192)}
    assert suggested_quantization(model_dir) == "int8"
    marker = model_dir / ".ferrite-complete"
    converted_at = marker.stat().st_mtime_ns
    assert prepare_model(str(q8_gguf), None, tmp_path) == model_dir  # reused, not converted
    assert marker.stat().st_mtime_ns == converted_at
    stat = q8_gguf.stat()
    os.utime(q8_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file
    assert prepare_model(str(q8_gguf), None, tmp_path) != model_dir


def test_a_directory_of_several_ggufs_needs_gguf_file(q8_gguf: Path, tmp_path: Path) -> None:
    directory = tmp_path / "repo"
    directory.mkdir()
    for name in ("a.Q8_0.gguf", "b.Q8_0.gguf"):
        shutil.copy(q8_gguf, directory / name)
    with pytest.raises(InvalidModelError, match="a.Q8_0.gguf, b.Q8_0.gguf.*--gguf-file"):
        prepare_model(str(directory), None, tmp_path / "cache")
    with pytest.raises(InvalidModelError, match="no such file"):
        prepare_model(str(directory), None, tmp_path / "cache", gguf_file="c.gguf")
    chosen = prepare_model(str(directory), None, tmp_path / "cache", gguf_file="b.Q8_0.gguf")
    assert chosen.name.startswith("b.Q8_0-")


def test_a_hub_repo_of_gguf_files_resolves_from_the_offline_cache(
    q8_gguf: Path, tmp_path: Path
) -> None:
    """A GGUF repo (no config.json) in the hub cache: --gguf-file picks the file; offline, the
    hub cannot list the repo, so its cached GGUF is found in the snapshot."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(q8_gguf, repo / q8_gguf.name)
    hf_home = tmp_path / "hf"
    populate_hub_cache(hf_home, "ferrite-test/tiny-gguf", repo)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    for extra in ([], ["--gguf-file", q8_gguf.name]):
        result = run_prepare("ferrite-test/tiny-gguf", env, tmp_path / "cache", *extra)
        assert result.returncode == 0, result.stderr
        converted = Path(result.stdout.strip().splitlines()[-1])
        assert converted.parent == tmp_path / "cache" / "gguf"
        assert suggested_quantization(converted) == "int8"


def test_the_dominant_storage_class_decides_the_default(tmp_path: Path) -> None:
    assert [storage_class(name) for name in ("Q4_1", "Q4_K", "Q3_K", "Q6_K", "Q8_0", "F16")] == [
        "int4", "int4", "int4", "int8", "int8", "float"
    ]
    cases = {
        "int4": {"Q4_1": 1000},  # the bundled SmolLM2
        "int8": {"Q5_0": 900, "Q4_K": 300, "Q6_K": 250, "Q8_0": 50},  # Gemma 3 270M "Q4_K_M"
        None: {"F16": 1000, "Q8_0": 10},
    }
    for expected, weight_types in cases.items():
        (tmp_path / GGUF_SOURCE_NAME).write_text(json.dumps({"decoder_weight_types": weight_types}))
        assert suggested_quantization(tmp_path) == expected, weight_types
    (tmp_path / GGUF_SOURCE_NAME).unlink()
    assert suggested_quantization(tmp_path) is None  # not from a GGUF: nothing suggested


def test_the_default_applies_on_cpu_with_dtype_auto_only(q8_gguf: Path, tmp_path: Path) -> None:
    config = replace(shard_config(prepare_model(str(q8_gguf), None, tmp_path)), dtype="auto")
    assert default_quantize(config, CPU) == "int8"
    assert default_quantize(replace(config, dtype="float32"), CPU) is None
    assert default_quantize(replace(config, quantize="int4"), CPU) == "int4"
    assert default_quantize(config, torch.device("cuda", 0)) is None
    runner = ModelRunner.load(config)
    assert runner.facts.quantization == "int8"


def test_the_bundled_q4_1_model_defaults_to_int4(default_model_dir: Path) -> None:
    source = json.loads((default_model_dir / GGUF_SOURCE_NAME).read_text())
    assert set(source["decoder_weight_types"]) == {"Q4_1"}
    assert suggested_quantization(default_model_dir) == "int4"
