"""Which attention heads a tensor-parallel rank computes.

Query heads split evenly: rank r of N computes heads [r * H/N, (r + 1) * H/N). Key/value heads
split evenly too when there are at least N of them; with fewer (grouped-query attention on many
ranks, e.g. 8 KV heads over 16 ranks) each KV head is replicated on N / KV ranks, and every rank
keeps the one KV head its query heads attend with. Either way a rank's query heads only use
its own KV heads, so attention needs no communication and the KV cache of a rank holds only
its local KV heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.weights import TensorParallelRank


@dataclass(frozen=True)
class HeadPartition:
    num_heads: int  # query heads on this rank
    num_kv_heads: int  # key/value heads on this rank
    kv_head_start: int  # index (in the checkpoint) of this rank's first KV head

    @classmethod
    def of(cls, num_heads: int, num_kv_heads: int, tp: TensorParallelRank) -> HeadPartition:
        ranks = tp.world_size
        if num_heads % ranks != 0:
            raise UnsupportedModelError(
                f"the model's {num_heads} attention heads do not split over {ranks} "
                f"tensor-parallel ranks: the number of shards must divide {num_heads}"
            )
        if num_kv_heads >= ranks:
            if num_kv_heads % ranks != 0:
                raise UnsupportedModelError(
                    f"the model's {num_kv_heads} key/value heads do not split over {ranks} "
                    f"tensor-parallel ranks: the number of shards must divide {num_kv_heads}"
                )
            local_kv_heads = num_kv_heads // ranks
            return cls(num_heads // ranks, local_kv_heads, tp.rank * local_kv_heads)
        if ranks % num_kv_heads != 0:
            raise UnsupportedModelError(
                f"the model's {num_kv_heads} key/value heads cannot be replicated over {ranks} "
                f"tensor-parallel ranks: the number of shards must be a multiple of "
                f"{num_kv_heads}"
            )
        replicas = ranks // num_kv_heads
        return cls(num_heads // ranks, 1, tp.rank // replicas)
