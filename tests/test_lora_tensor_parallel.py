"""LoRA with tensor parallelism (2 ranks over gloo on CPU): each rank keeps its slice of every
adapter's pair, as the base weight is sliced (column-parallel layers their output rows of B,
row-parallel ones their input columns of A, whose partial delta joins the layer's all-reduce);
the split engine generates what the single-process engine does for requests of two adapters
and of the base model in the same steps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ferrite_server.config import LoraConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import RequestParams, StoppingParams
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import shard_config
from tests.support.lora_adapters import AdapterSpec, write_peft_adapter
from tests.support.tensor_parallel_ranks import distributed_shard_config, run_ranks
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

MAX_NEW_TOKENS = 8
ADAPTERS = {"math": AdapterSpec(seed=41, weight_std=0.2), "code": AdapterSpec(seed=42, rank=4, weight_std=0.2)}
REQUESTS = [("math", [7, 8, 9, 10, 11, 12, 13]), ("", [7, 8, 9, 10, 11, 12, 13]), ("code", [20, 21, 22, 23]),
            ("math", [30, 31, 32, 33, 34])]


def drive(engine: Engine) -> list[dict[str, Any]]:
    warmup = engine.warmup(max_batch_prefill_tokens=64, max_batch_size=8, max_total_tokens=128)
    requests = [
        ScriptedRequest(index, prompt, RequestParams(stopping=StoppingParams(max_new_tokens=MAX_NEW_TOKENS),
                                                     adapter_id=adapter), join_step=index % 2)
        for index, (adapter, prompt) in enumerate(REQUESTS)
    ]
    EngineDriver(engine, BlockAllocator(warmup.num_blocks, seed=5)).run(requests)
    return [{"token_ids": r.generated_ids, "logprobs": [t.logprob for t in r.tokens]} for r in requests]


def lora_rank_worker(rank: int, world_size: int, master_port: int, model_dir: str,
                     adapters: list[list[str]], out_dir: str) -> None:
    torch.set_num_threads(1)
    config = distributed_shard_config(Path(model_dir), rank, world_size, master_port)
    lora = LoraConfig(adapters=tuple((name, path) for name, path in adapters))
    result = drive(Engine.load(replace(config, lora=lora)))
    (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(result))


def test_a_split_engine_serves_adapters_as_one_process_does(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "model", TinyModelSpec(family="llama", seed=12))
    adapters = [[name, str(write_peft_adapter(model_dir, tmp_path / name, spec))]
                for name, spec in ADAPTERS.items()]
    lora = LoraConfig(adapters=tuple((name, path) for name, path in adapters))
    single = drive(Engine.load(replace(shard_config(model_dir), lora=lora)))
    run_ranks(2, lora_rank_worker, str(model_dir), adapters, str(tmp_path))
    for rank in range(2):
        parallel = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        for index, (got, want) in enumerate(zip(parallel, single, strict=True)):
            assert got["token_ids"] == want["token_ids"], f"rank {rank}, request {index}"
            assert all(abs(a - b) < 1e-4 for a, b in zip(got["logprobs"], want["logprobs"], strict=True))
    # The adapters changed something: the same prompt under "math" and the base model differ.
    assert single[0]["token_ids"] != single[1]["token_ids"]
