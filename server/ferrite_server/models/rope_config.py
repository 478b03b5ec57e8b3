"""Reading a checkpoint's RoPE parameters into `RopeConfig`.

Both spellings transformers has used: `rope_theta` + `rope_scaling` (v4; `type` or
`rope_type`) and `rope_parameters` (v5), which Gemma 3 makes a dict per layer kind
({"full_attention": {...}, "sliding_attention": {...}}); v4 Gemma 3 checkpoints instead carry
`rope_local_base_freq` for the sliding layers.
"""

from __future__ import annotations

from typing import Any

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.rope_scaling import RopeConfig

HfConfig = dict[str, Any]
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


def rope_parameters(hf: HfConfig, layer_kind: str | None = None) -> dict[str, Any]:
    """The rope parameter dict of one layer kind (None: the model-wide one)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if layer_kind is not None and isinstance(params.get(layer_kind), dict):
        return dict(params[layer_kind])
    if any(isinstance(value, dict) for value in params.values()):  # per kind, kind not asked
        return dict(params.get("full_attention") or {})
    return dict(params)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def rope_config_from_hf(hf: HfConfig, layer_kind: str | None = None) -> RopeConfig:
    all_params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    per_kind = any(isinstance(value, dict) for value in all_params.values())
    if layer_kind == "sliding_attention" and "rope_local_base_freq" in hf and not per_kind:
        # v4 Gemma 3: sliding layers use plain RoPE at their own base, unscaled.
        return RopeConfig(theta=float(hf["rope_local_base_freq"]))
    params = rope_parameters(hf, layer_kind)
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    rope_type = str(params.get("rope_type", params.get("type", "default")) or "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope scaling {rope_type!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    max_positions = int(hf.get("max_position_embeddings", 2048))
    # Phi-3 keeps original_max_position_embeddings at the top level of config.json.
    original = params.get("original_max_position_embeddings") or hf.get(
        "original_max_position_embeddings"
    )
    if rope_type == "dynamic":
        original = max_positions  # transformers scales from max_position_embeddings
    original = int(original or max_positions)
    factor = params.get("factor")
    if factor is None and rope_type in ("yarn", "longrope"):
        factor = max_positions / original
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,  # type: ignore[arg-type]
        factor=float(factor if factor is not None else 1.0),
        partial_rotary_factor=float(partial),
        original_max_position_embeddings=original,
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        attention_factor=_float_or_none(params.get("attention_factor")),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        mscale=_float_or_none(params.get("mscale")),
        mscale_all_dim=_float_or_none(params.get("mscale_all_dim")),
        truncate=bool(params.get("truncate", True)),
        short_factor=tuple(float(f) for f in params.get("short_factor") or ()),
        long_factor=tuple(float(f) for f in params.get("long_factor") or ()),
    )


def with_rope_override(hf: HfConfig, scaling: str, factor: float) -> HfConfig:
    """`hf` with its RoPE scaling replaced by `scaling` x `factor` (TGI's --rope-scaling /
    --rope-factor), each layer kind keeping its own base frequency."""
    overridden = {key: value for key, value in hf.items() if key != "rope_scaling"}
    all_params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}

    def replaced(params: dict[str, Any]) -> dict[str, Any]:
        theta = params.get("rope_theta") or hf.get("rope_theta") or 10000.0
        return {"rope_type": scaling, "factor": float(factor), "rope_theta": float(theta)}

    if any(isinstance(value, dict) for value in all_params.values()):
        overridden["rope_parameters"] = {
            kind: replaced(params) for kind, params in all_params.items() if isinstance(params, dict)
        }
        # Per-kind parameters now carry every base, v4's local one included.
        overridden.pop("rope_local_base_freq", None)
    else:
        overridden["rope_parameters"] = replaced(dict(all_params))
    return overridden
