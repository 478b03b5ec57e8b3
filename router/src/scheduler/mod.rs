//! Admission queue, continuous-batching loop, token budgets, KV block accounting, preemption.
pub mod interface;
