"""Choosing the attention backend at start-up.

Registration point: a backend is a factory in `_factories()` keyed by its `--attention-backend`
name; "auto" resolves through `_resolve_auto`. The Triton backend (layers/attention/
triton_backend.py) registers itself here by adding its factory and, once it is the better
choice on CUDA, its rule in `_resolve_auto`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.attention.backend import AttentionBackend
from ferrite_server.layers.attention.kv_quant import KVCacheQuant

BackendFactory = Callable[[torch.device, KVCacheQuant], AttentionBackend]


def _torch_backend(device: torch.device, kv_quant: KVCacheQuant) -> AttentionBackend:
    from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend(kv_quant)


def _triton_backend(device: torch.device, kv_quant: KVCacheQuant) -> AttentionBackend:
    from ferrite_server.layers.attention.triton_backend import TritonAttentionBackend

    return TritonAttentionBackend(device, kv_quant)


def _factories() -> dict[str, BackendFactory]:
    return {"torch": _torch_backend, "triton": _triton_backend}


def _resolve_auto(device: torch.device) -> str:
    # Triton kernels on CUDA (measured: bench/GPU_NOTES.md); the reference on CPU, where
    # Triton only runs through its slow interpreter.
    return "triton" if device.type == "cuda" else "torch"


def available_attention_backends() -> tuple[str, ...]:
    return ("auto", *_factories())


def create_attention_backend(
    name: str, device: torch.device, kv_quant: KVCacheQuant = KVCacheQuant()
) -> AttentionBackend:
    """The backend called `name` ("auto": the best one available for `device`), storing K/V
    as `kv_quant` says."""
    resolved = _resolve_auto(device) if name == "auto" else name
    factory = _factories().get(resolved)
    if factory is None:
        raise UnsupportedModelError(
            f"attention backend {name!r} is not available; choose one of "
            f"{', '.join(available_attention_backends())}"
        )
    return factory(device, kv_quant)
