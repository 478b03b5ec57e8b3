"""Proto messages <-> engine types (engine/types.py). Nothing else; no engine calls.

Proto3 zero values mean "off" for sampling knobs; they are normalized here to the engine's
neutral values (temperature 0 -> 1.0, top_p 0 -> 1.0, ...), so the engine sees one spelling.
"""

from __future__ import annotations

from ferrite_server.engine import types as engine
from ferrite_server.proto import shard_pb2 as pb


def _scale_or_neutral(value: float) -> float:
    """temperature / top_p / typical_p / repetition_penalty: 0 means off, i.e. 1.0."""
    return 1.0 if value == 0.0 else float(value)


def sampling_from_proto(message: pb.SamplingParameters) -> engine.SamplingParams:
    return engine.SamplingParams(
        do_sample=message.do_sample,
        temperature=_scale_or_neutral(message.temperature),
        top_k=message.top_k,
        top_p=_scale_or_neutral(message.top_p),
        typical_p=_scale_or_neutral(message.typical_p),
        min_p=float(message.min_p),
        repetition_penalty=_scale_or_neutral(message.repetition_penalty),
        frequency_penalty=float(message.frequency_penalty),
        presence_penalty=float(message.presence_penalty),
        seed=message.seed if message.has_seed else None,
        logit_bias=tuple(sorted((int(k), float(v)) for k, v in message.logit_bias.items())),
        watermark=message.watermark,
        grammar=grammar_from_proto(message.grammar) if message.HasField("grammar") else None,
    )


_GRAMMAR_KINDS = {pb.GRAMMAR_KIND_JSON_SCHEMA: "json", pb.GRAMMAR_KIND_REGEX: "regex"}


def grammar_from_proto(message: pb.Grammar) -> engine.Grammar:
    """An unknown kind keeps its number in the name, so compiling it fails with that name."""
    kind = _GRAMMAR_KINDS.get(message.kind, f"kind {message.kind}")
    return engine.Grammar(kind=kind, value=message.value)


def request_params_from_proto(message: pb.RequestParameters) -> engine.RequestParams:
    return engine.RequestParams(
        sampling=sampling_from_proto(message.sampling),
        stopping=engine.StoppingParams(
            max_new_tokens=message.stopping.max_new_tokens,
            ignore_eos=message.stopping.ignore_eos,
        ),
        top_n_tokens=message.top_n_tokens,
        prompt_logprobs=message.prompt_logprobs,
        adapter_id=message.adapter_id,
    )


def new_request_from_proto(message: pb.NewRequest) -> engine.NewRequest:
    return engine.NewRequest(
        request_id=message.request_id,
        token_ids=tuple(message.token_ids),
        num_prompt_tokens=message.num_prompt_tokens,
        num_cached_tokens=message.num_cached_tokens,
        num_scheduled_tokens=message.num_scheduled_tokens,
        block_table=tuple(message.block_ids),
        params=(
            request_params_from_proto(message.parameters)
            if message.HasField("parameters")
            else None
        ),
    )


def running_request_from_proto(message: pb.RunningRequest) -> engine.RunningRequest:
    return engine.RunningRequest(
        request_id=message.request_id,
        new_token_ids=tuple(message.new_token_ids),
        new_block_ids=tuple(message.new_block_ids),
        num_scheduled_tokens=message.num_scheduled_tokens,
        num_lookahead_tokens=message.num_lookahead_tokens,
        append_generated_tokens=message.append_generated_tokens,
    )


def step_from_proto(message: pb.Step) -> engine.StepInput:
    """step_id / after_step_id stay behind: they order calls in the service (step_order.py)
    and mean nothing to the engine."""
    return engine.StepInput(
        new_requests=tuple(new_request_from_proto(new) for new in message.new_requests),
        running_requests=tuple(
            running_request_from_proto(running) for running in message.running_requests
        ),
        release_request_ids=tuple(message.release_request_ids),
    )


def generation_to_proto(generation: engine.Generation) -> pb.Generation:
    return pb.Generation(
        request_id=generation.request_id,
        tokens=[
            pb.GeneratedToken(
                token_id=token.token_id,
                logprob=token.logprob,
                top_tokens=[
                    pb.TopToken(token_id=token_id, logprob=logprob)
                    for token_id, logprob in token.top_tokens
                ],
            )
            for token in generation.tokens
        ],
        prompt_logprobs=generation.prompt_logprobs,
        finish_reason=int(generation.finish_reason),
        error=generation.error,
        num_proposed_tokens=generation.num_proposed_tokens,
    )


def step_output_to_proto(output: engine.StepOutput, total_ns: int) -> pb.StepResponse:
    """total_ns: the service's own wall time for the call (conversions, the wait for its turn
    and thread hand-off included), never less than the engine's; the service may set it after
    this conversion, so that it counts too."""
    return pb.StepResponse(
        generations=[generation_to_proto(generation) for generation in output.generations],
        timings=pb.StepTimings(
            forward_ns=output.timings.forward_ns,
            sampling_ns=output.timings.sampling_ns,
            total_ns=max(total_ns, output.timings.total_ns),
        ),
    )


def info_to_proto(info: engine.EngineInfo) -> pb.InfoResponse:
    return pb.InfoResponse(
        model_id=info.model_id,
        architecture=info.architecture,
        dtype=info.dtype,
        device=info.device,
        block_size=info.block_size,
        vocab_size=info.vocab_size,
        eos_token_ids=info.eos_token_ids,
        max_position_embeddings=info.max_position_embeddings,
        world_size=info.world_size,
        attention_backend=info.attention_backend,
        quantization=info.quantization,
        kv_cache_dtype=info.kv_cache_dtype,
        supports_chunked_prefill=info.supports_chunked_prefill,
        supports_prompt_logprobs=info.supports_prompt_logprobs,
        max_top_n_tokens=info.max_top_n_tokens,
        rank_endpoints=info.rank_endpoints,
        model_implementation=info.model_implementation,
        lora_adapters=info.lora_adapters,
    )


def warmup_to_proto(result: engine.WarmupResult) -> pb.WarmupResponse:
    return pb.WarmupResponse(
        num_blocks=result.num_blocks,
        max_supported_total_tokens=result.max_supported_total_tokens,
        model_memory_bytes=result.model_memory_bytes,
        kv_cache_memory_bytes=result.kv_cache_memory_bytes,
        peak_activation_memory_bytes=result.peak_activation_memory_bytes,
    )
