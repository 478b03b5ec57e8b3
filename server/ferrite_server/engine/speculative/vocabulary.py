"""A draft model must speak the target's token ids: the router tokenizes once with the target's
tokenizer, and the draft's proposals are verified as target token ids. Checked once at start:
the same logits width, and the same token -> id map (added tokens included) where the
directories carry a tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from ferrite_server.engine.errors import UnsupportedModelError

TOKENIZER_FILE = "tokenizer.json"
_SHOWN_DIFFERENCES = 5


def check_same_vocabulary(
    target_dir: Path, draft_dir: Path, target_vocab_size: int, draft_vocab_size: int
) -> None:
    """Raises UnsupportedModelError, saying what differs, unless the draft shares the target's
    vocabulary."""
    if draft_vocab_size != target_vocab_size:
        raise UnsupportedModelError(
            f"draft model {draft_dir} has a vocabulary of {draft_vocab_size} tokens, the target "
            f"{target_vocab_size}: a draft model must use the target's tokenizer"
        )
    target_file, draft_file = target_dir / TOKENIZER_FILE, draft_dir / TOKENIZER_FILE
    if not target_file.is_file() and not draft_file.is_file():
        return  # nothing more to compare (test checkpoints without a tokenizer)
    if not (target_file.is_file() and draft_file.is_file()):
        missing = draft_dir if target_file.is_file() else target_dir
        raise UnsupportedModelError(
            f"{missing} has no {TOKENIZER_FILE}, so the draft model's tokenizer cannot be "
            "checked against the target's: copy the target's tokenizer files into the draft's "
            "directory if they are the same"
        )
    from tokenizers import Tokenizer  # only needed here, once

    target_vocab = Tokenizer.from_file(str(target_file)).get_vocab(with_added_tokens=True)
    draft_vocab = Tokenizer.from_file(str(draft_file)).get_vocab(with_added_tokens=True)
    if target_vocab == draft_vocab:
        return
    differing = sorted(
        token for token in target_vocab.keys() | draft_vocab.keys()
        if target_vocab.get(token) != draft_vocab.get(token)
    )
    examples = ", ".join(
        f"{token!r}: {target_vocab.get(token)} vs {draft_vocab.get(token)}"
        for token in differing[:_SHOWN_DIFFERENCES]
    )
    raise UnsupportedModelError(
        f"draft model {draft_dir} tokenizes differently from the target {target_dir}: "
        f"{len(differing)} tokens have other ids (target vs draft: {examples}); a draft model "
        "must use the target's tokenizer"
    )
