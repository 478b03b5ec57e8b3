"""Building engines on test checkpoints."""

from __future__ import annotations

from pathlib import Path

from ferrite_server.config import DtypeName, ShardConfig, SpeculativeMethodName
from ferrite_server.engine.engine import Engine

TEST_KV_CACHE_BYTES = 64 << 20


def shard_config(
    model_dir: Path,
    block_size_tokens: int = 4,
    dtype: DtypeName = "float32",
    speculative_method: SpeculativeMethodName | None = None,
) -> ShardConfig:
    return ShardConfig(
        model_id=model_dir,
        uds_path=model_dir / "unused.sock",
        dtype=dtype,
        kv_cache_memory_bytes=TEST_KV_CACHE_BYTES,
        block_size_tokens=block_size_tokens,
        speculative_method=speculative_method,
    )


def warmed_up_engine(
    model_dir: Path,
    block_size_tokens: int = 4,
    speculative_method: SpeculativeMethodName | None = None,
) -> tuple[Engine, int]:
    """A float32 engine after a small warmup, and its number of KV blocks."""
    engine = Engine.load(
        shard_config(model_dir, block_size_tokens, speculative_method=speculative_method)
    )
    warmup = engine.warmup(max_batch_prefill_tokens=64, max_batch_size=8, max_total_tokens=128)
    return engine, warmup.num_blocks
