"""Tool calling through the launcher with real clients (issue 16, "Must show"): the `openai`
client and `huggingface_hub.InferenceClient.chat_completion(tools=...)`. `tool_choice`
"required" or a named function forces a call by a grammar (the bundled 135M model follows no
instructions: the grammar alone makes the arguments valid), whole and streamed, and the
streamed call assembled by the client equals the whole one (greedy). `tools: []` and
"none" are as if absent; tool results (`role: "tool"`) go through the chat template; "auto"
leaves an answer that is no call as content."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
import requests
from huggingface_hub import InferenceClient
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel, ConfigDict, Field

from support.launcher import running_ferrite

MAX_TOKENS = 120


class WeatherArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


class Place(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=20)
    country_code: str = Field(pattern="^[A-Z]{2}$")


class TripArguments(BaseModel):
    """Nested models: pydantic writes `$defs` and `$ref`s the tool grammar must carry."""

    model_config = ConfigDict(extra="forbid")
    origin: Place
    destination: Place
    nights: int = Field(ge=1, le=30)


ARGUMENTS = {"get_weather": WeatherArguments, "plan_trip": TripArguments}
TOOLS = [
    {"type": "function", "function": {
        "name": name, "description": name.replace("_", " "),
        "parameters": model.model_json_schema()}}
    for name, model in ARGUMENTS.items()
]
PROMPTS = [
    "What is the weather like in Paris today?",
    "Plan a trip from Rome to Oslo for a week.",
    "Tell me a joke.",
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NAMED = {"type": "function", "function": {"name": "plan_trip"}}


@pytest.fixture(scope="module")
def server():
    with running_ferrite(["--dtype", "float32"]) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def hub(server) -> InferenceClient:
    return InferenceClient(base_url=server.base_url, timeout=300)


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _create(client, prompt: str, **kwargs):
    arguments = {"max_tokens": MAX_TOKENS, "temperature": 0, "tools": TOOLS, **kwargs}
    return client.chat.completions.create(model="ferrite", messages=_messages(prompt), **arguments)


def _validated(name: str, arguments: str) -> BaseModel:
    assert name in ARGUMENTS, name
    return ARGUMENTS[name].model_validate_json(arguments)


def _calls(message) -> list[tuple[str, str]]:
    return [(call.function.name, call.function.arguments) for call in message.tool_calls or []]


def _assembled_openai_stream(client, prompt: str, **kwargs):
    """The stream assembled by the `openai` client's own helper, and the raw tool-call deltas.
    (The helper's `get_final_completion` refuses answers cut by length: then its snapshot.)"""
    state = ChatCompletionStreamState()
    deltas = []
    for chunk in _create(client, prompt, stream=True, **kwargs):
        state.handle_chunk(chunk)
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or [])
    snapshot = state.current_completion_snapshot
    if snapshot.choices[0].finish_reason == "length":
        return snapshot, deltas
    return state.get_final_completion(), deltas


@pytest.mark.parametrize(
    ("prompt", "tool_choice"),
    [(prompt, "required") for prompt in PROMPTS] + [(PROMPTS[0], NAMED)],
    ids=["required-weather", "required-trip", "required-joke", "named"],
)
def test_forced_calls_validate_whole_and_streamed_with_openai(client, prompt, tool_choice):
    whole = _create(client, prompt, tool_choice=tool_choice)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [(name, arguments)] = _calls(choice.message)
    if tool_choice == NAMED:
        assert name == "plan_trip"
    _validated(name, arguments)
    assert choice.message.tool_calls[0].id.startswith("call_")
    assert choice.message.tool_calls[0].type == "function"

    final, deltas = _assembled_openai_stream(client, prompt, tool_choice=tool_choice)
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert _calls(streamed.message) == [(name, arguments)], "streamed call == whole call"
    # OpenAI's shape: the first piece names the call, the others only add argument text.
    first, *rest = deltas
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0, "function", name, "")
    assert first.id.startswith("call_")
    assert rest and all(d.id is None and d.function.name is None for d in rest)


