//! Speculative decoding metrics (`--speculate`): tokens the shards proposed and verified, those
//! they accepted, and the accepted run per verified decode (the acceptance length: a step of
//! one decode emits that many tokens plus one).

use super::text::PrometheusText;
use crate::scheduler::interface::SchedulerStats;

pub fn render_speculation(out: &mut PrometheusText, stats: &SchedulerStats) {
    out.counter(
        "ferrite_speculative_proposed_tokens_total",
        "Speculative tokens proposed and verified by the shards",
        stats.speculative_proposed_tokens_total,
    );
    out.counter(
        "ferrite_speculative_accepted_tokens_total",
        "Speculative tokens accepted (each one a token emitted without a forward of its own)",
        stats.speculative_accepted_tokens_total,
    );
    out.histogram(
        "ferrite_speculative_accepted_tokens_per_decode",
        "Proposals accepted per verified decode",
        &stats.speculative_accepted_per_decode,
    );
}
