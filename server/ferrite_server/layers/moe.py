"""Mixture-of-experts MLP (Mixtral-style): a router picks the top-k experts of each token.

    router logits [T, E] -> softmax (float32) -> top-k -> weights renormalized over the k
    out[t] = sum over its k experts e of weight[t, e] * down_e(act(gate_e(x_t)) * up_e(x_t))

The torch path below runs on every device: the experts any token picked are visited in
ascending order, each on the rows that chose it (gathered, multiplied, scaled, index-added), so
the sums happen in the order transformers' reference uses and float32 outputs agree closely.
On CUDA the experts run as two grouped Triton launches instead (kernels/moe_grouped_matmul.py:
no per-expert loop, no host sync); its interpreter tests compare it with the torch path.

Tensor parallelism slices every expert like a dense MLP: gate / up keep rows [r * I/N, ...)
of the intermediate features, down the matching columns; each rank's partial outputs are
summed with one all-reduce. The router is replicated (every rank picks the same experts).

Weights: `w13` [E, 2 * I_local, H] (gate | up of each expert), `w2` [E, H, I_local]. The
checkpoint's `experts.{e}.w1 / w3 / w2` land there with shard ids 2e (w1), 2e + 1 (w3) and e
(w2); `moe_checkpoint_weights` lists those name mappings for a model's `CheckpointLayout`.
Quantized experts: `--quantize fp8` on a float checkpoint quantizes each expert's weights
after loading, one e4m3 scale per expert output channel (as the dense FP8 layers do); both
paths read e4m3 and apply the scales. The other methods (bitsandbytes, GPTQ, AWQ, FP8
checkpoints) store 2-D linear weights in their own layouts and are refused for experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ferrite_server.checkpoint_slice import Loaded, narrow_loaded
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.activation import Activation, gated_activation
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.fp8 import Fp8Params
from ferrite_server.layers.quantization.fp8_ops import (
    fp8_dequant_linear,
    fp8_weight_kernel_available,
    quantize_per_channel,
)
from ferrite_server.weights import (
    CheckpointError,
    PackedWeight,
    ShardId,
    attach_weight_loader,
    copy_checked,
)


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    intermediate_size: int  # per expert


class SparseMoE(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        moe: MoEConfig,
        activation: Activation,
        placement: LayerPlacement,
    ) -> None:
        super().__init__()
        self.quantize_fp8 = _experts_quantize_fp8(placement)
        tp = placement.tp
        if moe.intermediate_size % tp.world_size != 0:
            raise UnsupportedModelError(
                f"expert intermediate size {moe.intermediate_size} does not split over "
                f"{tp.world_size} ranks"
            )
        self.moe = moe
        self.placement = placement
        self.local_intermediate = moe.intermediate_size // tp.world_size
        self.gate = _Router(moe.num_experts, hidden_size, placement)
        self.w13 = placement.empty_parameter(moe.num_experts, 2 * self.local_intermediate, hidden_size)
        self.w2 = placement.empty_parameter(moe.num_experts, hidden_size, self.local_intermediate)
        attach_weight_loader(self.w13, self._load_w13, takes_slices=True)
        attach_weight_loader(self.w2, self._load_w2, takes_slices=True)
        self.act = gated_activation(activation)
        # e4m3 scales per expert output channel [E, N] once quantized; None: float experts.
        self.register_buffer("w13_scales", None, persistent=False)
        self.register_buffer("w2_scales", None, persistent=False)
        # CUDA: the grouped Triton kernel (tests set it on CPU tensors under the interpreter).
        self.use_grouped_kernel = placement.device.type == "cuda"

    def process_weights_after_loading(self) -> None:
        """`--quantize fp8`: each expert's weights to e4m3 with per-channel scales."""
        if not self.quantize_fp8:
            return
        self.w13, self.w13_scales = _quantized_experts(self.w13)
        self.w2, self.w2_scales = _quantized_experts(self.w2)
        # Widening e4m3 in Triton needs compute capability 8.9+ (fp8_ops); else the torch path.
        self.use_grouped_kernel = fp8_weight_kernel_available(self.w13.device)

    def _rank_features(self) -> tuple[int, int]:
        return self.placement.tp.rank * self.local_intermediate, self.local_intermediate

    def _load_w13(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId) -> None:
        if not isinstance(shard_id, int):
            raise CheckpointError(f"expert gate / up needs an integer shard id, got {shard_id!r}")
        expert, part = divmod(shard_id, 2)
        start, length = self._rank_features()
        rows = narrow_loaded(loaded, 0, start, length)  # [I_local, H] of w1 (gate) or w3 (up)
        target = param.data[expert, part * length : (part + 1) * length]
        copy_checked(target, rows, f"expert {expert} {'up' if part else 'gate'}")

    def _load_w2(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId) -> None:
        if not isinstance(shard_id, int):
            raise CheckpointError(f"expert down needs an integer shard id, got {shard_id!r}")
        start, length = self._rank_features()
        columns = narrow_loaded(loaded, 1, start, length)  # [H, I_local]
        copy_checked(param.data[shard_id], columns, f"expert {shard_id} down")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        weights, experts = self.gate.route(hidden, self.moe.top_k)  # [T, k] f32, [T, k] int64
        if self.use_grouped_kernel:
            output = self._grouped_experts(hidden, weights, experts)
        else:
            output = self._looped_experts(hidden, weights, experts)
        group = self.placement.group
        return group.all_reduce(output) if group.is_parallel else output

    def _looped_experts(
        self, hidden: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:  # [T, H]
        output = torch.zeros_like(hidden)
        for expert in torch.unique(experts).tolist():  # ascending, as transformers visits them
            token_rows, slots = torch.where(experts == expert)
            gate_up = self._expert_linear(hidden[token_rows], self.w13, self.w13_scales, expert)
            expert_out = self._expert_linear(self.act(gate_up), self.w2, self.w2_scales, expert)
            scaled = expert_out * weights[token_rows, slots, None]  # [n, H]
            output.index_add_(0, token_rows, scaled.to(output.dtype))
        return output

    @staticmethod
    def _expert_linear(
        x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, expert: int
    ) -> torch.Tensor:
        if scales is None:
            return F.linear(x, weight[expert])
        return fp8_dequant_linear(x, weight[expert], scales[expert])

    def _grouped_experts(
        self, hidden: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:  # [T, H]
        from ferrite_server.kernels.moe_grouped_matmul import (
            ExpertAlignment,
            GroupedTiles,
            grouped_expert_matmul,
        )

        top_k = self.moe.top_k
        alignment = ExpertAlignment.of(experts, self.moe.num_experts, GroupedTiles().block_m)
        gate_up = grouped_expert_matmul(
            hidden.contiguous(), self.w13, alignment, top_k, self.w13_scales
        )  # [T * k, 2 * I_local], row t * k + slot
        down = grouped_expert_matmul(
            self.act(gate_up), self.w2, alignment, 1, self.w2_scales, weights.flatten()
        )  # [T * k, H], already scaled by the routing weights
        return down.view(hidden.shape[0], top_k, -1).sum(dim=1)


class _Router(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, placement: LayerPlacement) -> None:
        super().__init__()
        self.weight = placement.empty_parameter(num_experts, hidden_size)

    def route(
        self, hidden: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [T, H] -> weights [T, k] f32, experts [T, k]
        probs = F.linear(hidden, self.weight).float().softmax(dim=-1)  # [T, E]
        top_weights, top_experts = probs.topk(top_k, dim=-1)
        return top_weights / top_weights.sum(dim=-1, keepdim=True), top_experts


def _experts_quantize_fp8(placement: LayerPlacement) -> bool:
    """Whether experts are quantized after loading; refuses methods that cannot hold them."""
    quantization = placement.quantization
    if quantization is None:
        return False
    params = quantization.params
    if isinstance(params, Fp8Params) and not params.from_checkpoint:
        return True
    raise UnsupportedModelError(
        f"mixture-of-experts weights cannot be {quantization.name}-quantized (that method "
        "stores 2-D linear weights only); --quantize fp8 on a float checkpoint quantizes experts"
    )


def _quantized_experts(weight: nn.Parameter) -> tuple[nn.Parameter, torch.Tensor]:
    """[E, N, K] float -> (e4m3 [E, N, K], float32 scales [E, N]): a scale per expert channel."""
    num_experts, num_cols, num_inputs = weight.shape
    fp8, scales = quantize_per_channel(weight.data.reshape(num_experts * num_cols, num_inputs))
    quantized = nn.Parameter(fp8.view(num_experts, num_cols, num_inputs), requires_grad=False)
    return quantized, scales.view(num_experts, num_cols)


def moe_checkpoint_weights(num_experts: int, module_part: str) -> tuple[PackedWeight, ...]:
    """Mixtral's per-expert tensors (`{module_part}.experts.{e}.w1 / w3 / w2.weight`) into the
    stacked parameters `{module_part}.w13` / `.w2`."""
    mapped: list[PackedWeight] = []
    for expert in range(num_experts):
        prefix = f"{module_part}.experts.{expert}."
        mapped += [
            PackedWeight(prefix + "w1.weight", f"{module_part}.w13", 2 * expert),
            PackedWeight(prefix + "w3.weight", f"{module_part}.w13", 2 * expert + 1),
            PackedWeight(prefix + "w2.weight", f"{module_part}.w2", expert),
        ]
    return tuple(mapped)


__all__ = ["MoEConfig", "SparseMoE", "moe_checkpoint_weights"]
