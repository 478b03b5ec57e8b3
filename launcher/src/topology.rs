//! Where this launcher's shards sit in the tensor-parallel group, and whether the model splits
//! over it. One node: ranks 0..num_shard. Several nodes (`--nnodes`): node k runs ranks
//! k*num_shard .. (k+1)*num_shard; node 0 hosts the rendezvous (rank 0) and the router.

use std::ops::Range;

use crate::args::Args;
use crate::model::ModelFacts;
use crate::plan::PlanError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub nnodes: u32,
    pub node_rank: u32,
    pub shards_per_node: u32,
}

impl Topology {
    pub fn from_args(args: &Args) -> Self {
        Self {
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            shards_per_node: args.num_shard,
        }
    }

    pub fn check(&self) -> Result<(), PlanError> {
        if self.shards_per_node == 0 {
            return Err(PlanError::NoShards(0));
        }
        if self.nnodes == 0 {
            return Err(PlanError::NoNodes);
        }
        if self.node_rank >= self.nnodes {
            return Err(PlanError::NodeRankOutOfRange {
                node_rank: self.node_rank,
                nnodes: self.nnodes,
            });
        }
        Ok(())
    }

    /// Ranks in the whole group, on every node.
    pub fn world_size(&self) -> u32 {
        self.nnodes * self.shards_per_node
    }

    /// The global ranks of this node's shards.
    pub fn ranks(&self) -> Range<u32> {
        let first = self.node_rank * self.shards_per_node;
        first..first + self.shards_per_node
    }

    /// Node 0 runs the router; the other nodes only run shards.
    pub fn runs_router(&self) -> bool {
        self.node_rank == 0
    }

    /// How the user chose the group size, for messages: "--num-shard (3)" or
    /// "--num-shard x --nnodes (2 x 2 = 4)".
    pub fn describe(&self) -> String {
        if self.nnodes == 1 {
            format!("--num-shard ({})", self.shards_per_node)
        } else {
            format!(
                "--num-shard x --nnodes ({} x {} = {})",
                self.shards_per_node,
                self.nnodes,
                self.world_size()
            )
        }
    }

    /// The model's layers must split over the group: query heads and the MLP evenly; key/value
    /// heads evenly, or replicated when there are fewer of them than ranks (then the rank count
    /// must be a multiple of them).
    pub fn check_model(&self, facts: &ModelFacts) -> Result<(), PlanError> {
        let ranks = self.world_size();
        let splits = |count: u32| count.is_multiple_of(ranks);
        for (what, count) in [
            ("attention heads", facts.num_attention_heads),
            ("intermediate size", facts.intermediate_size),
        ] {
            match count {
                Some(count) if !splits(count) => {
                    return Err(PlanError::ShardsDoNotDivide {
                        shards: self.describe(),
                        what,
                        count,
                    })
                }
                _ => {}
            }
        }
        match facts.num_key_value_heads {
            Some(count) if count > 0 && !splits(count) && !ranks.is_multiple_of(count) => {
                Err(PlanError::KvHeadsDoNotSplit {
                    shards: self.describe(),
                    count,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(nnodes: u32, node_rank: u32, shards_per_node: u32) -> Topology {
        Topology {
            nnodes,
            node_rank,
            shards_per_node,
        }
    }

    fn facts(heads: u32, kv_heads: u32, intermediate_size: u32) -> ModelFacts {
        ModelFacts {
            num_attention_heads: Some(heads),
            num_key_value_heads: Some(kv_heads),
            intermediate_size: Some(intermediate_size),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_hold_consecutive_ranks() {
        let second = topology(2, 1, 4);
        assert_eq!(second.world_size(), 8);
        assert_eq!(second.ranks(), 4..8);
        assert!(!second.runs_router() && topology(2, 0, 4).runs_router());
        assert_eq!(second.describe(), "--num-shard x --nnodes (4 x 2 = 8)");
        assert_eq!(
            topology(2, 2, 1).check(),
            Err(PlanError::NodeRankOutOfRange {
                node_rank: 2,
                nnodes: 2
            })
        );
        assert_eq!(topology(0, 0, 1).check(), Err(PlanError::NoNodes));
    }

    #[test]
    fn kv_heads_split_or_replicate_and_the_rest_must_divide() {
        // SmolLM2: 9 heads, 3 KV heads, MLP 1536.
        assert!(topology(1, 0, 3).check_model(&facts(9, 3, 1536)).is_ok());
        // 32 heads, 8 KV heads: 16 ranks replicate each KV head twice.
        assert!(topology(2, 0, 8).check_model(&facts(32, 8, 14336)).is_ok());
        let error = topology(1, 0, 3)
            .check_model(&facts(4, 2, 128))
            .expect_err("4 heads over 3");
        assert_eq!(
            error.to_string(),
            "--num-shard (3) must divide the model's attention heads (4)"
        );
        let error = topology(1, 0, 4)
            .check_model(&facts(12, 6, 128))
            .expect_err("6 KV heads over 4");
        assert!(error.to_string().contains("key/value heads (6)"), "{error}");
        let error = topology(1, 0, 2)
            .check_model(&facts(4, 2, 129))
            .expect_err("odd MLP");
        assert!(error.to_string().contains("intermediate size (129)"));
    }
}