def _hub_stream_calls(hub, prompt: str, **kwargs) -> tuple[list[tuple[str, str]], list[str]]:
    """A huggingface_hub stream's calls, assembled by index, and its finish reasons."""
    calls: dict[int, list[str]] = {}
    finishes = []
    for chunk in hub.chat_completion(_messages(prompt), stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:
                    assert delta.id and delta.type == "function", delta
                    calls[delta.index] = [delta.function.name, ""]
                calls[delta.index][1] += delta.function.arguments
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return [tuple(call) for _, call in sorted(calls.items())], finishes


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_required_call_with_huggingface_hub(hub, prompt):
    kwargs = {"tools": TOOLS, "tool_choice": "required", "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = hub.chat_completion(_messages(prompt), **kwargs)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    _validated(call.function.name, call.function.arguments)
    streamed, finishes = _hub_stream_calls(hub, prompt, **kwargs)
    assert streamed == [(call.function.name, call.function.arguments)]
    assert finishes == ["tool_calls"]


def test_no_tools_and_none_behave_as_absent(client):
    def answer(**kwargs):
        completion = client.chat.completions.create(
            model="ferrite", messages=QUESTION, max_tokens=24, temperature=0, **kwargs)
        return completion.choices[0].message.content, completion.usage.prompt_tokens

    plain = answer()
    assert "Paris" in plain[0]
    assert answer(tools=[]) == plain
    assert answer(tools=TOOLS, tool_choice="none") == plain
    assert answer(tools=[], tool_choice="none") == plain
    # With tools offered (auto), the template's prompt carries them.
    offered = client.chat.completions.create(
        model="ferrite", messages=QUESTION, max_tokens=1, temperature=0, tools=TOOLS)
    assert offered.usage.prompt_tokens > plain[1]


def test_auto_leaves_an_answer_that_is_no_call_as_content(client):
    # Five tokens can never hold a whole call (`{"name": "get_weather", ...}`): whatever the
    # model starts with, the answer is content, cut by length.
    for prompt in PROMPTS:
        whole = _create(client, prompt, tool_choice="auto", max_tokens=5)
        choice = whole.choices[0]
        assert (choice.finish_reason, choice.message.tool_calls) == ("length", None)
        assert choice.message.content
        final, deltas = _assembled_openai_stream(client, prompt, tool_choice="auto", max_tokens=5)
        assert deltas == []
        assert final.choices[0].message.content == choice.message.content
        assert final.choices[0].finish_reason == "length"
    # A full answer is either content (stop / length) or calls that parse (tool_calls).
    choice = _create(client, PROMPTS[2]).choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        for name, arguments in _calls(choice.message):
            assert name in ARGUMENTS and isinstance(json.loads(arguments), dict)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_tool_results_go_through_the_template(client, server):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather",
                         "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    result = "It is 22 degrees and sunny in Paris."
    conversation = _messages(PROMPTS[0]) + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    completion = client.chat.completions.create(
        model="ferrite", messages=conversation, tools=TOOLS, max_tokens=16, temperature=0)
    choice = completion.choices[0]
    assert choice.message.content or choice.message.tool_calls
    tokenized = requests.post(
        f"{server.base_url}/chat_tokenize", json={"messages": conversation, "tools": TOOLS},
        timeout=60)
    assert tokenized.status_code == 200, tokenized.text
    prompt = tokenized.json()["templated_text"]
    # SmolLM2's template shows neither tools nor calls: ferrite writes the call into the
    # assistant turn as the model is asked to write one, and the result is a `tool` turn.
    written_call = '{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}'
    assert f"<|im_start|>assistant\n{written_call}<|im_end|>" in prompt
    assert f"<|im_start|>tool\n{result}<|im_end|>" in prompt
    assert completion.usage.prompt_tokens == len(tokenized.json()["tokenize_response"])
    without_result = client.chat.completions.create(
        model="ferrite", messages=conversation[:2], tools=TOOLS, max_tokens=1, temperature=0)
    assert without_result.usage.prompt_tokens < completion.usage.prompt_tokens


def test_tool_refusals_are_openai_errors(client):
    cases = [
        ({"tools": [{"type": "function"}]}, 400, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400,
         "tool_choice"),
        ({"tools": [], "tool_choice": "required"}, 400, "tool_choice"),
        ({"tools": [{"type": "function",
                     "function": {"name": "f", "parameters": {"type": "strin"}}}],
          "tool_choice": "required"}, 422, "tools"),
    ]
    for arguments, status, param in cases:
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(
                model="ferrite", messages=QUESTION, max_tokens=4, **arguments)
        assert raised.value.status_code == status, raised.value.body
        assert raised.value.body["param"] == param
        assert raised.value.body["type"] == "invalid_request_error"
    assert "`f`" in raised.value.body["message"] and "strin" in raised.value.body["message"]
