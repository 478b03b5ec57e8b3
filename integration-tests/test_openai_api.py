"""The OpenAI-compatible API through the real launcher, shard and router, driven by the official
`openai` client and `huggingface_hub.InferenceClient` (issue 5, "Must show"). The reference
is transformers on the same checkpoint and the same chat template."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
from huggingface_hub import InferenceClient
from transformers import AutoTokenizer

from ferrite_server.model_prep import ensure_default_model
from support.launcher import running_ferrite
from tests.support.hf_reference import greedy_reference, load_reference_model

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 16
TOP_LOGPROBS = 3


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model(MODEL_CACHE_DIR)


@pytest.fixture(scope="module")
def server(model_dir):
    with running_ferrite(["--model-id", str(model_dir), "--dtype", "float32"]) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def model_name(client) -> str:
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def reference(model_dir, tokenizer):
    """transformers' greedy answer to QUESTION, through the model's own chat template."""
    rendered = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    prompt_ids = list(rendered["input_ids"])
    model = load_reference_model(model_dir)
    with torch.inference_mode():
        generation = greedy_reference(model, prompt_ids, MAX_TOKENS, TOP_LOGPROBS)
    return prompt_ids, generation


def chat(client, model_name, **kwargs):
    """QUESTION, greedy, MAX_TOKENS, unless `kwargs` say otherwise."""
    arguments = {"messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=model_name, **arguments)


def complete(client, model_name, prompt, **kwargs):
    arguments = {"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.completions.create(model=model_name, prompt=prompt, **arguments)


def streamed_chat(chunks) -> tuple[str, list[str]]:
    """The concatenated content and the finish reasons of a one-choice chat stream."""
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    text = "".join(choice.delta.content or "" for choice in choices)
    return text, [choice.finish_reason for choice in choices if choice.finish_reason]


def test_chat_answers_paris_like_transformers(client, model_name, tokenizer, reference):
    prompt_ids, expected = reference
    response = chat(client, model_name)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == model_name
    assert response.system_fingerprint
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    expected_text = tokenizer.decode(expected.token_ids, skip_special_tokens=True)
    assert choice.message.content == expected_text
    ended_by_eos = expected.token_ids[-1] == tokenizer.eos_token_id
    assert choice.finish_reason == ("stop" if ended_by_eos else "length")
    assert response.usage.prompt_tokens == len(prompt_ids), "the template renders as in transformers"
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.usage.total_tokens == len(prompt_ids) + len(expected.token_ids)


def test_completions_on_the_rendered_prompt_agree_with_chat(client, model_name, tokenizer):
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    completion = complete(client, model_name, prompt)
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert "Paris" in completion.choices[0].text
    assert completion.choices[0].text == chat(client, model_name).choices[0].message.content

    echoed = complete(client, model_name, prompt, max_tokens=4, echo=True)
    assert echoed.choices[0].text.startswith(prompt)


def test_streamed_text_and_usage_equal_the_whole_answer(client, model_name):
    whole = chat(client, model_name)
    chunks = list(chat(client, model_name, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1
    text, finish = streamed_chat(chunks)
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage == whole.usage

    prompt = "The capital of France is"
    whole_completion = complete(client, model_name, prompt)
    with_usage = {"include_usage": True}
    streamed = list(complete(client, model_name, prompt, stream=True, stream_options=with_usage))
    streamed_text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    assert streamed_text == whole_completion.choices[0].text
    assert streamed[-1].usage == whole_completion.usage


def test_logprobs_with_three_alternatives_match_transformers(client, model_name, tokenizer, reference):
    _, expected = reference
    response = chat(client, model_name, logprobs=True, top_logprobs=TOP_LOGPROBS)
    content = response.choices[0].logprobs.content
    text_tokens = [token for token in expected.token_ids if token not in tokenizer.all_special_ids]
    assert len(content) == len(text_tokens)
    for position, entry in enumerate(content):
        assert len(entry.top_logprobs) == TOP_LOGPROBS
        assert entry.token == tokenizer.decode([expected.token_ids[position]])
        assert entry.logprob == pytest.approx(expected.logprobs[position], abs=1e-3)
        assert entry.top_logprobs[0].token == entry.token, "greedy picks the most likely token"
        expected_top = expected.top_tokens[position]
        # Same alternatives with the same logprobs (as a set: near-ties may order differently).
        expected_tokens = {tokenizer.decode([token_id]) for token_id, _ in expected_top}
        assert {top.token for top in entry.top_logprobs} == expected_tokens
        for top, (_, logprob) in zip(entry.top_logprobs, expected_top, strict=True):
            assert top.logprob == pytest.approx(logprob, abs=1e-3)

    legacy = complete(client, model_name, "The capital of France is", max_tokens=5, logprobs=2)
    logprobs = legacy.choices[0].logprobs
    # One entry per generated token but a closing EOS, which is not part of the text.
    eos_entry = 1 if legacy.choices[0].finish_reason == "stop" else 0
    text_tokens = legacy.usage.completion_tokens - eos_entry
    lengths = [len(logprobs.tokens), len(logprobs.token_logprobs), len(logprobs.top_logprobs)]
    assert lengths == [text_tokens] * 3
    assert all(1 <= len(alternatives) <= 2 for alternatives in logprobs.top_logprobs)
    assert all(logprob <= 0.0 for logprob in logprobs.token_logprobs)


def test_logit_bias_is_applied(client, model_name, tokenizer, reference):
    _, expected = reference
    greedy_first = expected.token_ids[0]
    banned = chat(client, model_name, max_tokens=1, logprobs=True, logit_bias={str(greedy_first): -100})
    first = banned.choices[0].logprobs.content[0].token
    assert first != tokenizer.decode([greedy_first]), "the banned greedy token is not chosen"
    favoured_id = tokenizer.encode(" Zebra", add_special_tokens=False)[0]
    favoured = chat(client, model_name, max_tokens=1, logprobs=True, logit_bias={str(favoured_id): 100})
    assert favoured.choices[0].logprobs.content[0].token == tokenizer.decode([favoured_id])


def test_n_gives_independent_choices(client, model_name):
    response = chat(client, model_name, n=3, temperature=1.0, seed=123, max_tokens=8)
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert all(choice.finish_reason in ("stop", "length") for choice in response.choices)
    assert response.usage.completion_tokens >= 3
    again = chat(client, model_name, n=3, temperature=1.0, seed=123, max_tokens=8)
    contents = [choice.message.content for choice in response.choices]
    assert [choice.message.content for choice in again.choices] == contents, "seeded sampling repeats"

    prompts = ["The capital of France is", "One, two, three,"]
    completion = complete(client, model_name, prompts, max_tokens=4, n=2)
    texts = [choice.text for choice in completion.choices]
    assert len(texts) == 4
    assert texts[0] == texts[1] and texts[2] == texts[3], "greedy copies of each prompt"
    for index, prompt in enumerate(prompts):
        alone = complete(client, model_name, prompt, max_tokens=4)
        assert texts[2 * index] == alone.choices[0].text


def test_stop_and_max_tokens_give_the_right_finish_reasons(client, model_name):
    short = chat(client, model_name, max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2

    full = chat(client, model_name).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    for stream in (False, True):
        response = chat(client, model_name, stop=[stop], stream=stream)
        if stream:
            text, finish = streamed_chat(list(response))
        else:
            text, finish = response.choices[0].message.content, [response.choices[0].finish_reason]
        assert text == full[: full.index(stop)], "the stop sequence is left out"
        assert finish == ["stop"]


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        ({"temperature": 3.0}, 400),
        ({"top_p": 0.0}, 400),
        ({"n": 0}, 400),
        ({"max_tokens": 1_000_000}, 400),
        ({"top_logprobs": 2}, 400),
        # A tools entry without its function, a tool_choice naming a function not in tools,
        # a forced call with a response_format: 400s, as at OpenAI and vLLM.
        ({"tools": [{"type": "function"}]}, 400),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
          "response_format": {"type": "json_object"}}, 400),
        # A schema the grammar engine refuses: 422.
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": {"type": "strin"}}}}, 422),
    ],
)
def test_bad_parameters_are_api_errors(client, model_name, arguments, status):
    with pytest.raises(openai.APIStatusError) as raised:
        chat(client, model_name, **arguments)
    assert raised.value.status_code == status
    error = raised.value.body
    assert error["message"] and error["type"] == "invalid_request_error", error


def test_bad_parameters_on_a_stream_fail_before_it_starts(client, model_name):
    with pytest.raises(openai.BadRequestError):
        chat(client, model_name, temperature=-1, stream=True)


def test_huggingface_hub_chat_completion(server, model_name):
    hub = InferenceClient(base_url=server.base_url, timeout=300)
    response = hub.chat_completion(QUESTION, max_tokens=MAX_TOKENS, temperature=0, model=model_name)
    content = response.choices[0].message.content
    assert "Paris" in content
    assert response.usage.completion_tokens > 0
    streamed = hub.chat_completion(
        QUESTION, max_tokens=MAX_TOKENS, temperature=0, model=model_name, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == content
