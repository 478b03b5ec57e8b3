"""A TGI deployment's command line starts ferrite unchanged (issue 20): TGI's flags and their
environment variables, the limits they set enforced with TGI's errors, the flags that cannot
apply named in one warning line each; TGI's routes `/docs`, `/invocations`, `/chat_tokenize`;
and the watermark, detected in watermarked text and not in the rest, generated side by side
in one batch."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import openai
import pytest
import requests
from huggingface_hub import InferenceClient
from text_generation import Client
from text_generation.errors import ValidationError

from ferrite_server.model_prep import ensure_default_model
from ferrite_server.watermark_detect import detect_text
from support.launcher import running_ferrite

MODEL_CACHE_DIR = Path("~/.cache/ferrite/models").expanduser()
GAMMA = 0.25
# TGI's command line, flag for flag (the values are this test's, the names TGI's).
TGI_FLAGS = [
    "--max-batch-size", "8", "--max-best-of", "2", "--max-top-n-tokens", "3",
    "--max-input-length", "400", "--max-total-tokens", "700", "--max-waiting-tokens", "20",
    "--waiting-served-ratio", "1.2", "--cuda-memory-fraction", "0.9", "--payload-limit", "20000",
    "--trust-remote-code", "--sharded", "false", "--rope-scaling", "dynamic", "--rope-factor", "2",
    "--disable-custom-kernels", "--max-client-batch-size", "2",
    "--graceful-termination-timeout", "20", "--watermark-gamma", str(GAMMA),
    "--usage-stats", "off", "--dtype", "float32",
]
# ... and some through TGI's environment variables instead.
TGI_ENV = {"MAX_STOP_SEQUENCES": "2", "WATERMARK_DELTA": "3.0"}
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
OWN_SYSTEM = "You are a helpful assistant who knows geography"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model(MODEL_CACHE_DIR)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    hub_cache = tmp_path_factory.mktemp("hub-cache")
    # The model's tokenizer_config.json with another default system prompt in its template.
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert DEFAULT_SYSTEM in tokenizer_config["chat_template"]
    tokenizer_config["chat_template"] = tokenizer_config["chat_template"].replace(DEFAULT_SYSTEM, OWN_SYSTEM)
    config_path = tmp_path_factory.mktemp("tokenizer-config") / "tokenizer_config.json"
    config_path.write_text(json.dumps(tokenizer_config))
    flags = ["--model-id", str(model_dir), "--huggingface-hub-cache", str(hub_cache),
             "--tokenizer-config-path", str(config_path), *TGI_FLAGS]
    with running_ferrite(flags, env=TGI_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.base_url, timeout=300)


def test_the_limits_take_tgi_flags_and_environment_variables(server):
    info = requests.get(f"{server.base_url}/info", timeout=10).json()
    assert (info["max_batch_size"], info["max_best_of"], info["max_stop_sequences"]) == (8, 2, 2)
    assert (info["max_top_n_tokens"], info["max_input_tokens"], info["max_total_tokens"]) == (3, 400, 700)
    assert info["max_client_batch_size"] == 2
    assert info["attention_backend"] == "torch", "--disable-custom-kernels"


def test_flags_that_cannot_apply_are_each_named_once_in_the_log(server):
    log = server.log()
    for flag in ["--max-waiting-tokens", "--waiting-served-ratio", "--usage-stats"]:
        lines = [line for line in log.splitlines() if line.startswith(f"[launcher] {flag} ")]
        assert len(lines) == 1, (flag, lines)


def test_requests_are_served_and_refused_as_tgi_does(server, client):
    answer = client.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in answer.generated_text
    hub = InferenceClient(server.base_url)
    assert hub.text_generation("The capital of France is", max_new_tokens=8) == answer.generated_text

    with pytest.raises(ValidationError, match="supports up to 2 stop sequences. Given: 3"):
        client.generate("Hi", max_new_tokens=4, stop_sequences=["a", "b", "c"])
    with pytest.raises(ValidationError, match="best_of"):
        client.generate("Hi", max_new_tokens=4, best_of=3, do_sample=True)
    with pytest.raises(ValidationError, match="top_n_tokens"):
        client.generate("Hi", max_new_tokens=4, top_n_tokens=4)
    with pytest.raises(ValidationError, match="less than 400 tokens"):
        client.generate("hello " * 450, max_new_tokens=4)
    too_big = requests.post(f"{server.base_url}/generate", timeout=30,
                            json={"inputs": "x" * 30_000, "parameters": {"max_new_tokens": 2}})
    assert too_big.status_code == 413, too_big.text

    openai_client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum allowed batch size of 2"):
        openai_client.completions.create(model="m", prompt=["a", "b", "c"], max_tokens=2)
    two = openai_client.completions.create(model="m", prompt=["1, 2,", "a, b,"], max_tokens=2)
    assert len(two.choices) == 2


def test_docs_invocations_and_chat_tokenize(server):
    page = requests.get(f"{server.base_url}/docs/", timeout=10)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert requests.get(f"{server.base_url}/docs/swagger-ui-bundle.js", timeout=10).status_code == 200
    paths = requests.get(f"{server.base_url}/api-doc/openapi.json", timeout=10).json()["paths"]
    assert {"/invocations", "/chat_tokenize"} <= set(paths)

    question = [{"role": "user", "content": "What is the capital of France?"}]
    tokenized = requests.post(f"{server.base_url}/chat_tokenize", timeout=30,
                              json={"model": "tgi", "messages": question}).json()
    assert tokenized["templated_text"].endswith("<|im_start|>assistant\n")
    assert "What is the capital of France?" in tokenized["templated_text"]
    assert OWN_SYSTEM in tokenized["templated_text"], "--tokenizer-config-path's template"
    assert "".join(t["text"] for t in tokenized["tokenize_response"]) == tokenized["templated_text"]

    chat = requests.post(f"{server.base_url}/invocations", timeout=120,
                         json={"messages": question, "max_tokens": 12, "temperature": 0})
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion"
    assert "Paris" in chat.json()["choices"][0]["message"]["content"]
    generate = requests.post(f"{server.base_url}/invocations", timeout=120,
                             json={"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}})
    assert generate.status_code == 200
    assert "Paris" in generate.json()[0]["generated_text"]
    neither = requests.post(f"{server.base_url}/invocations", timeout=10, json={"text": "x"})
    assert neither.status_code == 422


def test_watermarked_text_is_detected_and_plain_text_is_not(server, client, model_dir):
    prompt = "Write a long, imaginative story about a dragon who learns to cook:"

    def generate(watermark: bool, seed: int) -> str:
        return client.generate(prompt, max_new_tokens=160, do_sample=True, temperature=1.0,
                               seed=seed, watermark=watermark).generated_text

    # Watermarked and plain requests run concurrently, in the same batches.
    jobs = [(True, 1), (False, 1), (True, 2), (False, 2)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(lambda job: generate(*job), jobs))
    for (watermark, seed), text in zip(jobs, texts):
        detection = detect_text(text, model_dir, gamma=GAMMA)
        assert detection.num_tokens_scored > 60, (seed, text)
        if watermark:
            assert detection.watermarked and detection.z_score > 4.0, (seed, detection, text)
        else:
            assert not detection.watermarked and detection.z_score < 4.0, (seed, detection, text)
    # The plain answers are what the same seeds give with no watermarked request around.
    assert generate(False, 1) == texts[1]
