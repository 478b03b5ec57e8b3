"""ferrite itself as the comparison's first target: started through `ferrite-launcher` on a free
port (as a user would run it), or an already running one at a URL."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ferrite_benchmark.backends import BackendConfig
from ferrite_benchmark.peers.base import PeerInfo, package_version
from ferrite_benchmark.peers.server_process import ServerCommand, free_port, running_server


@dataclass(frozen=True)
class FerriteSettings:
    url: str | None = None  # use this server instead of starting one
    dtype: str = "bfloat16"
    launcher: str = "ferrite-launcher"
    extra_args: Sequence[str] = field(default_factory=tuple)
    log_dir: Path = Path(tempfile.gettempdir())


def _info(url: str, settings: FerriteSettings) -> PeerInfo:
    info = requests.get(f"{url}/info", timeout=10).json()
    how = f"ferrite-launcher --dtype {settings.dtype} {' '.join(settings.extra_args)}".strip()
    if settings.url:
        how = f"already running at {settings.url}"
    return PeerInfo(
        name="ferrite",
        precision=str(info.get("model_dtype", settings.dtype)),
        version=str(info.get("version") or package_version("ferrite")),
        how=f"{how}; attention backend {info.get('attention_backend')}, {info.get('num_shards')} shard(s)",
    )


def _client_config(url: str) -> BackendConfig:
    """OpenAI completions, like the llama.cpp server is driven: same endpoint shape for both."""
    model_id = requests.get(f"{url}/info", timeout=10).json().get("model_id", "default")
    return BackendConfig(url=url, api="openai-completions", model=str(model_id))


@contextlib.contextmanager
def running_ferrite(settings: FerriteSettings) -> Iterator[tuple[PeerInfo, BackendConfig]]:
    """Yield ferrite's description and a client config for its TGI API."""
    if settings.url:
        yield _info(settings.url, settings), _client_config(settings.url)
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ferrite-bench-") as tmp:
        argv = [settings.launcher, "--hostname", "127.0.0.1", "--port", str(port),
                "--shard-uds-path", f"{tmp}/shard", "--dtype", settings.dtype, *settings.extra_args]
        url = f"http://127.0.0.1:{port}"
        command = ServerCommand(argv, f"{url}/health", settings.log_dir / "ferrite-bench-launcher.log")
        with running_server(command):
            yield _info(url, settings), _client_config(url)
