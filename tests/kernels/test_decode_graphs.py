"""Decode graphs (engine/cuda_graphs.py): buckets, padding, and the engine's replay path.

A CPU cannot capture CUDA graphs, so the engine here captures with `EagerReplay`, which re-runs
the forward on the same static, padded buffers a graph reads: the staging, padding and bucket
choice are the real ones, with the triton backend under Triton's interpreter (the backend the
graphs run with). tests/gpu/test_cuda_graphs.py repeats the comparison with real graphs on a GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ferrite_server.cli_flags import build_parser, shard_config_from_args
from ferrite_server.engine.cuda_graphs import (
    PADDING_SLOT,
    DecodeGraphShape,
    EagerReplay,
    GraphKey,
    Replay,
    StaticDecodeInputs,
    decode_buckets,
)
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.forward_inputs import build_forward_inputs
from ferrite_server.engine.model_runner import ModelRunner
from tests.support.engines import shard_config
from tests.support.tensor_parallel_ranks import drive_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model


class CountingCapture:
    """EagerReplay that counts the replays of each bucket."""

    def __init__(self) -> None:
        self.replays: Counter[int] = Counter()

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        inner, output = EagerReplay()(run)
        bucket, replays = output.shape[0], self.replays

        class Counted:
            def replay(self) -> None:
                replays[bucket] += 1
                inner.replay()

        return Counted(), output


def test_default_buckets_cover_every_batch_up_to_the_max() -> None:
    assert decode_buckets(8) == (1, 2, 4, 8)
    assert decode_buckets(100) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112)
    assert decode_buckets(1000)[-1] == 256  # larger batches run eagerly
    assert decode_buckets(64, requested=[8, 0, 2, 8]) == (2, 8)
    assert decode_buckets(64, requested=[]) == ()


def test_cuda_graphs_flag() -> None:
    def parsed(*flags: str) -> tuple[int, ...] | None:
        args = build_parser().parse_args(["serve", "--model-id", "m", "--uds-path", "s", *flags])
        return shard_config_from_args(args).cuda_graph_batch_sizes

    assert parsed() is None
    assert parsed("--cuda-graphs", "1,2,4,8") == (1, 2, 4, 8)
    assert parsed("--cuda-graphs", "0") == ()
    with pytest.raises(SystemExit):
        parsed("--cuda-graphs", "1,two")


class _Seq:
    def __init__(
        self, token: int | tuple[int, ...], start_position: int, block_table: tuple[int, ...]
    ) -> None:
        self.input_ids = token if isinstance(token, tuple) else (token,)
        self.start_position = start_position
        self.block_table = block_table


def test_staging_a_smaller_batch_pads_the_rows_a_larger_one_left() -> None:
    shape = DecodeGraphShape(buckets=(2, 4), max_seq_len=64, block_size=16)
    static = StaticDecodeInputs(shape, torch.device("cpu"))
    four = [_Seq(10 + i, 20 + i, (7 - i, 3 + i)) for i in range(4)]
    static.stage(build_forward_inputs(four, 16, torch.device("cpu")), GraphKey(4, 1))
    assert static.seq_lens[:4].tolist() == [21, 22, 23, 24]
    three = [_Seq(30 + i, 40 + i, (1, 2, 9 + i)) for i in range(3)]
    static.stage(build_forward_inputs(three, 16, torch.device("cpu")), GraphKey(4, 1))
    assert static.input_ids[:3].tolist() == [30, 31, 32]
    assert static.positions[:3].tolist() == [40, 41, 42]
    assert static.seq_lens.tolist() == [41, 42, 43, 0]  # row 3: padding, reads nothing
    assert static.slot_mapping.tolist() == [
        9 * 16 + 40 % 16, 10 * 16 + 41 % 16, 11 * 16 + 42 % 16, PADDING_SLOT
    ]
    assert static.block_tables[:3, :3].tolist() == [[1, 2, 9], [1, 2, 10], [1, 2, 11]]
    metadata = static.metadata(GraphKey(4, 1))
    assert metadata.max_seq_len == 64 and metadata.block_tables.shape == (4, 4)


def test_staging_a_verify_step_pads_whole_sequences() -> None:
    """A verify graph (3 new tokens per sequence) of bucket 4 run by 2 sequences: their tokens
    fill the first 6 rows, the 2 padding sequences hold 3 tokens each that write nowhere."""
    shape = DecodeGraphShape(buckets=(2, 4), max_seq_len=64, block_size=16, tokens_per_seq=(1, 3))
    static = StaticDecodeInputs(shape, torch.device("cpu"))
    assert static.input_ids.shape == (12,)  # the largest bucket times the most tokens
    two = [_Seq((50, 51, 52), 30, (4, 5, 6)), _Seq((60, 61, 62), 14, (6, 7))]
    static.stage(build_forward_inputs(two, 16, torch.device("cpu")), GraphKey(4, 3))
    assert static.input_ids[:6].tolist() == [50, 51, 52, 60, 61, 62]
    assert static.positions[:6].tolist() == [30, 31, 32, 14, 15, 16]
    assert static.seq_lens.tolist() == [33, 17, 3, 3]
    assert static.slot_mapping[:12].tolist() == [
        5 * 16 + 14, 5 * 16 + 15, 6 * 16 + 0, 6 * 16 + 14, 6 * 16 + 15, 7 * 16 + 0,
        *[PADDING_SLOT] * 6,
    ]
    metadata = static.metadata(GraphKey(4, 3))
    assert metadata.query_start_loc.tolist() == [0, 3, 6, 9, 12]
    assert (metadata.max_query_len, metadata.slot_mapping.shape, metadata.num_seqs) == (3, (12,), 4)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("graphs") / "llama", TinyModelSpec(seed=5))


def _triton_engine(model_dir: Path, capture: CountingCapture | None) -> Engine:
    config = replace(shard_config(model_dir), attention_backend="triton", device="cpu")
    return Engine(ModelRunner.load(config), config, graph_capture=capture)


def test_engine_replaying_padded_buckets_matches_eager_decode(tiny_model_dir: Path) -> None:
    prompts = [[5, 9, 13, 2, 7, 3, 8, 1, 4], [6, 4, 2], [11, 12, 13, 14, 15], [3, 1, 4, 1, 5, 9]]
    eager = drive_engine(_triton_engine(tiny_model_dir, None), prompts, max_new_tokens=6)
    capture = CountingCapture()
    graphed = drive_engine(_triton_engine(tiny_model_dir, capture), prompts, max_new_tokens=6)

    assert set(capture.replays) <= {1, 2, 4, 8} and sum(capture.replays.values()) >= 3
    # The scripted requests are greedy, greedy, seeded sampling, unseeded sampling; the last
    # draws its seed from each engine's own random source, so it is left out.
    for got, want in zip(graphed["requests"][:3], eager["requests"][:3], strict=True):
        assert got["token_ids"] == want["token_ids"] and got["finish_reason"] == want["finish_reason"]
        torch.testing.assert_close(got["logprobs"], want["logprobs"], atol=1e-4, rtol=1e-4)


def test_replayed_buckets_apply_each_rows_lora_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With adapters loaded, the graphs read each row's adapter from a static buffer (padding
    and base rows -1) and equal eager decode, which applies adapters by row runs."""
    from ferrite_server.config import LoraConfig
    from ferrite_server.engine.types import RequestParams, StoppingParams
    from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
    from tests.support.lora_adapters import AdapterSpec, write_peft_adapter

    adapters = tuple(
        (name, str(write_peft_adapter(tiny_model_dir, tmp_path / name, AdapterSpec(seed, weight_std=0.2))))
        for name, seed in (("a", 51), ("b", 52))
    )

    def run(capture: CountingCapture | None) -> list[list[int]]:
        config = replace(shard_config(tiny_model_dir), attention_backend="triton", device="cpu",
                         lora=LoraConfig(adapters=adapters))
        engine = Engine(ModelRunner.load(config), config, graph_capture=capture)
        warmup = engine.warmup(max_batch_prefill_tokens=64, max_batch_size=8, max_total_tokens=128)
        stopping = StoppingParams(max_new_tokens=5)
        requests = [ScriptedRequest(index, [5, 9, 13, 2], RequestParams(stopping=stopping, adapter_id=adapter))
                    for index, adapter in enumerate(["b", "", "a", "b", ""])]
        EngineDriver(engine, BlockAllocator(warmup.num_blocks, seed=1)).run(requests)
        return [request.generated_ids for request in requests]

    capture = CountingCapture()
    graphed = run(capture)
    assert capture.replays[8] >= 3  # five rows padded to the bucket of 8
    assert graphed == run(None)
    # One prompt: equal under one adapter, different between adapter "b" and the base model.
    assert graphed[0] == graphed[3] and graphed[1] == graphed[4] and graphed[0] != graphed[1]


