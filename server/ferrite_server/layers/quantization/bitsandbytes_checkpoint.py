"""Reading pre-quantized bitsandbytes checkpoints (as transformers saves them) as float weights.

transformers stores a quantized linear weight `P.weight` with companions:
- int8:   `P.weight` int8 [N, K], `P.SCB` float32 [N] (row absmax), `P.weight_format`;
- 4-bit:  `P.weight` uint8 (packed, flattened), `P.weight.absmax`, `P.weight.quant_map`,
          `P.weight.quant_state.bitsandbytes__nf4|fp4` (packed JSON: shape, blocksize, ...),
          and with double quantization `P.weight.nested_absmax` / `.nested_quant_map`.
A 4-bit weight is flattened before its blocks are formed, so its packed bytes cannot be sliced
for a fused projection or a tensor-parallel rank. This reader therefore dequantizes each weight
as soon as its parts have arrived and hands `P.weight` on in float32; the layers' loaders slice
it like any float weight and the bitsandbytes method quantizes it again. Requantizing gives back
the same codes: every block's largest value was stored as code +-1 times its absmax, so the
recomputed absmax is the stored one (4-bit weights are requantized without double quantization,
which would round the absmax scales a second time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ferrite_server.checkpoint_slice import Loaded, read_loaded
from ferrite_server.weights import CheckpointError

_QUANT_STATE_MARK = ".quant_state."
_4BIT_PARTS = ("absmax", "quant_map")
_NESTED_PARTS = ("nested_absmax", "nested_quant_map")
_QUANTIZED_DTYPES = (torch.int8, torch.uint8)


def _classify(name: str, tensor: torch.Tensor) -> tuple[str, str] | None:
    """(`P.weight`, part) for a part of a quantized weight; None for an ordinary tensor.

    Parts: "" (the codes), "SCB", "format", "quant_state.bitsandbytes__*", "absmax", ...
    """
    if name.endswith(".SCB"):
        return name.removesuffix(".SCB") + ".weight", "SCB"
    if name.endswith(".weight_format"):
        return name.removesuffix("_format"), "format"
    if _QUANT_STATE_MARK in name:
        prefix, state_key = name.split(_QUANT_STATE_MARK, 1)
        return prefix, "quant_state." + state_key
    for part in (*_4BIT_PARTS, *_NESTED_PARTS):
        if name.endswith(".weight." + part):
            return name.removesuffix("." + part), part
    if name.endswith(".weight") and tensor.dtype in _QUANTIZED_DTYPES:
        return name, ""
    return None


class _PendingWeight:
    def __init__(self) -> None:
        self.parts: dict[str, torch.Tensor] = {}

    def dequantized(self) -> torch.Tensor | None:
        """The float32 weight once every part is here, else None."""
        codes = self.parts.get("")
        if codes is None:
            return None
        if codes.dtype == torch.int8:
            if "SCB" not in self.parts:
                return None
            row_scales = self.parts["SCB"].float()  # [N]: row absmax, codes span +-127
            return codes.float() * (row_scales[:, None] / 127.0)
        return self._dequantized_4bit(codes)

    def _dequantized_4bit(self, packed: torch.Tensor) -> torch.Tensor | None:
        import bitsandbytes.functional as bnb_functional
        from bitsandbytes.utils import unpack_tensor_to_dict

        state_keys = [key for key in self.parts if key.startswith("quant_state.")]
        if not state_keys or any(part not in self.parts for part in _4BIT_PARTS):
            return None
        state_info = unpack_tensor_to_dict(self.parts[state_keys[0]])
        if "nested_blocksize" in state_info and any(p not in self.parts for p in _NESTED_PARTS):
            return None
        state_dict = {key: value for key, value in self.parts.items() if key}
        quant_state = bnb_functional.QuantState.from_dict(state_dict, packed.device)
        return bnb_functional.dequantize_4bit(packed, quant_state).float()


def dequantize_bnb_checkpoint(
    tensors: Iterable[tuple[str, Loaded]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass ordinary tensors through; emit each quantized `P.weight` dequantized to float32.

    Every tensor is read whole here (its dtype tells a quantized weight apart), so ranks of a
    tensor-parallel group read the whole bitsandbytes checkpoint.
    """
    pending: dict[str, _PendingWeight] = {}
    for name, loaded in tensors:
        tensor = read_loaded(loaded)
        classified = _classify(name, tensor)
        if classified is None:
            yield name, tensor
            continue
        prefix, part = classified
        if part == "format":  # int8 layout tag; transformers only saves the row-major one
            continue
        entry = pending.setdefault(prefix, _PendingWeight())
        entry.parts[part] = tensor
        weight = entry.dequantized()
        if weight is not None:
            del pending[prefix]
            yield prefix, weight
    if pending:
        raise CheckpointError(f"bitsandbytes weights with missing parts: {sorted(pending)[:4]}")
