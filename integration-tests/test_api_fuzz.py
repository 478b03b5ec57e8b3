"""Schemathesis against the live OpenAPI document (`/api-doc/openapi.json`, every route, the
OpenAI ones included) through the real launcher on the tiny model: for generated requests,
valid and invalid, no response is a server error (5xx) and every response matches the schema
the document gives for its status (issue 20, "Must show"). The example count is bounded so the
run stays short; hypothesis derandomizes it, so a failure reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from support.launcher import RunningFerrite, running_ferrite

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[RunningFerrite]:
    # Short generations (max total 64 tokens) keep each example fast.
    with running_ferrite(["--model-id", str(tiny_model_dir), "--max-total-tokens", "64",
                          "--max-input-tokens", "48"]) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(server: RunningFerrite) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.base_url}/api-doc/openapi.json")


def test_the_document_lists_every_route(server: RunningFerrite) -> None:
    paths = requests.get(f"{server.base_url}/api-doc/openapi.json", timeout=30).json()["paths"]
    for route in ["/", "/generate", "/generate_stream", "/tokenize", "/health", "/info", "/metrics",
                  "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}"]:
        assert route in paths, f"{route} is missing from the OpenAPI document"


def fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    """Runs a bounded number of generated cases of one operation through both checks."""

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=120)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_and_responses_match_the_schema(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    # (schemathesis's own pytest plugin does not run under this pytest; hypothesis directly.)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 11
    without_invalid_inputs = []
    for operation in operations:
        try:
            fuzz_operation(operation, mode)
        except Unsatisfiable:
            # An operation whose inputs accept anything has no invalid one.
            without_invalid_inputs.append(operation.label)
    if mode is GenerationMode.POSITIVE:
        assert not without_invalid_inputs
    # Only reads without a constrained input: a POST always has an invalid body to send.
    assert all(label.startswith("GET ") for label in without_invalid_inputs), without_invalid_inputs
