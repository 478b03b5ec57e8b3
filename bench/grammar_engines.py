"""llguidance vs xgrammar at the bundled model's vocabulary: compile time and mask time per token.

Both engines run through their Python bindings here (llguidance's core is the same Rust crate the
router links, so its figures are the router's cost without the binding's call overhead). Each
engine compiles a large real-world JSON schema (the OpenAI `ChatCompletion` response type, as
pydantic writes it, ~14 kB) cold and then from its cache, and walks a valid instance of that
schema token by token, computing the allowed-token mask before every token.

    python bench/grammar_engines.py --tokenizer ~/.cache/ferrite/models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

# A valid instance of the schema: what the mask walk feeds token by token.
INSTANCE = {  # properties in the schema's order (both engines keep declaration order)
    "id": "chatcmpl-123",
    "choices": [
        {
            "finish_reason": "tool_calls",
            "index": 0,
            "logprobs": None,
            "message": {
                "content": "The capital of France is Paris.",
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_0",
                        "function": {"arguments": "{\"city\": \"Paris\"}", "name": "get_weather"},
                        "type": "function",
                    }
                ],
            },
        }
    ],
    "created": 1700000000,
    "model": "SmolLM2-135M-Instruct",
    "object": "chat.completion",
    "usage": {"completion_tokens": 8, "prompt_tokens": 12, "total_tokens": 20},
}


def large_schema() -> dict:
    return TypeAdapter(ChatCompletion).json_schema()


def bench_llguidance(tokenizer_dir: Path, schema: dict, text: str) -> dict:
    import llguidance

    t0 = time.perf_counter()
    tokenizer = llguidance.LLTokenizer(str(tokenizer_dir / "tokenizer.json"))
    tokenizer_s = time.perf_counter() - t0
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    t0 = time.perf_counter()
    matcher = llguidance.LLMatcher(tokenizer, grammar)
    compile_s = time.perf_counter() - t0
    assert not matcher.is_error(), matcher.get_error()
    # llguidance compiles lazily per matcher; a second matcher of the same grammar is its
    # "cached" cost (the router keeps compiled grammars and clones matchers from them).
    t0 = time.perf_counter()
    clone = matcher.deep_copy()
    clone_s = time.perf_counter() - t0
    del clone
    tokens = tokenizer.tokenize_str(text)
    mask_s = []
    for token in tokens:
        t0 = time.perf_counter()
        matcher.compute_bitmask()
        mask_s.append(time.perf_counter() - t0)
        assert matcher.consume_token(token), matcher.get_error()
    assert matcher.is_accepting()
    return summary("llguidance", tokenizer.vocab_size, tokenizer_s, compile_s, clone_s, mask_s)


def bench_xgrammar(tokenizer_dir: Path, schema: dict, text: str) -> dict:
    import torch
    import transformers
    import xgrammar

    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / "tokenizer.json")
    )
    t0 = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer)
    compiler = xgrammar.GrammarCompiler(info, max_threads=1)
    tokenizer_s = time.perf_counter() - t0
    schema_text = json.dumps(schema)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(schema_text)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiler.compile_json_schema(schema_text)  # xgrammar's own cache
    cached_s = time.perf_counter() - t0
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    tokens = hf_tokenizer.encode(text, add_special_tokens=False)
    mask_s = []
    for token in tokens:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        mask_s.append(time.perf_counter() - t0)
        assert matcher.accept_token(token)
    assert matcher.is_terminated() or matcher.accept_token(hf_tokenizer.eos_token_id or 0)
    del torch
    return summary("xgrammar", info.vocab_size, tokenizer_s, compile_s, cached_s, mask_s)


def summary(engine, vocab_size, tokenizer_s, compile_s, cached_s, mask_s) -> dict:
    ordered = sorted(mask_s)
    return {
        "engine": engine,
        "vocab_size": vocab_size,
        "tokenizer_setup_ms": round(tokenizer_s * 1e3, 1),
        "compile_ms": round(compile_s * 1e3, 2),
        "cached_compile_ms": round(cached_s * 1e3, 3),
        "num_tokens": len(mask_s),
        "mask_mean_us": round(statistics.mean(mask_s) * 1e6, 1),
        "mask_p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
        "mask_p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6, 1),
        "mask_max_us": round(ordered[-1] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path.home() / ".cache/ferrite/models/SmolLM2-135M-Instruct"
    parser.add_argument("--tokenizer", type=Path, default=default, help="dir with tokenizer.json")
    args = parser.parse_args()
    schema = large_schema()
    text = json.dumps(INSTANCE)
    print(json.dumps({"schema_bytes": len(json.dumps(schema)), "instance_bytes": len(text)}))
    print(json.dumps(bench_llguidance(args.tokenizer, schema, text)))
    print(json.dumps(bench_xgrammar(args.tokenizer, schema, text)))


if __name__ == "__main__":
    main()
