"""The converted default model is a loadable, working checkpoint (checked with transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ferrite_server.model_prep import ensure_default_model


def test_saved_files_form_a_float32_checkpoint(default_model_dir: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (default_model_dir / name).is_file(), name
    assert list(default_model_dir.glob("*.safetensors"))
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    assert tokenizer.chat_template


def test_second_call_reuses_the_directory(default_model_dir: Path) -> None:
    before_ns = (default_model_dir / "config.json").stat().st_mtime_ns
    again = ensure_default_model(default_model_dir.parent)
    assert again == default_model_dir
    assert (default_model_dir / "config.json").stat().st_mtime_ns == before_ns


def test_greedy_chat_answer_names_paris(default_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        output_ids = model.generate(prompt_ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output_ids[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
