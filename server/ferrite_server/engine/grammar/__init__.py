"""Structured output in the shard: grammars compiled by llguidance off the step loop
(compiler.py), one matcher per constrained request that follows its tokens and answers the
allowed-token bitmask before each sampling (matcher.py), and the bitmask applied on the
logits' device (mask.py)."""

from ferrite_server.engine.grammar.compiler import CompileResult, GrammarCompiler
from ferrite_server.engine.grammar.errors import GrammarError
from ferrite_server.engine.grammar.mask import allowed_tokens

__all__ = ["CompileResult", "GrammarCompiler", "GrammarError", "allowed_tokens"]
