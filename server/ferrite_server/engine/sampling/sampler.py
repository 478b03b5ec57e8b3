"""sample(): one batched sampling step on the logits' device.

Order (TGI's, then Hugging Face's): watermark greenlist bias -> logit bias -> repetition penalty -> frequency / presence penalties;
greedy rows take the argmax of that; sampling rows go on through temperature -> top_k ->
top_p -> min_p -> typical_p and draw from their own seeded stream. Reported logprobs and top
alternatives come from log_softmax of the raw logits. All results reach the host in one copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ferrite_server.engine.sampling.batch_params import (
    WarpParams,
    build_penalty_params,
    build_warp_params,
    needs_logit_bias,
    needs_penalties,
)
from ferrite_server.engine.sampling.filters import (
    NEG_INF,
    apply_temperature,
    min_p_mask,
    top_k_mask,
    top_p_mask,
    typical_mask,
)
from ferrite_server.engine.sampling.penalties import apply_logit_bias, apply_penalties
from ferrite_server.engine.sampling.random_stream import draw_from_scores
from ferrite_server.engine.sampling.state import SampleResult, SequenceSamplingState
from ferrite_server.engine.sampling.watermark import Watermark, WatermarkConfig


@torch.inference_mode()
def sample(
    logits: torch.Tensor,
    seqs: Sequence[SequenceSamplingState],
    num_top_tokens: int,
    watermark: Watermark | None = None,
    allowed: torch.Tensor | None = None,
) -> SampleResult:
    """logits [N, V] float32, one row per entry of seqs -> chosen tokens, their logprobs and
    the num_top_tokens most likely alternatives of every row. `watermark` biases the rows
    whose params ask for it (None: TGI's default gamma and delta). `allowed` [N, V] bool
    (structured output; None: every token) removes tokens before anything else, for greedy and
    sampling rows alike; logprobs still come from the raw logits."""
    if logits.dim() != 2 or logits.shape[0] != len(seqs):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(seqs)} sequences")
    logits = logits.float()
    scores = logits if allowed is None else logits.masked_fill(~allowed, NEG_INF)
    if all(_is_plain_greedy(seq) for seq in seqs):
        token_ids = scores.argmax(dim=-1)  # [N]
    else:
        token_ids = _choose_tokens(scores, seqs, watermark)
    return _gather_results(logits, token_ids, num_top_tokens)


def _is_plain_greedy(seq: SequenceSamplingState) -> bool:
    params = seq.params
    return not (
        params.do_sample or params.watermark or needs_logit_bias(params) or needs_penalties(params)
    )


def _biased_scores(
    logits: torch.Tensor, seqs: Sequence[SequenceSamplingState], watermark: Watermark | None
) -> torch.Tensor:
    """logits [N, V] -> scores after watermark, logit bias and penalties (greedy rows take
    their argmax)."""
    scores = logits
    if any(seq.params.watermark for seq in seqs):
        scores = (watermark or Watermark(WatermarkConfig())).apply(scores, seqs)
    scores = apply_logit_bias(scores, seqs)
    if any(needs_penalties(seq.params) for seq in seqs):
        scores = apply_penalties(scores, seqs, build_penalty_params(seqs, logits.device))
    return scores


def sampling_scores(
    logits: torch.Tensor, seqs: Sequence[SequenceSamplingState], watermark: Watermark | None = None
) -> torch.Tensor:
    """logits [N, V] of rows that all sample (do_sample) -> the scores sample() draws from:
    every transform applied, removed tokens at -inf; softmax gives the sampling distribution
    (speculative decoding compares these distributions of a draft and the target)."""
    if not all(seq.params.do_sample for seq in seqs):
        raise ValueError("sampling_scores takes sampling rows only")
    scores = _biased_scores(logits.float(), seqs, watermark)
    vocab_size = scores.shape[1]
    params = build_warp_params([seq.params for seq in seqs], vocab_size, scores.device)
    return warp_scores(scores, params)


def _choose_tokens(
    logits: torch.Tensor, seqs: Sequence[SequenceSamplingState], watermark: Watermark | None
) -> torch.Tensor:
    scores = _biased_scores(logits, seqs, watermark)
    sampled_rows = [row for row, seq in enumerate(seqs) if seq.params.do_sample]
    if len(sampled_rows) == len(seqs):
        return _warp_and_draw(scores, seqs)
    token_ids = scores.argmax(dim=-1)  # [N]; final for greedy rows
    if sampled_rows:
        row_index = torch.tensor(sampled_rows, dtype=torch.int64).to(logits.device)
        sampled_seqs = [seqs[row] for row in sampled_rows]
        sampled_ids = _warp_and_draw(scores.index_select(0, row_index), sampled_seqs)
        token_ids = token_ids.index_copy(0, row_index, sampled_ids)
    return token_ids


def _warp_and_draw(scores: torch.Tensor, seqs: Sequence[SequenceSamplingState]) -> torch.Tensor:
    """scores [M, V] of the sampling rows -> [M] drawn token ids."""
    vocab_size = scores.shape[1]
    params = build_warp_params([seq.params for seq in seqs], vocab_size, scores.device)
    scores = warp_scores(scores, params)
    return draw_from_scores(
        scores,
        seeds=[seq.seed for seq in seqs],
        steps=[len(seq.generated_ids) for seq in seqs],
    )


def warp_scores(scores: torch.Tensor, params: WarpParams) -> torch.Tensor:
    """scores [M, V] -> tempered scores with removed tokens at -inf (HF warper order)."""
    if params.needs_temperature:
        scores = apply_temperature(scores, params.temperature)
    if params.max_top_k > 0:
        scores = scores.masked_fill(top_k_mask(scores, params.top_k, params.max_top_k), NEG_INF)
    if params.needs_top_p:
        # After a top-k on every row, its k largest tokens are the only top_p candidates.
        max_kept = params.max_top_k if params.every_row_top_k else None
        scores = scores.masked_fill(top_p_mask(scores, params.top_p, max_kept), NEG_INF)
    if params.needs_min_p:
        scores = scores.masked_fill(min_p_mask(scores, params.min_p), NEG_INF)
    if params.needs_typical_p:
        scores = scores.masked_fill(typical_mask(scores, params.typical_p), NEG_INF)
    return scores


def _gather_results(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top_tokens: int
) -> SampleResult:
    """Logprobs as logit - logsumexp(logits): log_softmax without writing an [N, V] tensor."""
    num_top_tokens = max(0, min(num_top_tokens, logits.shape[1]))
    log_normalizer = logits.logsumexp(dim=-1, keepdim=True)  # [N, 1]
    chosen_logprobs = logits.gather(1, token_ids[:, None]) - log_normalizer  # [N, 1]
    columns = [token_ids[:, None].double(), chosen_logprobs.double()]
    if num_top_tokens:
        top_logits, top_ids = logits.topk(num_top_tokens, dim=-1)  # [N, k] each
        columns += [top_ids.double(), (top_logits - log_normalizer).double()]
    # [N, 2 + 2k] float64 holds token ids exactly; one device-to-host copy for everything.
    rows = torch.cat(columns, dim=1).cpu().tolist()
    return SampleResult(
        token_ids=[int(row[0]) for row in rows],
        logprobs=[row[1] for row in rows],
        top_tokens=[
            tuple(
                (int(token_id), logprob)
                for token_id, logprob in zip(
                    row[2 : 2 + num_top_tokens], row[2 + num_top_tokens :], strict=True
                )
            )
            for row in rows
        ],
    )
