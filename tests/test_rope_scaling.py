"""RoPE inverse frequencies and cos / sin against transformers' own rope init functions.

Each case is a config.json as a checkpoint would carry it; ferrite reads it (models/
rope_config.py) and computes the frequencies itself (layers/rope_scaling.py); transformers
builds the same config and runs `ROPE_INIT_FUNCTIONS[rope_type]`. Length-dependent types
(dynamic NTK, longrope) are compared at lengths inside and beyond the trained context.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ferrite_server.layers.rope_scaling import rope_inv_freq
from ferrite_server.layers.rotary import RotaryEmbedding
from ferrite_server.models.rope_config import rope_config_from_hf

HEAD_DIM = 64
BASE: dict[str, Any] = dict(
    hidden_size=512, num_attention_heads=8, head_dim=HEAD_DIM, max_position_embeddings=8192
)
CASES: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
             "original_max_position_embeddings": 2048},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "mscale": 0.7,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2,
                    "original_max_position_embeddings": 1024},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 2048},
}


def _transformers(config: Any, rope_type: str, seq_len: int | None) -> tuple[torch.Tensor, float]:
    inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), seq_len=seq_len)
    return inv_freq.float(), float(factor)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seq_len", [None, 100, 20000])
def test_inv_freq_matches_transformers(name: str, seq_len: int | None) -> None:
    params = CASES[name]
    hf_config = LlamaConfig(**BASE, rope_parameters=dict(params))
    expected, expected_factor = _transformers(hf_config, params["rope_type"], seq_len)
    config = rope_config_from_hf({**BASE, "rope_parameters": params})
    got, factor = rope_inv_freq(config.rotary_dim(HEAD_DIM), config, seq_len)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert factor == pytest.approx(expected_factor, rel=1e-9)


def test_dynamic_ntk_grows_beyond_the_trained_context() -> None:
    config = rope_config_from_hf({**BASE, "rope_parameters": CASES["dynamic"]})
    inside, _ = rope_inv_freq(HEAD_DIM, config, 4096)
    beyond, _ = rope_inv_freq(HEAD_DIM, config, 20000)
    assert torch.equal(inside, rope_inv_freq(HEAD_DIM, config, None)[0])
    assert (beyond[1:] < inside[1:]).all()  # a larger base: lower frequencies


PHI3_FACTORS = 12  # rotary_dim / 2 with partial_rotary_factor 0.75 of 32


@pytest.mark.parametrize("context_len", [None, 1000, 4096, 4097, 9000])
def test_longrope_matches_transformers(context_len: int | None) -> None:
    params = {
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
        "short_factor": [1.0 + 0.05 * i for i in range(PHI3_FACTORS)],
        "long_factor": [1.5 + 0.3 * i for i in range(PHI3_FACTORS)],
    }
    hf = dict(hidden_size=256, num_attention_heads=8, max_position_embeddings=131072,
              original_max_position_embeddings=4096, rope_parameters=params)
    hf_config = Phi3Config(**hf)
    expected, expected_factor = _transformers(hf_config, "longrope", context_len)
    config = rope_config_from_hf(hf)
    assert config.rotary_dim(32) == 24
    got, factor = rope_inv_freq(config.rotary_dim(32), config, context_len)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert factor == pytest.approx(expected_factor, rel=1e-9) and factor > 1.0


def test_cos_sin_per_token_follow_each_sequence_length() -> None:
    # Two sequences in one step: one inside the original context, one beyond it; each token
    # gets the frequencies of its own sequence's length (transformers' one-sequence behaviour).
    params = {"rope_type": "longrope", "rope_theta": 10000.0,
              "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}
    hf = dict(hidden_size=128, num_attention_heads=8, max_position_embeddings=256,
              original_max_position_embeddings=64, rope_parameters=params)
    rotary = RotaryEmbedding(16, rope_config_from_hf(hf), torch.device("cpu"))
    positions = torch.tensor([10, 11, 100])
    context_lens = torch.tensor([12, 12, 101])
    cos, sin = rotary.cos_sin(positions, torch.float32, context_lens)
    hf_config = Phi3Config(**hf)
    for row, (position, length) in enumerate(zip(positions.tolist(), context_lens.tolist())):
        inv_freq, factor = _transformers(hf_config, "longrope", length)
        angles = torch.cat((position * inv_freq, position * inv_freq))
        torch.testing.assert_close(cos[row], angles.cos() * factor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sin[row], angles.sin() * factor, rtol=1e-5, atol=1e-6)


def test_tgi_rope_flags_replace_the_scaling_and_keep_each_base() -> None:
    from ferrite_server.cli_flags import build_parser, rope_override_from_args
    from ferrite_server.config import RopeOverride
    from ferrite_server.models.rope_config import with_rope_override

    v4 = {**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0}}
    rope = rope_config_from_hf(with_rope_override(v4, "dynamic", 2.0))
    assert (rope.rope_type, rope.factor, rope.theta) == ("dynamic", 2.0, 5e5)
    per_kind = {**BASE, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }}
    overridden = with_rope_override(per_kind, "linear", 2.0)
    for kind, theta in (("full_attention", 1e6), ("sliding_attention", 1e4)):
        rope = rope_config_from_hf(overridden, kind)
        assert (rope.rope_type, rope.factor, rope.theta) == ("linear", 2.0, theta)
    parser = build_parser()
    common = ["serve", "--model-id", "m", "--uds-path", "s"]
    assert rope_override_from_args(parser.parse_args(common)) is None
    only_factor = parser.parse_args([*common, "--rope-factor", "2"])
    assert rope_override_from_args(only_factor) == RopeOverride("linear", 2.0)  # TGI's default
    only_kind = parser.parse_args([*common, "--rope-scaling", "dynamic"])
    assert rope_override_from_args(only_kind) == RopeOverride("dynamic", 1.0)
