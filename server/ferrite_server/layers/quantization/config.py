"""Which quantization a shard runs: the `--quantize` flag and the checkpoint's own
`quantization_config`, reconciled (and refused, with the reason, when they cannot work together)
before any weight is read.

    float checkpoint      + --quantize bitsandbytes*/fp8/int8/int4 -> quantize on the fly
    float checkpoint      + --quantize gptq/awq          -> refused: needs a GPTQ/AWQ checkpoint
    gptq/awq/fp8/bnb ckpt + no flag or the same method   -> load it as it is
    gptq/awq/fp8/bnb ckpt + another --quantize           -> refused: already quantized
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union, get_args


from ferrite_server.checkpoint_slice import Loaded
from ferrite_server.config import QuantizeName
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.quantization.awq import AWQ_BITS, AwqMethod, AwqParams
from ferrite_server.layers.quantization.bitsandbytes import BitsAndBytesMethod, BnbParams
from ferrite_server.layers.quantization.bitsandbytes_checkpoint import dequantize_bnb_checkpoint
from ferrite_server.layers.quantization.fp8 import Fp8CheckpointMethod, Fp8OnTheFlyMethod, Fp8Params
from ferrite_server.layers.quantization.gptq import GptqMethod, GptqParams
from ferrite_server.layers.quantization.method import QuantizationMethod
from ferrite_server.layers.quantization.unquantized import UnquantizedMethod
from ferrite_server.layers.quantization.weight_only import WeightOnlyMethod, WeightOnlyParams

QUANTIZE_NAMES: tuple[str, ...] = get_args(QuantizeName)
SchemeParams = Union[BnbParams, Fp8Params, GptqParams, AwqParams, WeightOnlyParams]
# Checkpoint tensors an FP8 checkpoint may carry that ferrite does not use: calibrated KV-cache
# scales (the fp8 KV cache uses its own per-tensor scale, see layers/attention/kv_quant.py).
_FP8_UNUSED_SUFFIXES = (".k_scale", ".v_scale", ".kv_scale")
_GPTQ_BITS = (2, 4, 8)


class QuantizationConfigError(UnsupportedModelError):
    """The requested quantization cannot serve this checkpoint (the message says why)."""


@dataclass(frozen=True)
class QuantizationConfig:
    name: QuantizeName
    params: SchemeParams
    prequantized: bool  # the checkpoint's weights are already quantized

    def linear_method(self) -> QuantizationMethod:
        params = self.params
        if isinstance(params, BnbParams):
            return BitsAndBytesMethod(params)
        if isinstance(params, Fp8Params):
            return Fp8CheckpointMethod(params) if params.from_checkpoint else Fp8OnTheFlyMethod()
        if isinstance(params, GptqParams):
            return GptqMethod(params)
        if isinstance(params, WeightOnlyParams):
            return WeightOnlyMethod(params)
        return AwqMethod(params)

    @property
    def ignored_checkpoint_suffixes(self) -> tuple[str, ...]:
        return _FP8_UNUSED_SUFFIXES if self.name == "fp8" and self.prequantized else ()

    def checkpoint_tensors(
        self, tensors: Iterable[tuple[str, Loaded]]
    ) -> Iterator[tuple[str, Loaded]]:
        """The checkpoint's tensors as the layers' loaders take them."""
        if isinstance(self.params, BnbParams) and self.prequantized:
            return dequantize_bnb_checkpoint(tensors)
        return iter(tensors)


def linear_method_for(config: QuantizationConfig | None) -> QuantizationMethod:
    return UnquantizedMethod() if config is None else config.linear_method()


def resolve_quantization(
    requested: QuantizeName | None, hf_config: dict[str, Any]
) -> QuantizationConfig | None:
    """The quantization to run, from --quantize and config.json; raises with the reason."""
    checkpoint = hf_config.get("quantization_config")
    if not checkpoint:
        return _on_the_fly(requested)
    found = _checkpoint_quantization(dict(checkpoint))
    if requested is not None and requested != found.name:
        raise QuantizationConfigError(
            f"--quantize {requested} cannot be used with this checkpoint: it is already quantized "
            f"as {found.name} (config.json quantization_config) and its weights are stored in "
            f"that format; omit --quantize (the checkpoint's {found.name} is detected) or serve a "
            "float checkpoint"
        )
    return found


def _on_the_fly(requested: QuantizeName | None) -> QuantizationConfig | None:
    if requested is None:
        return None
    if requested in ("gptq", "awq"):
        raise QuantizationConfigError(
            f"--quantize {requested} only serves {requested.upper()} checkpoints (config.json with "
            f'quantization_config.quant_method "{requested}"); this checkpoint has float '
            "weights, which can be quantized at load time with --quantize int8, int4, "
            "bitsandbytes, bitsandbytes-nf4, bitsandbytes-fp4 or fp8"
        )
    if requested == "fp8":
        return QuantizationConfig("fp8", Fp8Params(), prequantized=False)
    if requested in ("int8", "int4"):
        params = WeightOnlyParams(bits=8 if requested == "int8" else 4)
        return QuantizationConfig(requested, params, prequantized=False)
    kind = {"bitsandbytes": "int8", "bitsandbytes-nf4": "nf4", "bitsandbytes-fp4": "fp4"}[requested]
    _require_bitsandbytes()
    return QuantizationConfig(requested, BnbParams(kind), prequantized=False)  # type: ignore[arg-type]


def _checkpoint_quantization(qc: dict[str, Any]) -> QuantizationConfig:
    method = str(qc.get("quant_method", "")).lower()
    readers = {"gptq": _gptq, "awq": _awq, "fp8": _fp8, "bitsandbytes": _bitsandbytes}
    reader = readers.get(method)
    if reader is None:
        raise QuantizationConfigError(
            f"checkpoint quantization {method or '(no quant_method)'!r} is not supported; "
            f"supported checkpoint formats: {', '.join(readers)}"
        )
    return reader(qc)


def _refuse_skipped_modules(qc: dict[str, Any], method: str) -> None:
    """Unquantized layers inside the decoder are not supported: every linear layer of a
    decoder layer runs the same method (the LM head is never quantized)."""
    for key in ("modules_to_not_convert", "llm_int8_skip_modules", "ignored_layers"):
        names = [str(name) for name in qc.get(key) or [] if str(name) != "lm_head"]
        if names:
            raise QuantizationConfigError(
                f"{method} checkpoint leaves modules unquantized ({key}: {names[:4]}); ferrite "
                "quantizes every linear layer of the decoder alike and cannot serve it"
            )


def _gptq(qc: dict[str, Any]) -> QuantizationConfig:
    _refuse_skipped_modules(qc, "GPTQ")
    bits = int(qc.get("bits", 4))
    if bits not in _GPTQ_BITS:
        raise QuantizationConfigError(f"GPTQ with {bits} bits is not supported (2, 4 or 8)")
    checkpoint_format = str(qc.get("checkpoint_format", "gptq"))
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise QuantizationConfigError(
            f"GPTQ checkpoint_format {checkpoint_format!r} is not supported (gptq, gptq_v2)"
        )
    if qc.get("lm_head"):
        raise QuantizationConfigError("GPTQ checkpoints with a quantized lm_head are not supported")
    params = GptqParams(
        bits=bits,
        group_size=int(qc.get("group_size", 128)),
        desc_act=bool(qc.get("desc_act", False)),
        zero_offset=1 if checkpoint_format == "gptq" else 0,
    )
    return QuantizationConfig("gptq", params, prequantized=True)


def _awq(qc: dict[str, Any]) -> QuantizationConfig:
    _refuse_skipped_modules(qc, "AWQ")
    bits = int(qc.get("bits", qc.get("w_bit", AWQ_BITS)))
    version = str(qc.get("version", "gemm")).lower()
    if bits != AWQ_BITS or version != "gemm":
        raise QuantizationConfigError(
            f"AWQ {bits}-bit '{version}' checkpoints are not supported (4-bit GEMM format only)"
        )
    if not qc.get("zero_point", True):
        raise QuantizationConfigError("AWQ checkpoints without zero points are not supported")
    group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
    return QuantizationConfig("awq", AwqParams(group_size=group_size), prequantized=True)


def _fp8(qc: dict[str, Any]) -> QuantizationConfig:
    _refuse_skipped_modules(qc, "FP8")
    block = qc.get("weight_block_size")
    if block is not None and len(block) != 2:
        raise QuantizationConfigError(f"FP8 weight_block_size {block} is not [rows, columns]")
    params = Fp8Params(
        from_checkpoint=True,
        block_size=(int(block[0]), int(block[1])) if block is not None else None,
        static_input_scales=str(qc.get("activation_scheme", "dynamic")) == "static",
    )
    return QuantizationConfig("fp8", params, prequantized=True)


def _require_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationConfigError(
            "bitsandbytes quantization needs the `bitsandbytes` package (pip install bitsandbytes)"
        )


def _bitsandbytes(qc: dict[str, Any]) -> QuantizationConfig:
    _refuse_skipped_modules(qc, "bitsandbytes")
    _require_bitsandbytes()
    if qc.get("load_in_8bit"):
        return QuantizationConfig("bitsandbytes", BnbParams("int8"), prequantized=True)
    if not qc.get("load_in_4bit"):
        raise QuantizationConfigError(
            "bitsandbytes checkpoint is neither load_in_8bit nor load_in_4bit"
        )
    kind = str(qc.get("bnb_4bit_quant_type", "fp4"))
    if kind not in ("nf4", "fp4"):
        raise QuantizationConfigError(f"bitsandbytes 4-bit type {kind!r} is not nf4 or fp4")
    # Requantized without double quantization, so the checkpoint's codes come back exactly.
    params = BnbParams(kind, compress_statistics=False)  # type: ignore[arg-type]
    return QuantizationConfig(f"bitsandbytes-{kind}", params, prequantized=True)  # type: ignore[arg-type]
