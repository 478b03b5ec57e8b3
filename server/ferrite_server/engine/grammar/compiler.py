"""Grammar compilation and its cache, by llguidance (chosen by bench/grammar_engines.py: a
large schema compiles in milliseconds, xgrammar needed seconds at the same mask cost).

Compiling is called from the CompileGrammar RPC on its own thread, never from a step: the
router asks before it queues a constrained request. A compiled grammar is a prototype matcher
(its lexer already built by one mask computation); each request gets a copy (microseconds).
llguidance's parser limits bound the work of both compilation and each mask step, so a
pathological schema fails with a message instead of running away.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llguidance
import llguidance.torch

from ferrite_server.config import GrammarLimits
from ferrite_server.engine.grammar.errors import GrammarError
from ferrite_server.engine.types import Grammar


@dataclass(frozen=True)
class CompileResult:
    cache_hit: bool
    compile_ns: int


class GrammarCompiler:
    """Compiles grammars for one vocabulary and keeps the latest `max_cached_grammars`."""

    def __init__(
        self,
        tokenizer_json: Path,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        limits: GrammarLimits = GrammarLimits(),
    ) -> None:
        self._tokenizer = llguidance.LLTokenizer(
            str(tokenizer_json), n_vocab=vocab_size, eos_token=list(eos_token_ids) or None
        )
        self._vocab_size = vocab_size
        self._limits = limits
        self._parser_limits = llguidance.LLParserLimits(
            max_lexer_states=limits.max_lexer_states,
            max_grammar_size=limits.max_grammar_symbols,
            verbose_errors=False,
        )
        # The RPC thread writes, the engine thread reads: one lock around the dict.
        self._lock = threading.Lock()
        self._cache: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def compile(self, grammar: Grammar) -> CompileResult:
        """Compile `grammar` into the cache; GrammarError says why it cannot be used."""
        with self._lock:
            if grammar in self._cache:
                self._cache.move_to_end(grammar)
                return CompileResult(cache_hit=True, compile_ns=0)
        start_ns = time.perf_counter_ns()
        prototype = self._build(grammar)
        compile_ns = time.perf_counter_ns() - start_ns
        with self._lock:
            self._cache[grammar] = prototype
            while len(self._cache) > self._limits.max_cached_grammars:
                self._cache.popitem(last=False)
        return CompileResult(cache_hit=False, compile_ns=compile_ns)

    def matcher_for(self, grammar: Grammar) -> llguidance.LLMatcher:
        """A fresh matcher at the grammar's start. A grammar missing from the cache (evicted,
        or a shard restarted under a replaying router) is compiled here; it passed the limits
        once already, so this costs milliseconds."""
        with self._lock:
            prototype = self._cache.get(grammar)
        if prototype is None:
            self.compile(grammar)
            with self._lock:
                prototype = self._cache[grammar]
        return prototype.deep_copy()

    def _build(self, grammar: Grammar) -> llguidance.LLMatcher:
        if len(grammar.value.encode()) > self._limits.max_grammar_bytes:
            raise GrammarError(
                f"grammar of {len(grammar.value.encode())} bytes exceeds the limit of "
                f"{self._limits.max_grammar_bytes} bytes (--max-grammar-bytes)"
            )
        source = _llguidance_grammar(grammar)
        try:
            matcher = llguidance.LLMatcher(
                self._tokenizer, source, log_level=0, limits=self._parser_limits
            )
        except (ValueError, RuntimeError) as error:
            raise GrammarError(f"invalid {grammar.kind}: {error}") from error
        if not matcher.is_error():
            # Builds the lexer for the start state now, not in the first step.
            mask = llguidance.torch.allocate_token_bitmask(1, self._vocab_size)
            llguidance.torch.fill_next_token_bitmask(matcher, mask)
        if matcher.is_error():
            raise GrammarError(f"invalid {grammar.kind}: {matcher.get_error()}")
        return matcher


def _llguidance_grammar(grammar: Grammar) -> str:
    if grammar.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(grammar.value)
    if grammar.kind == "json":
        try:
            schema = json.loads(grammar.value)
        except json.JSONDecodeError as error:
            raise GrammarError(f"the JSON schema is not valid JSON: {error}") from error
        if not isinstance(schema, (dict, bool)):
            raise GrammarError("a JSON schema must be an object or a boolean")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False}
            )
        except (ValueError, RuntimeError) as error:
            raise GrammarError(f"unsupported JSON schema: {error}") from error
    raise GrammarError(f"unknown grammar type {grammar.kind!r}")
