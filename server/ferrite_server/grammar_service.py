"""The CompileGrammar RPC: compiles on its own threads under a time limit, so steps (on the
engine thread) and other compilations go on while one grammar compiles, and a grammar that
runs past the limit is refused without waiting for it. A timed-out compilation's thread still
finishes its work (Python cannot stop it), bounded by llguidance's parser limits; its result
is then cached but the request was already refused."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from ferrite_server import proto_convert as convert
from ferrite_server.engine.grammar import CompileResult, GrammarCompiler, GrammarError
from ferrite_server.proto import shard_pb2 as pb

logger = logging.getLogger(__name__)

# Two: one runaway compilation does not queue every other behind it.
_NUM_COMPILE_THREADS = 2


class GrammarService:
    def __init__(self, compiler: GrammarCompiler | None, compile_timeout_s: float) -> None:
        self._compiler = compiler
        self._compile_timeout_s = compile_timeout_s
        self._threads = ThreadPoolExecutor(_NUM_COMPILE_THREADS, thread_name_prefix="grammar")

    def compile(self, request: pb.CompileGrammarRequest) -> pb.CompileGrammarResponse:
        """Called on the call's thread, which waits for the compile threads' answer."""
        if self._compiler is None:
            return pb.CompileGrammarResponse(error="this shard has no grammar engine")
        grammar = convert.grammar_from_proto(request.grammar)
        work = self._threads.submit(self._compiler.compile, grammar)
        try:
            result: CompileResult = work.result(timeout=self._compile_timeout_s)
        except TimeoutError:
            logger.warning("grammar compilation passed %.1f s", self._compile_timeout_s)
            return pb.CompileGrammarResponse(
                error=f"the {grammar.kind} grammar did not compile within "
                f"{self._compile_timeout_s:g} s (--grammar-compile-timeout-s)"
            )
        except GrammarError as error:
            return pb.CompileGrammarResponse(error=str(error))
        return pb.CompileGrammarResponse(cache_hit=result.cache_hit, compile_ns=result.compile_ns)
