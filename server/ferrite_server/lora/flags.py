"""The shard's LoRA flags (its command line is cli.py): kept apart so that parsing them does
not import torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferrite_server.config import LoraConfig


def parse_lora_adapters(text: str) -> tuple[tuple[str, str], ...]:
    """"a=/dir,org/b" -> (("a", "/dir"), ("org/b", "org/b")): TGI's spelling, a hub id alone
    is named after itself. Raises ValueError on an empty entry or a repeated name."""
    adapters: list[tuple[str, str]] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, _, source = entry.partition("=")
        name, source = name.strip(), (source.strip() if source else name.strip())
        if not name or not source:
            raise ValueError(f"--lora-adapters entry {entry!r} has an empty name or source")
        if any(name == known for known, _ in adapters):
            raise ValueError(f"--lora-adapters names {name!r} twice")
        adapters.append((name, source))
    return tuple(adapters)


def _parse_lora_adapters(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_lora_adapters(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_lora_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora-adapters", type=_parse_lora_adapters, default=(),
                        help="LoRA adapters to serve: name=DIR or name=HUB_ID (or a hub id "
                        "alone), comma-separated")
    parser.add_argument("--max-lora-rank", type=int, default=LoraConfig.max_rank,
                        help="largest LoRA rank an adapter may have")
    parser.add_argument("--hub-cache-dir", type=Path, default=None,
                        help="Hugging Face hub cache for adapter downloads (default: "
                        "HF_HUB_CACHE / HF_HOME)")
