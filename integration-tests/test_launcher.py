"""`ferrite-launcher` as a user runs it (issue 4, "Must show"): real shards and router on free
ports; model resolution, supervision, shutdown and failure reporting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import requests
import torch
from text_generation import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

from support.launcher import RunningFerrite, running_ferrite, stop

HUB_REPO_ID = "ferrite-test/tiny-llama"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAX_NEW_TOKENS = 8
# Bounds on how long a process may take to exit: a hang guard, not a speed assertion.
EXIT_TIMEOUT_S = 120
TINY_PROMPT = "Hello, ferrite!"


def hf_greedy_ids(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    """The reference: transformers' greedy continuation of `prompt` (float32)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, prompt_ids.shape[1]:].tolist()


def served_greedy_ids(server: RunningFerrite, prompt: str, max_new_tokens: int) -> list[int]:
    response = Client(server.base_url, timeout=300).generate(prompt, max_new_tokens=max_new_tokens)
    assert response.details is not None
    return [token.id for token in response.details.tokens]


def info(server: RunningFerrite) -> dict:
    answer = requests.get(f"{server.base_url}/info", timeout=30)
    answer.raise_for_status()
    return answer.json()


def children_of(process: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def is_gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_launcher(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A launcher run expected to end by itself (a refused configuration)."""
    return subprocess.run(
        ["ferrite-launcher", "--hostname", "127.0.0.1", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=EXIT_TIMEOUT_S, check=False,
    )


def test_the_default_model_answers() -> None:
    with running_ferrite() as server:
        answer = Client(server.base_url, timeout=300).generate(
            "The capital of France is", max_new_tokens=MAX_NEW_TOKENS
        )
        assert "Paris" in answer.generated_text, answer.generated_text
        assert "SmolLM2" in info(server)["model_id"]


def test_a_local_model_directory_serves(tiny_model_dir: Path) -> None:
    expected = hf_greedy_ids(tiny_model_dir, TINY_PROMPT, MAX_NEW_TOKENS)
    with running_ferrite(["--model-id", str(tiny_model_dir), "--dtype", "float32"]) as server:
        assert served_greedy_ids(server, TINY_PROMPT, MAX_NEW_TOKENS) == expected
        assert info(server)["model_id"] == str(tiny_model_dir)


def test_a_predownloaded_hub_cache_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The layout huggingface_hub writes, read offline: HF_HOME + HF_HUB_OFFLINE=1."""
    org, name = HUB_REPO_ID.split("/")
    repo_cache = tmp_path / "hf" / "hub" / f"models--{org}--{name}"
    snapshot = repo_cache / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for path in tiny_model_dir.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(HUB_COMMIT)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    expected = hf_greedy_ids(snapshot, TINY_PROMPT, MAX_NEW_TOKENS)
    with running_ferrite(["--model-id", HUB_REPO_ID, "--dtype", "float32"], env=env) as server:
        assert served_greedy_ids(server, TINY_PROMPT, MAX_NEW_TOKENS) == expected
        assert info(server)["model_id"] == HUB_REPO_ID


def test_sigterm_stops_everything_and_exits_0(tiny_model_dir: Path) -> None:
    with running_ferrite(["--model-id", str(tiny_model_dir), "--json-output"]) as server:
        children = children_of(server.process)
        names = {" ".join(child.cmdline()) for child in children}
        assert any("ferrite-router" in name for name in names), names
        assert any("serve" in name and "ferrite" in name for name in names), names
        sockets = [
            Path(arg) for child in children for arg in child.cmdline()
            if arg.startswith("/") and Path(arg).name.startswith("shard-")
        ]

        assert stop(server) == 0, server.log()[-3000:]

        assert all(is_gone(child) for child in children), [c.pid for c in children if not is_gone(c)]
        assert sockets and not any(path.exists() for path in sockets)
        # --json-output: every line the launcher printed is one JSON object naming its origin.
        records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        origins = {record["origin"] for record in records}
        assert {"launcher", "shard-0", "router"} <= origins, origins


def test_without_a_restart_budget_a_killed_shard_takes_the_launcher_down(tiny_model_dir: Path) -> None:
    # With restarts allowed (the default) the shard group is restarted instead:
    # test_shard_restart.py covers that.
    flags = ["--model-id", str(tiny_model_dir), "--max-shard-restarts", "0"]
    with running_ferrite(flags) as server:
        children = children_of(server.process)
        shard = next(child for child in children if "serve" in child.cmdline())
        shard.send_signal(signal.SIGKILL)

        exit_code = server.process.wait(timeout=EXIT_TIMEOUT_S)

        log = server.log()
        assert exit_code != 0, log[-3000:]
        assert f"shard-0 (pid {shard.pid}) was killed by signal 9" in log, log[-3000:]
        assert all(is_gone(child) for child in children), "the router was torn down too"


def test_a_missing_model_path_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = run_launcher(["--model-id", str(missing)])
    assert result.returncode != 0
    assert str(missing) in result.stdout + result.stderr


def test_an_uncached_hub_id_fails_offline_naming_it(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = run_launcher(["--model-id", "ferrite-test/not-cached"], env=env)
    assert result.returncode != 0
    assert "ferrite-test/not-cached" in result.stdout + result.stderr


def test_impossible_limits_are_refused_with_the_numbers(tiny_model_dir: Path) -> None:
    result = run_launcher([
        "--model-id", str(tiny_model_dir), "--max-input-tokens", "300", "--max-total-tokens", "200",
    ])
    assert result.returncode != 0
    assert "300" in result.stderr and "200" in result.stderr, result.stderr
    result = run_launcher(["--model-id", str(tiny_model_dir), "--max-total-tokens", "1000"])
    assert result.returncode != 0
    assert "1000" in result.stderr and "256" in result.stderr, result.stderr
