"""Prometheus metrics and request logs end to end (issue 8, "Must show"): /metrics (and the
--prometheus-port listener) parsed with the official parser; known requests move counters and
histograms by exactly the right amounts; KV blocks return to idle; one JSON log line per
finished request; nothing is exported without --otlp-endpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from support.launcher import RunningFerrite, running_ferrite, stop
from support.otlp_receiver import running_otlp_receiver

PROMPTS = ("Hello, metrics!", "Count the tokens, please.", "abc")
MAX_NEW_TOKENS = 5
IDLE_TIMEOUT_S = 60.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Samples by (name, labels). The parser names every counter sample `<family>_total`, also
    for TGI's counters whose exposed name has no suffix (`tgi_request_count` -> `..._total`)."""
    answer = requests.get(f"{url}/metrics", timeout=30)
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_method(samples: Samples, name: str) -> float:
    return sum(value(samples, name, method=method) for method in ("prefill", "decode"))


def wait_until_idle(server: RunningFerrite) -> Samples:
    """Metrics once nothing runs and every KV block is free again (bounded wait)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        samples = scrape(server.base_url)
        idle = (value(samples, "ferrite_requests_running") == 0
                and value(samples, "ferrite_requests_waiting") == 0
                and value(samples, "ferrite_kv_blocks_used") == 0)
        if idle or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def generate(server: RunningFerrite, prompt: str, stream: bool) -> tuple[int, int, str]:
    """(prompt tokens, generated tokens, x-request-id) of one request."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "details": True}}
    if not stream:
        answer = requests.post(f"{server.base_url}/generate", json=body, timeout=120)
        answer.raise_for_status()
        generated = answer.json()["details"]["generated_tokens"]
        return int(answer.headers["x-prompt-tokens"]), generated, answer.headers["x-request-id"]
    answer = requests.post(f"{server.base_url}/generate_stream", json=body, timeout=120, stream=True)
    answer.raise_for_status()
    events = [json.loads(line[len(b"data:"):]) for line in answer.iter_lines() if line.startswith(b"data:")]
    details = events[-1]["details"]
    return details["input_length"], details["generated_tokens"], answer.headers["x-request-id"]


def finished_request_lines(log: str) -> list[dict]:
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("origin") == "router" and record.get("message") == "request finished":
            lines.append(record)
    return lines


def test_known_requests_move_the_metrics_by_exactly_their_sizes(tiny_model_dir: Path) -> None:
    with running_otlp_receiver() as receiver:
        # Were an exporter built by default (e.g. from these standard variables), it would send
        # to the receiver: without --otlp-endpoint nothing may arrive.
        otel_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_EXPORTER": "otlp"}
        with running_ferrite(["--model-id", str(tiny_model_dir), "--json-output"], env=otel_env) as server:
            before = wait_until_idle(server)
            sizes = [generate(server, prompt, stream=index == 2) for index, prompt in enumerate(PROMPTS)]
            after = wait_until_idle(server)
            assert server.prometheus_url is not None
            on_metrics_port = scrape(server.prometheus_url)
            not_served = requests.post(f"{server.prometheus_url}/generate", json={"inputs": "x"}, timeout=30)
            assert stop(server) == 0
            log = server.log()
        assert receiver.spans() == [] and receiver.service.num_exports == 0

    num_requests = len(PROMPTS)
    input_tokens = sum(size[0] for size in sizes)
    generated_tokens = sum(size[1] for size in sizes)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Per request: TGI's counters and histograms, and ferrite's latency histograms.
    assert delta("tgi_request_count_total") == num_requests
    assert delta("tgi_request_success_total") == num_requests
    for histogram in ("tgi_request_duration", "tgi_request_queue_duration", "ferrite_time_to_first_token_seconds",
                      "ferrite_queue_wait_seconds", "tgi_request_generated_tokens", "tgi_request_input_length"):
        assert delta(f"{histogram}_count") == num_requests, histogram
        assert delta(f"{histogram}_bucket", le="+Inf") == num_requests, histogram
    assert delta("tgi_request_generated_tokens_sum") == generated_tokens
    assert delta("tgi_request_input_length_sum") == input_tokens
    assert delta("tgi_request_max_new_tokens_sum") == num_requests * MAX_NEW_TOKENS
    # Every token after a request's first is one inter-token gap.
    assert delta("ferrite_inter_token_latency_seconds_count") == generated_tokens - num_requests

    # Per step. The requests ran one after another: each took one prefill step for its first
    # token and one decode step per further token. Counts by method add up to those steps, and
    # every prompt token and decode input (each generated token but the last) was computed once.
    num_steps = delta("ferrite_scheduler_steps_total")
    assert num_steps == generated_tokens
    assert delta("tgi_batch_inference_count_total", method="prefill") == num_requests
    assert by_method(after, "tgi_batch_inference_count_total") - by_method(before, "tgi_batch_inference_count_total") == num_steps
    assert by_method(after, "tgi_batch_inference_success_total") - by_method(before, "tgi_batch_inference_success_total") == num_steps
    for histogram in ("tgi_batch_inference_duration", "tgi_batch_forward_duration", "ferrite_step_batch_size"):
        count = by_method(after, f"{histogram}_count") - by_method(before, f"{histogram}_count")
        assert count == num_steps, histogram
    step_tokens = by_method(after, "ferrite_step_tokens_sum") - by_method(before, "ferrite_step_tokens_sum")
    assert step_tokens == input_tokens + generated_tokens - num_requests
    assert delta("ferrite_preemptions_total") == 0

    # KV blocks are back to their idle value.
    assert value(after, "ferrite_kv_blocks_used") == value(before, "ferrite_kv_blocks_used") == 0
    assert value(after, "ferrite_kv_blocks_free") == value(after, "ferrite_kv_blocks_total") > 0

    # The metrics-only listener serves the same exposition, and nothing else.
    assert value(on_metrics_port, "tgi_request_count_total") == value(after, "tgi_request_count_total")
    assert not_served.status_code == 404

    # One JSON line per finished request, with its id, sizes and timings.
    lines = finished_request_lines(log)
    assert len(lines) == num_requests, log[-3000:]
    by_request_id = {line["span"]["request_id"]: line for line in lines}
    for prompt_tokens, generated, request_id in sizes:
        line = by_request_id[request_id]
        assert (line["input_tokens"], line["generated_tokens"]) == (prompt_tokens, generated)
        assert line["finish_reason"] in ("length", "eos_token")
        assert 0 <= line["queue_s"] <= line["time_to_first_token_s"] <= line["total_s"]
