"""The greenlist watermark of Kirchenbauer et al., "A Watermark for Large Language Models"
(arXiv:2301.10226), as TGI applies it: for a request with `watermark: true`, the vocabulary is
split by a pseudo-random permutation seeded from the previous token, and `delta` is added to
the logits of the first `gamma * V` tokens of it (the greenlist) before anything else runs.
A text whose tokens land in their greenlists far more often than `gamma` predicts carries the
watermark (see `ferrite_server.watermark_detect`).

The permutation is drawn on the CPU from `HASH_KEY * previous_token` (the reference
implementation's "simple_1" scheme), so the greenlists do not depend on the shard's device and
the detector recomputes them exactly without a GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
import torch

from ferrite_server.config import WatermarkConfig
from ferrite_server.engine.sampling.state import SequenceSamplingState

__all__ = ["HASH_KEY", "Watermark", "WatermarkConfig", "greenlist_ids", "greenlist_size"]

# The reference implementation's key: a large prime, so seeds of neighbouring tokens differ
# in many bits.
HASH_KEY = 15485863
# Greenlist masks kept per previous token (V bytes each: 256 of a 150k vocabulary = 38 MB).
DEFAULT_CACHED_GREENLISTS = 256


def greenlist_size(vocab_size: int, gamma: float) -> int:
    return int(vocab_size * gamma)


def greenlist_ids(previous_token: int, vocab_size: int, gamma: float) -> torch.Tensor:
    """[greenlist_size] int64 on the CPU: the green tokens after `previous_token`."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(HASH_KEY * int(previous_token))
    permutation = torch.randperm(vocab_size, generator=generator)  # [V]
    return permutation[: greenlist_size(vocab_size, gamma)]


def previous_token(seq: SequenceSamplingState) -> int:
    """The token the next one is keyed on: the last generated one, else the prompt's last."""
    if len(seq.generated_ids) > 0:
        return int(seq.generated_ids[-1])
    return int(seq.prompt_ids[-1]) if len(seq.prompt_ids) > 0 else 0


class Watermark:
    """Adds the greenlist bias to the rows of watermarked requests. One per engine: it caches
    the masks of recently seen previous tokens (drawing a permutation costs ~V log V)."""

    def __init__(
        self, config: WatermarkConfig, max_cached: int = DEFAULT_CACHED_GREENLISTS
    ) -> None:
        self.config = config
        self._max_cached = max_cached
        self._masks: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def apply(self, scores: torch.Tensor, seqs: Sequence[SequenceSamplingState]) -> torch.Tensor:
        """scores [N, V] -> scores with delta added on each watermarked row's greenlist;
        other rows are returned unchanged."""
        rows = [row for row, seq in enumerate(seqs) if seq.params.watermark]
        if not rows or self.config.delta == 0.0:
            return scores
        vocab_size = scores.shape[1]
        # [M, V] bool on the CPU: one byte per entry crosses to the device, not a float.
        masks = torch.stack([self._mask(previous_token(seqs[row]), vocab_size) for row in rows])
        masks = masks.to(scores.device, non_blocking=True)
        row_index = torch.tensor(rows, dtype=torch.int64).to(scores.device, non_blocking=True)
        bias = masks.to(scores.dtype) * self.config.delta  # [M, V]
        return scores.index_add(0, row_index, bias)

    def _mask(self, token: int, vocab_size: int) -> torch.Tensor:
        """[V] bool on the CPU: True on the greenlist after `token`."""
        key = (token, vocab_size)
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[greenlist_ids(token, vocab_size, self.config.gamma)] = True
        self._masks[key] = mask
        if len(self._masks) > self._max_cached:
            self._masks.popitem(last=False)
        return mask
