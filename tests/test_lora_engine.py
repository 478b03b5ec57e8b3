"""Multi-LoRA through Engine.step, float32: requests of two adapters and of the base model run in
the same steps (prompt chunks mixed with decodes) and each equals its own greedy reference:
transformers + PEFT for the adapters, transformers for the base model. The adapters differ in
rank, targets and scaling (rsLoRA), so the padded, stacked weights are exercised too."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrite_server.config import LoraConfig
from ferrite_server.engine.types import NewRequest, RequestParams, StepInput, StoppingParams
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.hf_reference import greedy_reference, load_reference_model
from tests.support.lora_adapters import AdapterSpec, load_peft_reference, write_peft_adapter
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

MAX_NEW_TOKENS = 12
ADAPTERS = {
    "math": AdapterSpec(seed=21, rank=8, weight_std=0.2),
    "code": AdapterSpec(seed=22, rank=4, alpha=8.0, use_rslora=True, weight_std=0.2,
                        targets=("q_proj", "v_proj", "down_proj")),
}
# (adapter, join step, chunk sizes): adapters and the base model interleaved, chunks and joins
# while others decode.
SCRIPT = [("math", 0, (5,)), ("", 0, ()), ("code", 0, ()), ("math", 2, ()), ("", 3, (4,)),
          ("code", 4, ())]
PROMPT_LENGTHS = (17, 9, 12, 6, 13, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_with_adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("lora")
    model_dir = write_tiny_model(root / "model", TinyModelSpec(family="llama", seed=9))
    adapters = {name: write_peft_adapter(model_dir, root / name, spec) for name, spec in ADAPTERS.items()}
    return model_dir, adapters


def test_adapters_and_the_base_model_share_steps_and_match_peft(tiny_with_adapters) -> None:
    model_dir, adapter_dirs = tiny_with_adapters
    lora = LoraConfig(adapters=tuple((name, str(path)) for name, path in adapter_dirs.items()))
    engine, num_blocks = warmed_up_engine(model_dir, lora=lora)
    assert engine.info().lora_adapters == ("math", "code")
    requests = []
    for index, ((adapter, join_step, chunks), length) in enumerate(zip(SCRIPT, PROMPT_LENGTHS)):
        prompt = [6 + (index * 37 + position * 11) % 300 for position in range(length)]
        params = RequestParams(stopping=StoppingParams(max_new_tokens=MAX_NEW_TOKENS), adapter_id=adapter)
        requests.append(ScriptedRequest(100 + index, prompt, params, join_step, chunks))
    driver = EngineDriver(engine, BlockAllocator(num_blocks, seed=3))
    driver.run(requests)
    assert any(len(step.chunk_ids) + len(step.decode_ids) >= 5 for step in driver.steps)
    references = {"": load_reference_model(model_dir)}
    references.update({name: load_peft_reference(model_dir, path) for name, path in adapter_dirs.items()})
    outputs: dict[str, list[list[int]]] = {}
    for request in requests:
        adapter = request.params.adapter_id
        reference = greedy_reference(references[adapter], request.prompt_ids, MAX_NEW_TOKENS, 1)
        assert request.generated_ids == reference.token_ids, f"request {request.request_id} ({adapter!r})"
        for got, want in zip(request.tokens, reference.logprobs, strict=True):
            assert abs(got.logprob - want) < 1e-4
        outputs.setdefault(adapter, []).append(request.generated_ids)
    # The adapters really change the model: the same prompt answers differently under each.
    prompt = requests[0].prompt_ids
    answers = {name: greedy_reference(model, prompt, MAX_NEW_TOKENS, 1).token_ids
               for name, model in references.items()}
    assert len({tuple(answer) for answer in answers.values()}) == 3, answers


def test_an_unknown_adapter_rejects_only_its_request(tiny_with_adapters) -> None:
    model_dir, adapter_dirs = tiny_with_adapters
    lora = LoraConfig(adapters=(("math", str(adapter_dirs["math"])),))
    engine, _ = warmed_up_engine(model_dir, lora=lora)
    stopping = StoppingParams(max_new_tokens=2)
    new = [
        NewRequest(request_id, (7, 8, 9), 3, 0, 3, (block,), RequestParams(stopping=stopping, adapter_id=adapter))
        for request_id, adapter, block in ((1, "math", 0), (2, "code", 1))
    ]
    output = engine.step(StepInput(new_requests=tuple(new)))
    by_id = {generation.request_id: generation for generation in output.generations}
    assert by_id[1].error == "" and len(by_id[1].tokens) == 1
    assert "unknown LoRA adapter 'code'" in by_id[2].error and "'math'" in by_id[2].error


def test_adapter_memory_is_counted_with_the_weights(tiny_with_adapters) -> None:
    """Warmup reports the adapters' stacked matrices in the model's memory, which the KV cache
    is sized after (on a GPU: measured free memory, which they no longer are)."""
    model_dir, adapter_dirs = tiny_with_adapters
    plain, _ = warmed_up_engine(model_dir)
    lora = LoraConfig(adapters=tuple((name, str(path)) for name, path in adapter_dirs.items()))
    with_adapters, _ = warmed_up_engine(model_dir, lora=lora)
    warmup = {"plain": plain, "lora": with_adapters}
    memory = {name: engine.warmup(64, 8, 128).model_memory_bytes for name, engine in warmup.items()}
    layers = with_adapters._runner.model.model.layers  # type: ignore[attr-defined]
    lora_bytes = sum(
        buffer.numel() * buffer.element_size()
        for layer in layers for module in layer.modules()
        if getattr(module, "lora", None) is not None for buffer in module.lora.buffers()
    )
    assert lora_bytes > 0 and memory["lora"] - memory["plain"] == lora_bytes
