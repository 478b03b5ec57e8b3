"""Structured output in the shard (engine/grammar/): llguidance grammars compiled and cached at
the bundled model's vocabulary, clear errors for bad / unsupported / oversized grammars, the
bitmask unpacked exactly, and the engine producing only grammar-valid output for greedy and
seeded sampling rows batched with an unconstrained one, with speculation on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from ferrite_server.config import GrammarLimits
from ferrite_server.engine.grammar import GrammarCompiler, GrammarError, allowed_tokens
from ferrite_server.engine.grammar.mask import unpack_bitmask
from ferrite_server.engine.grammar.matcher import RequestGrammar
from ferrite_server.engine.types import (
    FinishReason,
    Grammar,
    RequestParams,
    SamplingParams,
    StoppingParams,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
JSON_GRAMMAR = Grammar(kind="json", value=json.dumps(SCHEMA))
REGEX = r"(yes|no), [0-9]{2,3}"
REGEX_GRAMMAR = Grammar(kind="regex", value=REGEX)


@pytest.fixture(scope="module")
def compiler(default_model_dir: Path) -> GrammarCompiler:
    return GrammarCompiler(default_model_dir / "tokenizer.json", vocab_size=49152, eos_token_ids=[2])


def test_compile_caches_by_grammar(compiler: GrammarCompiler) -> None:
    first = compiler.compile(Grammar(kind="regex", value="[a-c]+"))
    again = compiler.compile(Grammar(kind="regex", value="[a-c]+"))
    assert not first.cache_hit and first.compile_ns > 0
    assert again.cache_hit and again.compile_ns == 0


@pytest.mark.parametrize(
    ("grammar", "words"),
    [
        (Grammar(kind="regex", value="(("), "regex"),
        (Grammar(kind="json", value="{not json"), "not valid JSON"),
        (Grammar(kind="json", value="[1, 2]"), "object"),
        (Grammar(kind="json", value=json.dumps({"type": "strin"})), "strin"),
        (Grammar(kind="lark", value="start: /a/"), "unknown grammar type"),
    ],
)
def test_bad_grammars_name_the_problem(compiler: GrammarCompiler, grammar: Grammar, words: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(words)):
        compiler.compile(grammar)


def test_size_limit(default_model_dir: Path) -> None:
    small = GrammarCompiler(
        default_model_dir / "tokenizer.json", 49152, [2], GrammarLimits(max_grammar_bytes=64)
    )
    huge_enum = {"enum": [f"value-{i}" for i in range(100)]}
    with pytest.raises(GrammarError, match="--max-grammar-bytes"):
        small.compile(Grammar(kind="json", value=json.dumps(huge_enum)))


def test_unpack_bitmask_is_exact() -> None:
    generator = torch.Generator().manual_seed(3)
    bits = torch.rand(3, 70, generator=generator) < 0.5  # [N, V]
    padded = torch.zeros(3, 96, dtype=torch.bool)
    padded[:, :70] = bits
    words = (padded.view(3, 3, 32).long() << torch.arange(32)).sum(-1)  # [N, W] as int64
    bitmask = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    assert torch.equal(unpack_bitmask(bitmask, 70), bits)


def test_matcher_follows_tokens_and_ends_with_eos(
    compiler: GrammarCompiler, default_model_dir: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    grammar = RequestGrammar(compiler.matcher_for(REGEX_GRAMMAR), eos_token_ids=[2])
    text_ids = tokenizer.encode("yes, 42", add_special_tokens=False).ids
    grammar.follow(text_ids)
    allowed = allowed_tokens([grammar, None], 49152, torch.device("cpu"))
    assert allowed is not None and allowed[1].all()
    assert allowed[0, 2]  # "yes, 42" matches: EOS is allowed
    digit = tokenizer.encode("7", add_special_tokens=False).ids[0]
    assert allowed[0, digit]  # a third digit too
    letter = tokenizer.encode("a", add_special_tokens=False).ids[0]
    assert not allowed[0, letter]


def test_a_matcher_in_error_names_why_and_allows_only_eos(
    compiler: GrammarCompiler, default_model_dir: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    grammar = RequestGrammar(compiler.matcher_for(Grammar(kind="regex", value="[0-9]+")), [2])
    grammar.follow(tokenizer.encode("7", add_special_tokens=False).ids)
    assert grammar.error() is None
    grammar.follow(tokenizer.encode("7x", add_special_tokens=False).ids)  # "x" is refused
    assert "grammar engine gave up" in (grammar.error() or "")
    bitmask = torch.zeros(1, (49152 + 31) // 32, dtype=torch.int32)
    grammar.fill_mask(bitmask, 0)
    assert unpack_bitmask(bitmask, 49152)[0].nonzero().flatten().tolist() == [2]


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_output_follows_grammars_batched_with_plain_rows(default_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    prompt = tokenizer.encode("Tell me about a person.", add_special_tokens=False).ids

    def params(grammar: Grammar | None, **sampling: object) -> RequestParams:
        return RequestParams(
            sampling=SamplingParams(grammar=grammar, **sampling),  # type: ignore[arg-type]
            stopping=StoppingParams(max_new_tokens=48),
        )

    plans = [
        params(JSON_GRAMMAR),  # greedy
        params(JSON_GRAMMAR, do_sample=True, temperature=1.0, seed=1),  # n=2 of one request
        params(JSON_GRAMMAR, do_sample=True, temperature=1.0, seed=2),
        params(REGEX_GRAMMAR, do_sample=True, top_k=20, seed=3),
        params(None, repetition_penalty=1.2),  # unconstrained beside them
    ]
    engine, num_blocks = warmed_up_engine(default_model_dir, speculative_method="ngram")
    requests = [
        ScriptedRequest(request_id=index + 1, prompt_ids=prompt, params=plan, join_step=index % 2)
        for index, plan in enumerate(plans)
    ]
    EngineDriver(engine, BlockAllocator(num_blocks), num_lookahead_tokens=3).run(requests)
    for request in requests[:4]:
        text = tokenizer.decode(request.generated_ids[:-1])
        assert request.finish_reason == FinishReason.EOS, (request.request_id, text)
        assert max(request.tokens_per_step) == 1  # constrained: no proposals
        if request.params.sampling.grammar == JSON_GRAMMAR:
            value = json.loads(text)
            assert set(value) == {"name", "age"} and isinstance(value["age"], int)
        else:
            assert re.fullmatch(REGEX, text), text
    assert requests[4].finish_reason != FinishReason.NONE


class _SlowCompiler(GrammarCompiler):
    def __init__(self, inner: GrammarCompiler, delay_s: float) -> None:  # noqa: D107
        self._inner = inner
        self._delay_s = delay_s

    def compile(self, grammar: Grammar):  # type: ignore[no-untyped-def]
        import time

        time.sleep(self._delay_s)
        return self._inner.compile(grammar)


def test_compile_rpc_answers_errors_and_time_limit(compiler: GrammarCompiler) -> None:
    from ferrite_server.grammar_service import GrammarService
    from ferrite_server.proto import shard_pb2 as pb

    def request(kind: int, value: str) -> pb.CompileGrammarRequest:
        return pb.CompileGrammarRequest(grammar=pb.Grammar(kind=kind, value=value))

    service = GrammarService(compiler, compile_timeout_s=5.0)
    slow = GrammarService(_SlowCompiler(compiler, 2.0), compile_timeout_s=0.2)
    fresh, cached, invalid, unknown, timed_out = (
        service.compile(request(pb.GRAMMAR_KIND_REGEX, "[0-9]+x")),
        service.compile(request(pb.GRAMMAR_KIND_REGEX, "[0-9]+x")),
        service.compile(request(pb.GRAMMAR_KIND_REGEX, "((")),
        service.compile(request(pb.GRAMMAR_KIND_UNSPECIFIED, "a")),
        slow.compile(request(pb.GRAMMAR_KIND_JSON_SCHEMA, "{}")),
    )
    assert not fresh.error and not fresh.cache_hit and fresh.compile_ns > 0
    assert not cached.error and cached.cache_hit
    assert "unclosed group" in invalid.error
    assert "unknown grammar type" in unknown.error
    assert "--grammar-compile-timeout-s" in timed_out.error
