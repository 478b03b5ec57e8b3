"""What a GGUF-converted directory remembers of its source (`ferrite_gguf.json`), and the
quantization the shard serves it with by default.

The rule (CPU, `--dtype auto`, no `--quantize`): the weights are served at the integer width
closest to what the GGUF stored, never narrower. The GGUF's decoder-layer matrices are counted
by parameters per storage class, and the largest class decides:
    Q4_0, Q4_1, Q4_K, IQ4_*, and narrower (Q3_K, Q2_K, IQ3/2/1)   -> --quantize int4
    Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, Q8_K                            -> --quantize int8
    F32, F16, BF16                                                -> float (the compute dtype)
e.g. the bundled SmolLM2 (Q4_1) runs as int4, a Q8_0 file as int8, Gemma 3 270M "Q4_K_M"
(mostly Q5_0: its 640 features do not fill K-quant blocks) as int8. The integer weights are
requantized from the dequantized values (exact where a GGUF block's codes span its whole
range, as Q4_1's do; otherwise one more rounding): measured faster than serving the float
weights on CPU (bench/RESULTS.md). `--quantize` or an explicit `--dtype` overrides it; on CUDA
the float weights are served unless `--quantize` says otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

GGUF_SOURCE_NAME = "ferrite_gguf.json"
SuggestedQuantization = Literal["int8", "int4"]

_INT8_TYPES = frozenset({"Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_1", "Q8_K"})
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def storage_class(type_name: str) -> str:
    """"int8", "int4" or "float" for a GGML tensor type name (anything else quantized narrower
    than 5 bits counts as int4)."""
    if type_name in _FLOAT_TYPES:
        return "float"
    return "int8" if type_name in _INT8_TYPES else "int4"


def decoder_weight_types(gguf_path: Path) -> dict[str, int]:
    """Parameters of the GGUF's decoder-layer matrices (`blk.*`, 2-D) per GGML type name."""
    from gguf import GGUFReader

    counts: Counter[str] = Counter()
    for tensor in GGUFReader(gguf_path).tensors:
        if tensor.name.startswith("blk.") and len(tensor.shape) >= 2:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)
    return dict(counts)


def write_gguf_source(model_dir: Path, gguf_path: Path) -> None:
    """Record the source and its weight types next to the converted weights (atomically: a
    directory converted before this file existed gets it added while others may read it)."""
    facts = {"source": str(gguf_path.resolve()), "decoder_weight_types": decoder_weight_types(gguf_path)}
    descriptor, temporary = tempfile.mkstemp(dir=model_dir, prefix=f".{GGUF_SOURCE_NAME}-")
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(facts, indent=2) + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, model_dir / GGUF_SOURCE_NAME)


def suggested_quantization(model_dir: Path) -> SuggestedQuantization | None:
    """The rule above for a converted directory; None for float GGUFs and other checkpoints."""
    path = Path(model_dir) / GGUF_SOURCE_NAME
    if not path.is_file():
        return None
    weight_types: dict[str, int] = json.loads(path.read_text()).get("decoder_weight_types", {})
    per_class: Counter[str] = Counter()
    for type_name, count in weight_types.items():
        per_class[storage_class(type_name)] += count
    if not per_class:
        return None
    dominant = per_class.most_common(1)[0][0]
    return None if dominant == "float" else dominant  # type: ignore[return-value]
