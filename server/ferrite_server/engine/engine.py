"""The Engine: what the gRPC service drives. One step = one forward over a mixed batch.

step(StepInput):
    forget released requests
    plan: validate chunks and decodes, reject bad requests alone  (step_plan.py)
    build concatenated inputs + attention metadata                (forward_inputs.py)
    forward -> hidden [T, H]                                       (model_runner.py)
    logits of the sampling rows -> sample()                        (sampling/)
    prompt logprobs when asked                                     (prompt_logprobs.py)
    commit progress, stop finished requests                        (stopping.py)
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence

import torch

from ferrite_server.config import ShardConfig
from ferrite_server.engine.batch_state import BatchState
from ferrite_server.engine.cuda_graphs import DecodeGraphs, GraphCapture
from ferrite_server.engine.decode_graph_setup import DecodeGraphSetup
from ferrite_server.engine.errors import (
    InsufficientMemoryError,
    InvalidStepError,
    NotWarmedUpError,
)
from ferrite_server.engine.grammar import GrammarCompiler, GrammarError
from ferrite_server.engine.grammar.matcher import RequestGrammar
from ferrite_server.engine.forward_inputs import ForwardInputs, build_forward_inputs
from ferrite_server.engine.host_cpu import StepThreads, step_threads_for
from ferrite_server.engine.kv_cache import allocate_kv_cache, kv_cache_bytes
from ferrite_server.engine.memory import cpu_kv_cache_bytes, cuda_kv_cache_bytes
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.engine.prompt_logprobs import prompt_logprobs_for_chunk
from ferrite_server.engine.sampling.watermark import Watermark
from ferrite_server.engine.speculative import proposer_for
from ferrite_server.engine.speculative.draft import DraftModel
from ferrite_server.engine.speculative.verify import accepted_run
from ferrite_server.engine.step_clock import StepClock
from ferrite_server.engine.step_plan import ScheduledSequence, StepLimits, plan_step
from ferrite_server.engine.stopping import StopCriteria
from ferrite_server.engine.token_choice import MAX_TOP_N_TOKENS, choose_tokens
from ferrite_server.engine.types import (
    EngineInfo,
    FinishReason,
    GeneratedToken,
    Generation,
    StepInput,
    StepOutput,
    StepTimings,
    WarmupResult,
)
from ferrite_server.engine.warmup import WarmupShape, run_warmup_step
from ferrite_server.layers.parallel_group import TensorParallelGroup
from ferrite_server.models.interface import KVCache

_SEED_BITS = 63


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        config: ShardConfig,
        graph_capture: GraphCapture | None = None,
        grammars: GrammarCompiler | None = None,
        draft: DraftModel | None = None,
        step_threads: StepThreads | None = None,
    ) -> None:
        """`graph_capture`: how decode graphs are captured; None: CUDA graphs on a CUDA device
        (tests on a CPU pass cuda_graphs.EagerReplay to run the same padded-bucket path).
        `grammars`: compiled grammars for structured output; None: constrained requests are
        rejected. `draft`: the draft model of `--speculative-method draft`."""
        self._runner = runner
        self._graph_setup = DecodeGraphSetup(runner, config, graph_capture)
        self._config = config
        self._block_size = config.block_size_tokens
        self._batch = BatchState()
        self._kv_caches: list[KVCache] | None = None
        self._limits: StepLimits | None = None
        self._decode_graphs: DecodeGraphs | None = None
        self._watermark = Watermark(config.watermark)
        # Seeds requests that bring none. Tensor-parallel ranks draw the same seeds (rank 0's
        # stream, and every rank sees the same requests in the same order), so they sample the
        # same tokens.
        self._seed_source = random.Random(runner.group.rank0_value(random.getrandbits(63)))
        self._propose = proposer_for(config.speculative_method)
        self._draft = draft
        self._grammars = grammars
        self._step_threads = step_threads
        facts = runner.facts
        self._stop = StopCriteria(
            eos_token_ids=frozenset(facts.eos_token_ids),
            max_position_embeddings=facts.config.max_position_embeddings,
        )

    @classmethod
    def load(cls, config: ShardConfig) -> Engine:
        runner = ModelRunner.load(config)
        tokenizer_json = config.model_id / "tokenizer.json"
        grammars = None
        if tokenizer_json.is_file():  # test checkpoints without a tokenizer serve no grammars
            grammars = GrammarCompiler(
                tokenizer_json,
                vocab_size=runner.facts.config.vocab_size,
                eos_token_ids=runner.facts.eos_token_ids,
                limits=config.grammar_limits,
            )
        draft = None
        if config.speculative_method == "draft":
            draft = DraftModel.load(config, runner.facts, Watermark(config.watermark))
        step_threads = None
        if runner.facts.device.type == "cpu":
            step_threads = step_threads_for(
                torch.get_num_threads(),
                config.cpu_single_thread_max_rows,
                config.cpu_measured_step_threads,
                runner.facts.dtype,
            )
        return cls(runner, config, grammars=grammars, draft=draft, step_threads=step_threads)

    @property
    def grammars(self) -> GrammarCompiler | None:
        return self._grammars

    @property
    def tensor_parallel_group(self) -> TensorParallelGroup:
        return self._runner.group

    def info(self) -> EngineInfo:
        facts = self._runner.facts
        return EngineInfo(
            model_id=facts.model_id,
            architecture=facts.architecture,
            dtype=facts.dtype_name,
            device=str(facts.device),
            block_size=self._block_size,
            vocab_size=facts.config.vocab_size,
            eos_token_ids=facts.eos_token_ids,
            max_position_embeddings=facts.config.max_position_embeddings,
            world_size=self._config.distributed.world_size,
            attention_backend=facts.attention_backend,
            quantization=facts.quantization,
            kv_cache_dtype=facts.kv_cache_dtype_name,
            max_top_n_tokens=MAX_TOP_N_TOKENS,
            model_implementation=facts.implementation,
            lora_adapters=facts.lora_adapters,
        )

    def warmup(
        self,
        max_batch_prefill_tokens: int,
        max_batch_size: int,
        max_total_tokens: int,
        num_speculative_tokens: int = 0,
    ) -> WarmupResult:
        """Measure the largest step, then allocate as many KV blocks as memory allows.
        `num_speculative_tokens`: the router's --speculate N (verify steps of N + 1 tokens per
        sequence get decode graphs too)."""
        facts = self._runner.facts
        max_positions = facts.config.max_position_embeddings
        if min(max_batch_prefill_tokens, max_batch_size, max_total_tokens) <= 0:
            raise InvalidStepError("warmup limits must be positive")
        if max_total_tokens > max_positions:
            raise InvalidStepError(
                f"max_total_tokens {max_total_tokens} exceeds the model's {max_positions} positions"
            )
        self.clear()
        self._kv_caches = None  # free the old cache and graphs before measuring
        self._decode_graphs = None
        if self._draft is not None:
            self._draft.free_kv_cache()
        shape = WarmupShape(
            max_batch_prefill_tokens, max_batch_size, max_total_tokens, MAX_TOP_N_TOKENS
        )
        peak_bytes = run_warmup_step(self._runner, shape, self._block_size)
        if self._draft is not None:  # its activations and proposal distributions come on top
            peak_bytes += self._draft.warmup(shape)
        graph_shape = self._graph_setup.shape(
            max_batch_size, max_total_tokens, num_speculative_tokens
        )
        graph_bytes = 0
        if graph_shape is not None:
            graph_bytes, graph_shape = self._graph_setup.measure(graph_shape)
        configured_bytes = self._config.kv_cache_memory_bytes
        if facts.device.type == "cuda":
            budget_bytes = cuda_kv_cache_bytes(
                facts.device, peak_bytes + graph_bytes, self._config.cuda_memory_fraction
            )
            if configured_bytes is not None:  # an explicit size caps what memory allows
                budget_bytes = min(budget_bytes, configured_bytes)
        else:
            budget_bytes = cpu_kv_cache_bytes(configured_bytes)
        spec = self._runner.kv_cache_spec(self._block_size)
        bytes_per_block = spec.bytes_per_block
        if self._draft is not None:  # the draft's cache has the same blocks (draft.py)
            bytes_per_block += self._draft.kv_cache_spec().bytes_per_block
        # The router has one block table per request for all ranks: every rank holds as many
        # blocks as the one with the least memory.
        local_blocks = max(budget_bytes, 0) // bytes_per_block
        num_blocks = self._runner.group.min_over_ranks(local_blocks)
        needed_blocks = spec.num_blocks_for_tokens(max_total_tokens)
        if num_blocks < needed_blocks:
            raise InsufficientMemoryError(
                f"{budget_bytes} bytes for the KV cache hold {num_blocks} blocks of "
                f"{self._block_size} tokens, but one sequence of max_total_tokens="
                f"{max_total_tokens} needs {needed_blocks}; lower max_total_tokens / "
                "max_batch_prefill_tokens or give the KV cache more memory "
                "(--kv-cache-memory; on a GPU --cuda-memory-fraction)"
            )
        self._kv_caches = allocate_kv_cache(spec, num_blocks, facts.device)
        kv_bytes = kv_cache_bytes(self._kv_caches)
        if self._draft is not None:
            kv_bytes += self._draft.allocate_kv_cache(num_blocks)
        if graph_shape is not None:
            self._decode_graphs = self._graph_setup.capture(graph_shape, self._kv_caches)
        self._limits = StepLimits(
            num_blocks=num_blocks,
            block_size=self._block_size,
            max_position_embeddings=max_positions,
            vocab_size=facts.config.vocab_size,
            adapter_names=facts.lora_adapters,
        )
        return WarmupResult(
            num_blocks=num_blocks,
            max_supported_total_tokens=num_blocks * self._block_size,
            model_memory_bytes=facts.model_memory_bytes,
            kv_cache_memory_bytes=kv_bytes,
            peak_activation_memory_bytes=peak_bytes,
        )

    def step(self, step: StepInput) -> StepOutput:
        start_ns = time.perf_counter_ns()
        if self._kv_caches is None or self._limits is None:
            raise NotWarmedUpError("Warmup must allocate the KV cache before Prefill/Decode")
        for request_id in step.release_request_ids:
            self._batch.forget(request_id)
        plan = plan_step(step, self._batch, self._limits, self._draw_seed, self._propose)
        generations = list(plan.rejected)
        generations.extend(self._attach_grammars(plan.sequences))
        # Rows of one LoRA adapter side by side: the CPU path applies each adapter once per
        # layer (layers/lora.py). Stable, so every rank orders alike.
        plan.sequences.sort(key=lambda sequence: sequence.state.adapter_index)
        forward_start_ns = forward_ns = sampling_ns = 0
        if plan.sequences:
            try:
                ran, forward_start_ns, forward_ns, sampling_ns = self._run(
                    plan.sequences, self._kv_caches
                )
            except Exception:
                # Their state may be half-updated: the step fails as a whole and the shard
                # forgets its requests, so the router and the shard agree on what exists.
                for sequence in plan.sequences:
                    self._batch.forget(sequence.state.request_id)
                raise
            generations.extend(ran)
        timings = StepTimings(
            forward_ns=forward_ns,
            sampling_ns=sampling_ns,
            total_ns=time.perf_counter_ns() - start_ns,
            forward_start_ns=forward_start_ns,
        )
        return StepOutput(generations=tuple(generations), timings=timings)

    def filter(self, keep_request_ids: Iterable[int]) -> None:
        self._batch.keep_only(keep_request_ids)

    def clear(self) -> None:
        self._batch.clear()

    def _attach_grammars(self, sequences: list[ScheduledSequence]) -> list[Generation]:
        """Give each new constrained request its matcher; reject (alone) one that cannot have
        it. Removes the rejected ones from `sequences`."""
        rejected: list[Generation] = []
        for sequence in list(sequences):
            state = sequence.state
            grammar = state.params.sampling.grammar
            if not sequence.is_new or grammar is None:
                continue
            try:
                if self._grammars is None:
                    raise GrammarError("this shard has no grammar engine")
                matcher = self._grammars.matcher_for(grammar)
            except GrammarError as error:
                sequences.remove(sequence)
                rejected.append(Generation(request_id=state.request_id, error=str(error)))
                continue
            state.grammar = RequestGrammar(matcher, self._runner.facts.eos_token_ids)
        return rejected

    def _draw_seed(self) -> int:
        return self._seed_source.getrandbits(_SEED_BITS)

    @torch.inference_mode()
    def _run(
        self, sequences: list[ScheduledSequence], kv_caches: list[KVCache]
    ) -> tuple[list[Generation], int, int, int]:
        """(generations, forward start (perf_counter ns), forward ns, sampling ns)"""
        device = self._runner.facts.device
        rows = sum(len(s.input_ids) + s.num_lookahead_slots for s in sequences)  # proposals too
        threads = self._step_threads.use_for(rows) if self._step_threads is not None else 0
        if self._draft is not None:
            sequences = self._draft.propose(sequences)
        inputs = build_forward_inputs(sequences, self._block_size, device)
        clock = StepClock(device)
        clock.start()
        hidden = self._forward(inputs, kv_caches)  # [T, H]
        clock.forward_done()  # no device synchronize: sampling is queued behind the forward
        if self._step_threads is not None:  # the LM head reads the most bytes of all products
            self._step_threads.use_for_logits(rows, threads)
        sampled = choose_tokens(  # per sequence: its choices
            sequences, inputs, self._runner.compute_logits, hidden, self._watermark
        )
        prompt_logprobs = self._prompt_logprobs(sequences, inputs, hidden)
        forward_ns, sampling_ns = clock.split()
        if self._step_threads is not None:
            self._step_threads.record_step(rows, threads, (forward_ns + sampling_ns) / 1e9)
        generations = [
            self._commit(sequence, sampled.get(index), prompt_logprobs.get(index))
            for index, sequence in enumerate(sequences)
        ]
        for index, sequence in enumerate(sequences):
            if sequence.wants_prompt_logprobs and not sequence.samples:
                row = inputs.last_row(index)
                sequence.state.pending_hidden = hidden[row].clone()
        return generations, clock.forward_start_ns, forward_ns, sampling_ns

    def _forward(self, inputs: ForwardInputs, kv_caches: list[KVCache]) -> torch.Tensor:
        """Hidden states [T, H]: a captured graph's replay for a decode step that has one."""
        graphs = self._decode_graphs
        key = graphs.key_for(inputs) if graphs is not None else None
        if graphs is None or key is None:
            return self._runner.forward(inputs, kv_caches)
        return graphs.forward(inputs, key)

    def _prompt_logprobs(
        self, sequences: Sequence[ScheduledSequence], inputs: ForwardInputs, hidden: torch.Tensor
    ) -> dict[int, tuple[float, ...]]:
        result: dict[int, tuple[float, ...]] = {}
        for index, sequence in enumerate(sequences):
            if not sequence.wants_prompt_logprobs:
                continue
            start, end = inputs.row_starts[index], inputs.row_starts[index + 1]
            result[index] = prompt_logprobs_for_chunk(
                self._runner.model,
                hidden[start:end],
                inputs.input_ids[start:end],
                sequence.state.pending_hidden,
            )
        return result

    def _commit(
        self,
        sequence: ScheduledSequence,
        choices: tuple[GeneratedToken, ...] | None,
        prompt_logprobs: tuple[float, ...] | None,
    ) -> Generation:
        """Record the step's progress in the request's state; stop it if it finished. The
        produced tokens are reported and kept aside (last_generated_ids), not appended: the
        router sends them back, or tells the next step to append them (step_plan.py)."""
        state = sequence.state
        grammar_error = state.grammar.error() if state.grammar is not None else None
        if grammar_error is not None:  # this step's token was not chosen by the grammar
            self._batch.forget(state.request_id)
            return Generation(request_id=state.request_id, error=grammar_error)
        tokens = accepted_run(choices, sequence.proposed_ids) if choices else ()
        # The K/V of the rejected proposals is garbage: the next step overwrites it.
        num_rejected = len(sequence.proposed_ids) - max(len(tokens) - 1, 0)
        state.num_computed_tokens = sequence.end_position - num_rejected
        state.pending_hidden = None
        if sequence.is_new:
            self._batch.add(state)
        finish_reason = FinishReason.NONE
        for index, token in enumerate(tokens):
            finish_reason = self._stop.finish_reason(state, token.token_id, index)
            if finish_reason != FinishReason.NONE:
                tokens = tokens[: index + 1]
                self._batch.forget(state.request_id)
                break
        state.last_generated_ids = tuple(token.token_id for token in tokens)
        return Generation(
            request_id=state.request_id,
            tokens=tokens,
            prompt_logprobs=prompt_logprobs or (),
            finish_reason=finish_reason,
            num_proposed_tokens=len(sequence.proposed_ids),
        )
