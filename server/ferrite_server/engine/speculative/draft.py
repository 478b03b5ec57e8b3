"""Draft-model proposals (`--speculative-method draft --draft-model-id DIR`): a smaller causal
LM with the target's tokenizer guesses the next tokens of each decoding request, and the target
verifies them in its one forward of the step (verify.py, rejection.py).

The draft runs in the shard beside the target, on the same device, with a paged KV cache of its
own that has as many blocks as the target's, of the same size, addressed by the same block ids:
a request's block table (the router's, one for both models) says where both models keep the K/V
of each position, so the router's block accounting, prefix caching and preemption cover the
draft without knowing it exists. Warmup sizes the two caches together (engine.warmup).

Each step, before the target's forward:
1. one draft forward over every scheduled sequence: the tokens the target computes this step
   (prompt chunks and decode inputs), plus the one token the draft may still lack — after a
   fully accepted run the draft never saw its last proposal, so it lags the target by one
   position (RequestState.draft_written_end says how far it wrote);
2. for the sequences with lookahead slots: a proposal from the last row, then one more draft
   forward per further proposal, batched over the sequences that still want one.
Greedy requests propose the draft's argmax; sampled ones draw from the draft's distribution q
(after the same logits processors as the target's), which is kept for the acceptance rule.

A prefix-cached block is valid for the draft too, except for a request's last position when it
finished right after a fully accepted run (the draft never wrote it): a later request sharing
that block sees one stale draft slot, which can only lower its acceptance, never change what
the target's verification keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ferrite_server.config import ShardConfig
from ferrite_server.engine.errors import NotWarmedUpError, UnsupportedModelError
from ferrite_server.engine.forward_inputs import build_forward_inputs
from ferrite_server.engine.kv_cache import KVCacheSpec, allocate_kv_cache, kv_cache_bytes
from ferrite_server.engine.model_runner import ModelFacts, ModelRunner
from ferrite_server.engine.sampling import SequenceSamplingState, sample, sampling_scores
from ferrite_server.engine.sampling.random_stream import draw_from_scores
from ferrite_server.engine.sampling.watermark import Watermark
from ferrite_server.engine.speculative.rejection import DRAFT_STREAM_SALT, stream_seed
from ferrite_server.engine.speculative.vocabulary import check_same_vocabulary
from ferrite_server.engine.step_plan import ScheduledSequence
from ferrite_server.engine.warmup import WarmupShape, run_warmup_step
from ferrite_server.models.interface import KVCache


@dataclass(frozen=True)
class _DraftInput:
    """One sequence's part of a draft forward (a forward_inputs.ForwardSequence)."""

    input_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]


@dataclass
class _Proposals:
    sequence: ScheduledSequence
    known_end: int  # positions below hold the known tokens; proposals follow
    num_wanted: int
    token_ids: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # [V] q per proposal (sampled)


