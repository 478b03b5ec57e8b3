"""Where a decode step of the 8B-shaped model spends its time (torch profiler).

    python bench/decode_profile.py --backend triton --batch-size 1 [--cuda-graphs off]

Kernels inside CUDA graph replays are traced too; the table is sorted by device time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import decode_steps as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--cuda-graphs", choices=["on", "off"], default="on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        (model_dir / "config.json").write_text(json.dumps(bench.LLAMA_31_8B))
        config = bench.ShardConfig(model_id=model_dir, uds_path=Path("/nonexistent"),
                                   dtype="bfloat16", attention_backend=args.backend,
                                   cuda_graph_batch_sizes=None if args.cuda_graphs == "on" else ())
        engine = bench.Engine(bench.ModelRunner.load(config, random_weights=True), config)
        max_total = args.context + 64
        engine.warmup(bench.PREFILL_BUDGET_TOKENS, args.batch_size, max_total)
        blocks_per_seq = math.ceil((max_total + 1) / bench.BLOCK_SIZE)
        last_tokens = bench.fill_batch(engine, args.batch_size, args.context, blocks_per_seq)
        bench.time_decode_steps(engine, last_tokens, 5)  # warm
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            bench.time_decode_steps(engine, last_tokens, 4)
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25,
                                        max_name_column_width=70))


if __name__ == "__main__":
    main()
