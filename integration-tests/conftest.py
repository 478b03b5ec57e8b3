"""Shared fixtures of the integration tests: they run the installed programs as a user would.

Nothing is installed here: `scripts/test.sh` builds ferrite and installs it into the test
virtualenv first, so `ferrite-launcher`, `ferrite-router` and `ferrite-server` are on PATH.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.tiny_models import TinyModelSpec, write_tiny_model

PROGRAMS = ("ferrite-launcher", "ferrite-router", "ferrite-server")
# Token ids of the tiny tokenizer's special tokens, matching the tiny config's pad/bos/eos.
TINY_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@pytest.fixture(scope="session", autouse=True)
def installed_programs() -> dict[str, Path]:
    """Where the installed programs are; fails every test at once when ferrite is not installed."""
    found = {name: shutil.which(name) for name in PROGRAMS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not on PATH: install ferrite first (scripts/test.sh does)",
            pytrace=False,
        )
    return {name: Path(path) for name, path in found.items() if path is not None}


def write_byte_level_tokenizer(model_dir: Path) -> None:
    """A byte-level tokenizer with no merges: 3 special tokens + 256 byte symbols, which fits
    the tiny models' 320-row vocabulary, so any text maps to valid ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: token_id for token_id, token in enumerate([*TINY_SPECIAL_TOKENS, *byte_symbols])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    pad, bos, eos = TINY_SPECIAL_TOKENS
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos
    ).save_pretrained(model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama (safetensors) with a tokenizer: a complete servable model."""
    model_dir = write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", TinyModelSpec(seed=11))
    write_byte_level_tokenizer(model_dir)
    return model_dir
