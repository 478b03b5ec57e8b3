"""Any GGUF through the real launcher (issue 22): `--model-id file.gguf` of an architecture other
than Llama (a tiny Qwen2 written with the `gguf` package) serves the tokens transformers
generates from the same file in float32, with the tokenizer and chat template the GGUF
carries; a Q8_0 GGUF is served as int8 by default on CPU."""

from __future__ import annotations

from pathlib import Path

import requests
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from support.launcher import running_ferrite
from test_launcher import info, served_greedy_ids
from tests.support.tiny_gguf import write_tiny_gguf

PROMPT = "Hello, ferrite! Tell me the news."
MAX_NEW_TOKENS = 10
LIMITS = ["--max-input-tokens", "64", "--max-total-tokens", "128"]


def gguf_greedy_ids(gguf_path: Path, tokenizer_json: Path, prompt: str) -> list[int]:
    """transformers' float32 greedy continuation, loading the GGUF itself; the prompt tokenized
    with the tokenizer.json the router uses (DESIGN.md)."""
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    prompt_ids = Tokenizer.from_file(str(tokenizer_json)).encode(prompt).ids
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False
        )
    return output[0, len(prompt_ids):].tolist()


def test_a_qwen2_gguf_file_serves_like_transformers_loading_it(tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny-qwen2.F32.gguf")
    cache_dir = tmp_path / "cache"
    flags = ["--model-id", str(gguf_path), "--model-cache-dir", str(cache_dir), "--dtype", "float32"]
    with running_ferrite([*flags, *LIMITS]) as server:
        facts = info(server)
        assert facts["model_id"] == str(gguf_path)
        assert facts["quantize"] is None
        served = served_greedy_ids(server, PROMPT, MAX_NEW_TOKENS)
        chat = requests.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "any", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 4, "temperature": 0},
            timeout=300,
        )
        chat.raise_for_status()
        chat_prompt_tokens = chat.json()["usage"]["prompt_tokens"]
    (tokenizer_json,) = (cache_dir / "gguf").glob("tiny-qwen2.F32-*/tokenizer.json")
    assert served == gguf_greedy_ids(gguf_path, tokenizer_json, PROMPT)
    # The GGUF's chat template rendered the conversation (tests/support/tiny_gguf.py).
    rendered = "<s>user: hi</s><s>assistant: "
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    assert chat_prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False).ids)


def test_a_q8_0_gguf_is_served_as_int8_by_default(tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny-qwen2.Q8_0.gguf", weight_type="Q8_0")
    flags = ["--model-id", str(tmp_path), "--model-cache-dir", str(tmp_path / "cache")]
    with running_ferrite([*flags, *LIMITS]) as server:  # the directory's only GGUF
        assert info(server)["quantize"] == "int8"
        assert len(served_greedy_ids(server, PROMPT, MAX_NEW_TOKENS)) == MAX_NEW_TOKENS
        assert "serving them as --quantize int8" in server.log()
    assert gguf_path.is_file()