def test_verify_steps_replay_their_own_graphs_and_keep_the_tokens(tiny_model_dir: Path) -> None:
    """--speculate 3 with the target as its own draft: every proposal is accepted, so verify
    steps have 4 tokens per sequence and replay the verify graphs (padded to a bucket); the
    tokens equal eager speculation and plain greedy decoding."""
    from ferrite_server.engine.sampling.watermark import Watermark
    from ferrite_server.engine.speculative.draft import DraftModel
    from ferrite_server.engine.types import RequestParams, StoppingParams
    from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest

    speculate = 3
    prompts = [[5, 9, 13, 2, 7], [6, 4, 2], [11, 12, 13, 14]]

    def run(capture: CountingCapture | None, num_speculative_tokens: int) -> list[list[int]]:
        draft = {} if num_speculative_tokens == 0 else {
            "speculative_method": "draft", "draft_model_id": tiny_model_dir}
        config = replace(shard_config(tiny_model_dir), attention_backend="triton", device="cpu",
                         cuda_graph_batch_sizes=(2, 4), **draft)
        runner = ModelRunner.load(config)
        draft_model = DraftModel.load(config, runner.facts, Watermark(config.watermark)) if draft else None
        engine = Engine(runner, config, graph_capture=capture, draft=draft_model)
        warmup = engine.warmup(max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=128,
                               num_speculative_tokens=num_speculative_tokens)
        stopping = StoppingParams(max_new_tokens=13, ignore_eos=True)
        requests = [ScriptedRequest(index + 1, prompt, RequestParams(stopping=stopping))
                    for index, prompt in enumerate(prompts)]
        EngineDriver(engine, BlockAllocator(warmup.num_blocks, seed=1),
                     num_lookahead_tokens=num_speculative_tokens).run(requests)
        return [request.generated_ids for request in requests]

    capture = CountingCapture()
    graphed = run(capture, speculate)
    # Graph outputs are keyed by their token rows: decodes 2 / 4, verifies 2 x 4 / 4 x 4.
    assert capture.replays[16] >= 2, capture.replays  # 3 sequences padded to the bucket of 4
    assert graphed == run(None, speculate) == run(None, 0)
