"""Detect ferrite's (and TGI's) greenlist watermark in a text: the z-score of how often its
tokens fall in the greenlist of the token before them (Kirchenbauer et al., section 3).

    python -m ferrite_server.watermark_detect --model-dir DIR [--gamma 0.5] [--text T | FILE | -]

Without the watermark a token is green with probability gamma, so over T scored tokens the
green count is Binomial(T, gamma) and z = (green - gamma T) / sqrt(T gamma (1 - gamma)) is
about standard normal; z above 4 (p < 3e-5) says the text was generated with the watermark.
The model directory gives the tokenizer (tokenizer.json) and the vocabulary size the shard
drew its permutations over (config.json's vocab_size).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ferrite_server.config import WatermarkConfig
from ferrite_server.engine.sampling.watermark import greenlist_ids

DEFAULT_Z_THRESHOLD = 4.0


@dataclass(frozen=True)
class Detection:
    num_tokens_scored: int
    num_green_tokens: int
    green_fraction: float
    z_score: float
    p_value: float  # one-sided: chance of this many green tokens without a watermark
    watermarked: bool  # z_score above the threshold


def score_tokens(
    token_ids: Sequence[int], vocab_size: int, gamma: float, z_threshold: float = DEFAULT_Z_THRESHOLD
) -> Detection:
    """Scores every token after the first (each is keyed on its predecessor)."""
    green = 0
    scored = 0
    for previous, token in zip(token_ids, token_ids[1:]):
        if 0 <= token < vocab_size:
            scored += 1
            green += int(bool((greenlist_ids(previous, vocab_size, gamma) == token).any()))
    if scored == 0:
        return Detection(0, 0, 0.0, 0.0, 1.0, False)
    z_score = (green - gamma * scored) / math.sqrt(scored * gamma * (1.0 - gamma))
    p_value = 0.5 * math.erfc(z_score / math.sqrt(2.0))
    return Detection(scored, green, green / scored, z_score, p_value, z_score > z_threshold)


def model_vocab_size(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    vocab_size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if not vocab_size:
        raise ValueError(f"{model_dir / 'config.json'} has no vocab_size; pass --vocab-size")
    return int(vocab_size)


def detect_text(
    text: str, model_dir: Path, gamma: float, vocab_size: int | None = None,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
) -> Detection:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    token_ids = tokenizer.encode(text, add_special_tokens=False).ids
    return score_tokens(token_ids, vocab_size or model_vocab_size(model_dir), gamma, z_threshold)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferrite_server.watermark_detect",
                                     description="z-score of the greenlist watermark in a text")
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="the served model directory (tokenizer.json, config.json)")
    parser.add_argument("--gamma", type=float, default=WatermarkConfig.gamma,
                        help="the server's --watermark-gamma")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="default: config.json's vocab_size")
    parser.add_argument("--z-threshold", type=float, default=DEFAULT_Z_THRESHOLD)
    parser.add_argument("--text", default=None, help="the text (default: read FILE)")
    parser.add_argument("file", nargs="?", default="-", help="file with the text; - for stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 < args.gamma < 1.0:
        print(f"--gamma must be in (0, 1), got {args.gamma}", file=sys.stderr)
        return 2
    if args.text is not None:
        text = args.text
    elif args.file == "-":
        text = sys.stdin.read()
    else:
        text = Path(args.file).read_text()
    detection = detect_text(text, args.model_dir, args.gamma, args.vocab_size, args.z_threshold)
    print(json.dumps(asdict(detection)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