class DraftModel:
    def __init__(self, runner: ModelRunner, block_size: int, watermark: Watermark) -> None:
        self._runner = runner
        self._block_size = block_size
        self._watermark = watermark
        self._kv_caches: list[KVCache] | None = None

    @classmethod
    def load(cls, config: ShardConfig, target: ModelFacts, watermark: Watermark) -> DraftModel:
        draft_dir = config.draft_model_id
        if draft_dir is None:
            raise UnsupportedModelError("--speculative-method draft needs --draft-model-id DIR")
        if config.distributed.world_size != 1:
            raise UnsupportedModelError(
                "--speculative-method draft runs with one shard only (--num-shard 1); "
                "use --speculative-method ngram with tensor parallelism"
            )
        # The draft is loaded as the checkpoint says: --quantize and the RoPE override are
        # the target's.
        draft_config = replace(config, model_id=Path(draft_dir), quantize=None, rope_override=None)
        runner = ModelRunner.load(draft_config)
        check_same_vocabulary(
            Path(config.model_id), Path(draft_dir),
            target.config.vocab_size, runner.facts.config.vocab_size,
        )
        return cls(runner, config.block_size_tokens, watermark)

    @property
    def facts(self) -> ModelFacts:
        return self._runner.facts

    def kv_cache_spec(self) -> KVCacheSpec:
        return self._runner.kv_cache_spec(self._block_size)

    def allocate_kv_cache(self, num_blocks: int) -> int:
        """The draft's cache: `num_blocks` blocks, as many as the target's; returns its bytes."""
        self._kv_caches = allocate_kv_cache(self.kv_cache_spec(), num_blocks, self.facts.device)
        return kv_cache_bytes(self._kv_caches)

    def free_kv_cache(self) -> None:
        self._kv_caches = None

    def warmup(self, shape: WarmupShape) -> int:
        """The draft's largest step (the target's prefill budget); its peak bytes (0 on CPU)."""
        return run_warmup_step(self._runner, shape, self._block_size)

    @torch.inference_mode()
    def propose(self, sequences: Sequence[ScheduledSequence]) -> list[ScheduledSequence]:
        """`sequences` with the draft's proposals appended to the inputs of those that have
        lookahead slots (see the module docstring)."""
        if self._kv_caches is None:
            raise NotWarmedUpError("Warmup must allocate the draft's KV cache first")
        max_positions = self.facts.config.max_position_embeddings
        # A draft with fewer positions than the target stops following sequences past them.
        followed = [seq for seq in sequences if seq.end_position <= max_positions]
        if not followed:
            return list(sequences)
        wanted: list[_Proposals] = []
        last_rows: list[int] = []
        inputs = build_forward_inputs(
            [self._catch_up_input(seq) for seq in followed], self._block_size, self.facts.device
        )
        for index, seq in enumerate(followed):
            if seq.samples and seq.num_lookahead_slots > 0:
                num_wanted = min(seq.num_lookahead_slots, max_positions - seq.end_position + 1)
                wanted.append(_Proposals(seq, seq.end_position, num_wanted))
                last_rows.append(inputs.last_row(index))
        hidden = self._runner.forward(inputs, self._kv_caches)  # [T, H]
        if wanted:
            self._draw(hidden[last_rows], wanted)
        for index in range(1, max((p.num_wanted for p in wanted), default=0)):
            active = [p for p in wanted if p.num_wanted > index]
            # Proposal index-1 goes in at its position; its output row proposes the next one.
            step_inputs = [
                _DraftInput((p.token_ids[-1],), p.known_end + index - 1, p.sequence.block_table)
                for p in active
            ]
            inputs = build_forward_inputs(step_inputs, self._block_size, self.facts.device)
            self._draw(self._runner.forward(inputs, self._kv_caches), active)  # [len(active), H]
        for seq in followed:
            seq.state.draft_written_end = seq.end_position
        for proposals in wanted:
            written = proposals.known_end + max(len(proposals.token_ids) - 1, 0)
            proposals.sequence.state.draft_written_end = written
        by_request = {p.sequence.state.request_id: p for p in wanted}
        return [_with_proposals(seq, by_request.get(seq.state.request_id)) for seq in sequences]

    def _catch_up_input(self, seq: ScheduledSequence) -> _DraftInput:
        """The target's inputs of this step, from the first position the draft lacks."""
        state = seq.state
        # A new request's cached prefix was written by both models when it was computed.
        start = seq.start_position
        if not seq.is_new:
            start = min(start, state.draft_written_end)
        return _DraftInput(tuple(state.token_ids[start : seq.end_position]), start, seq.block_table)

    def _draw(self, hidden: torch.Tensor, wanted: Sequence[_Proposals]) -> None:
        """hidden [B, H], row b predicting wanted[b]'s next proposal -> appended to it."""
        logits = self._runner.compute_logits(hidden)  # [B, V] float32
        states = [
            SequenceSamplingState(
                params=p.sequence.state.params.sampling,
                prompt_ids=p.sequence.state.prompt_ids,
                generated_ids=p.sequence.state.generated_ids + p.token_ids,
                seed=p.sequence.state.seed,
            )
            for p in wanted
        ]
        sampled = [row for row, state in enumerate(states) if state.params.do_sample]
        greedy = [row for row, state in enumerate(states) if not state.params.do_sample]
        token_ids = [0] * len(states)
        if greedy:
            index = torch.tensor(greedy, dtype=torch.int64).to(logits.device)
            # What the target's greedy rows go through too (penalties and all).
            greedy_states = [states[r] for r in greedy]
            chosen = sample(logits.index_select(0, index), greedy_states, 0, self._watermark)
            for row, token_id in zip(greedy, chosen.token_ids, strict=True):
                token_ids[row] = token_id
        if sampled:
            index = torch.tensor(sampled, dtype=torch.int64).to(logits.device)
            rows = [states[r] for r in sampled]
            scores = sampling_scores(logits.index_select(0, index), rows, self._watermark)
            drawn = draw_from_scores(
                scores,
                seeds=[stream_seed(state.seed, DRAFT_STREAM_SALT) for state in rows],
                steps=[len(state.generated_ids) for state in rows],
            )
            probs = scores.softmax(dim=-1)  # [S, V] q of each drawn proposal
            for row, row_probs, token_id in zip(sampled, probs, drawn.tolist(), strict=True):
                wanted[row].probs.append(row_probs)
                token_ids[row] = int(token_id)
        for proposals, token_id in zip(wanted, token_ids, strict=True):
            proposals.token_ids.append(token_id)


def _with_proposals(seq: ScheduledSequence, proposals: _Proposals | None) -> ScheduledSequence:
    if proposals is None or not proposals.token_ids:
        return seq
    proposed = tuple(proposals.token_ids)
    return replace(
        seq,
        input_ids=seq.input_ids + proposed,
        proposed_ids=proposed,
        proposal_probs=torch.stack(proposals.probs) if proposals.probs else None,
    )
