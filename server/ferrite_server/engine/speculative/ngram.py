"""Prompt lookup ("n-gram") proposals: find the most recent earlier occurrence of the
sequence's last n tokens (longest n first) and propose the tokens that followed it. Costs no
model; pays off when the output copies from the prompt or repeats itself (code edits,
extraction, summaries quoting the source)."""

from __future__ import annotations

from collections.abc import Sequence

MAX_NGRAM_TOKENS = 3
MIN_NGRAM_TOKENS = 1


def propose_ngram(
    token_ids: Sequence[int],
    max_proposed_tokens: int,
    max_ngram_tokens: int = MAX_NGRAM_TOKENS,
    min_ngram_tokens: int = MIN_NGRAM_TOKENS,
) -> tuple[int, ...]:
    """Up to `max_proposed_tokens` tokens that followed the latest earlier match of the
    longest suffix of `token_ids` (between min and max n-gram length); () when none."""
    num_tokens = len(token_ids)
    if max_proposed_tokens <= 0 or num_tokens < 2:
        return ()
    tokens = list(token_ids)
    for ngram_len in range(min(max_ngram_tokens, num_tokens - 1), min_ngram_tokens - 1, -1):
        suffix = tokens[num_tokens - ngram_len :]
        # Latest match first: recent context predicts best. A match must end before the
        # suffix itself starts, so at least one token follows it.
        for start in range(num_tokens - ngram_len - 1, -1, -1):
            if tokens[start : start + ngram_len] == suffix:
                follow = start + ngram_len
                return tuple(tokens[follow : follow + max_proposed_tokens])
    return ()
