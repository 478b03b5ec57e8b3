"""OpenTelemetry end to end (issue 8, "Must show"): a real OTLP receiver in the test process,
the launcher exporting to it, and one request sent with a W3C `traceparent`: the router's and
the shard's spans are in that trace and correctly parented."""

from __future__ import annotations

import secrets
from pathlib import Path

import requests

from support.launcher import running_ferrite, stop
from support.otlp_receiver import ReceivedSpan, running_otlp_receiver

MAX_NEW_TOKENS = 3
SERVICE = "it"


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [span for span in spans if span.parent_span_id == parent.span_id]


def test_a_traceparent_request_yields_router_and_shard_spans_in_its_trace(tiny_model_dir: Path) -> None:
    trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
    with running_otlp_receiver() as receiver:
        with running_ferrite(["--model-id", str(tiny_model_dir), "--otlp-endpoint", receiver.endpoint,
                              "--otlp-service-name", SERVICE, "--log-level", "warn"]) as server:
            answer = requests.post(
                f"{server.base_url}/generate",
                json={"inputs": "Hello, traces!", "parameters": {"max_new_tokens": MAX_NEW_TOKENS,
                                                                  "details": True}},
                headers={"traceparent": f"00-{trace_id}-{caller_span_id}-01"},
                timeout=120,
            )
            answer.raise_for_status()
            generated_tokens = answer.json()["details"]["generated_tokens"]
            # Stopping flushes both processes' batch span processors: the spans must be there
            # now, without waiting for the processors' next scheduled export.
            assert stop(server) == 0, server.log()[-3000:]
            log = server.log()
        spans = [span for span in receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in s))
                 if span.trace_id == trace_id]

    services = {span.service for span in spans}
    assert services == {f"{SERVICE}.router", f"{SERVICE}.shard"}, spans
    router = [span for span in spans if span.service == f"{SERVICE}.router"]
    shard = [span for span in spans if span.service == f"{SERVICE}.shard"]

    # The request span is the caller's child; validation and the sequence phases are its own.
    (request,) = [span for span in router if span.name == "POST /generate"]
    assert request.parent_span_id == caller_span_id
    assert request.attributes["request_id"] == answer.headers["x-request-id"]
    phases = {span.name: span for span in children(router, request)}
    assert set(phases) == {"validation", "queue", "prefill", "decode"}, children(router, request)

    # One shard_step per step, under the request's prefill or decode span; generated tokens
    # after the first come from one decode step each.
    steps = [span for span in router if span.name == "shard_step"]
    assert len(steps) == 1 + (generated_tokens - 1), steps
    for step in steps:
        expected_phase = phases[str(step.attributes["method"])]
        assert step.parent_span_id == expected_phase.span_id

    # The shard's step spans are children of the router's shard_step spans, one each, named by
    # the RPC; forward and sampling hang under them.
    router_ids = by_id(router)
    shard_steps = [span for span in shard if span.name in ("prefill", "decode")]
    assert sorted(span.parent_span_id for span in shard_steps) == sorted(step.span_id for step in steps)
    for span in shard_steps:
        assert router_ids[span.parent_span_id].attributes["method"] == span.name
        assert sorted(child.name for child in children(shard, span)) == ["forward", "sampling"]
    assert {span.name for span in shard} == {"prefill", "decode", "forward", "sampling"}

    # --log-level warn reached every process: no INFO line from the router or the shard.
    info_lines = [line for line in log.splitlines()
                  if (line.startswith("[router]") and " INFO " in line)
                  or (line.startswith("[shard-0]") and "] INFO " in line)]
    assert info_lines == [], info_lines[:5]
