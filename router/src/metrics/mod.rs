//! The router's Prometheus metrics: TGI's names (dashboards built for TGI keep working) plus
//! ferrite's latency histograms (TTFT, inter-token, queue wait), KV / scheduler gauges and
//! per-step histograms (DESIGN.md pain point 7). Owned by the app state, never global; the
//! per-step ones are fed by the scheduler task (`steps.rs`) and read through its stats.
//!
//! Prefix caching does not exist yet: its hit / miss counters belong in `render_scheduler`,
//! read from `SchedulerStats` like the KV gauges, once the scheduler has a prefix cache.

pub mod grammar;
pub mod histogram;
mod speculation;
pub mod steps;
mod text;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::scheduler::interface::SchedulerStats;

use histogram::{Histogram, SECONDS_BOUNDS, TOKEN_BOUNDS};
use text::PrometheusText;

/// How one successful request went, recorded when it ends.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    pub total: Duration,
    pub validation: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub input_tokens: usize,
    pub generated_tokens: u32,
    pub max_new_tokens: u32,
    /// From arrival to the first token (of the first choice to produce one).
    pub time_to_first_token: Duration,
    /// `length`, `eos_token` or `stop_sequence` (of the first choice, for several).
    pub finish_reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    request_count: AtomicU64,
    request_success: AtomicU64,
    /// Failures by `error_type`.
    request_failure: Mutex<BTreeMap<&'static str, u64>>,
    request_duration_s: Histogram,
    validation_duration_s: Histogram,
    queue_duration_s: Histogram,
    inference_duration_s: Histogram,
    mean_time_per_token_s: Histogram,
    input_length_tokens: Histogram,
    generated_tokens: Histogram,
    max_new_tokens: Histogram,
    time_to_first_token_s: Histogram,
    inter_token_latency_s: Histogram,
    queue_wait_s: Histogram,
    pub grammar: grammar::GrammarMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            request_count: AtomicU64::new(0),
            request_success: AtomicU64::new(0),
            request_failure: Mutex::new(BTreeMap::new()),
            request_duration_s: Histogram::new(SECONDS_BOUNDS),
            validation_duration_s: Histogram::new(SECONDS_BOUNDS),
            queue_duration_s: Histogram::new(SECONDS_BOUNDS),
            inference_duration_s: Histogram::new(SECONDS_BOUNDS),
            mean_time_per_token_s: Histogram::new(SECONDS_BOUNDS),
            input_length_tokens: Histogram::new(TOKEN_BOUNDS),
            generated_tokens: Histogram::new(TOKEN_BOUNDS),
            max_new_tokens: Histogram::new(TOKEN_BOUNDS),
            time_to_first_token_s: Histogram::new(SECONDS_BOUNDS),
            inter_token_latency_s: Histogram::new(SECONDS_BOUNDS),
            queue_wait_s: Histogram::new(SECONDS_BOUNDS),
            grammar: grammar::GrammarMetrics::default(),
        }
    }
}

impl Metrics {
    pub fn request_received(&self) {
        self.request_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_succeeded(&self, record: &RequestRecord) {
        self.request_success.fetch_add(1, Ordering::Relaxed);
        self.request_duration_s.observe(record.total.as_secs_f64());
        self.validation_duration_s
            .observe(record.validation.as_secs_f64());
        self.queue_duration_s.observe(record.queue.as_secs_f64());
        self.inference_duration_s
            .observe(record.inference.as_secs_f64());
        if record.generated_tokens > 0 {
            let per_token_s = record.inference.as_secs_f64() / f64::from(record.generated_tokens);
            self.mean_time_per_token_s.observe(per_token_s);
        }
        self.input_length_tokens.observe(record.input_tokens as f64);
        self.generated_tokens
            .observe(f64::from(record.generated_tokens));
        self.max_new_tokens
            .observe(f64::from(record.max_new_tokens));
    }

    pub fn request_failed(&self, error_type: &'static str) {
        let mut failures = self
            .request_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *failures.entry(error_type).or_insert(0) += 1;
    }

    pub fn observe_time_to_first_token(&self, elapsed: Duration) {
        self.time_to_first_token_s.observe(elapsed.as_secs_f64());
    }

    pub fn observe_inter_token_latency(&self, elapsed: Duration) {
        self.inter_token_latency_s.observe(elapsed.as_secs_f64());
    }

    /// Once per scheduled sequence, when its prompt is computed: arrival -> first scheduled.
    pub fn observe_queue_wait(&self, waited: Duration) {
        self.queue_wait_s.observe(waited.as_secs_f64());
    }

    /// The whole exposition; scheduler gauges come from a fresh `SchedulerStats` snapshot.
    pub fn render(&self, stats: &SchedulerStats) -> String {
        let mut out = PrometheusText::default();
        self.render_requests(&mut out);
        render_scheduler(&mut out, stats);
        steps::render_steps(&mut out, &stats.steps);
        speculation::render_speculation(&mut out, stats);
        self.grammar.render(&mut out);
        out.finish()
    }

    fn render_requests(&self, out: &mut PrometheusText) {
        out.counter(
            "tgi_request_count",
            "Generation requests received",
            load(&self.request_count),
        );
        out.counter(
            "tgi_request_success",
            "Generation requests that succeeded",
            load(&self.request_success),
        );
        let failures: Vec<(&str, u64)> = {
            let failures = self
                .request_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            failures
                .iter()
                .map(|(&error_type, &count)| (error_type, count))
                .collect()
        };
        out.labeled_counter(
            "tgi_request_failure",
            "Failed requests by error type",
            "err",
            &failures,
        );
        for (name, help, histogram) in self.request_histograms() {
            out.histogram(name, help, &histogram.snapshot());
        }
    }

    fn request_histograms(&self) -> [(&'static str, &'static str, &Histogram); 11] {
        [
            (
                "tgi_request_duration",
                "End-to-end request time (s)",
                &self.request_duration_s,
            ),
            (
                "tgi_request_validation_duration",
                "Validation and tokenization time (s)",
                &self.validation_duration_s,
            ),
            (
                "tgi_request_queue_duration",
                "Time waiting for admission (s)",
                &self.queue_duration_s,
            ),
            (
                "tgi_request_inference_duration",
                "Time from admission to the last token (s)",
                &self.inference_duration_s,
            ),
            (
                "tgi_request_mean_time_per_token_duration",
                "Inference time per generated token (s)",
                &self.mean_time_per_token_s,
            ),
            (
                "tgi_request_input_length",
                "Prompt tokens per request",
                &self.input_length_tokens,
            ),
            (
                "tgi_request_generated_tokens",
                "Generated tokens per request",
                &self.generated_tokens,
            ),
            (
                "tgi_request_max_new_tokens",
                "max_new_tokens per request",
                &self.max_new_tokens,
            ),
            (
                "ferrite_time_to_first_token_seconds",
                "Time from arrival to the first token (s)",
                &self.time_to_first_token_s,
            ),
            (
                "ferrite_inter_token_latency_seconds",
                "Time between consecutive tokens (s)",
                &self.inter_token_latency_s,
            ),
            (
                "ferrite_queue_wait_seconds",
                "Time from arrival to first being scheduled, per sequence (s)",
                &self.queue_wait_s,
            ),
        ]
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn render_scheduler(out: &mut PrometheusText, stats: &SchedulerStats) {
    let kv_blocks_used = stats.kv_blocks_total.saturating_sub(stats.kv_blocks_free);
    let gauges = [
        (
            "tgi_queue_size",
            "Requests waiting for admission",
            stats.waiting_requests as f64,
        ),
        (
            "tgi_batch_current_size",
            "Requests in the running batch",
            stats.running_requests as f64,
        ),
        (
            "ferrite_requests_waiting",
            "Requests waiting for admission (same as tgi_queue_size)",
            stats.waiting_requests as f64,
        ),
        (
            "ferrite_requests_running",
            "Requests admitted and holding KV blocks (same as tgi_batch_current_size)",
            stats.running_requests as f64,
        ),
        (
            "ferrite_kv_blocks_total",
            "KV blocks the shard holds",
            stats.kv_blocks_total as f64,
        ),
        (
            "ferrite_kv_blocks_free",
            "KV blocks an allocation can take (unused, or cached and held by no request)",
            stats.kv_blocks_free as f64,
        ),
        (
            "ferrite_kv_blocks_used",
            "KV blocks allocated to requests",
            kv_blocks_used as f64,
        ),
        (
            "ferrite_kv_blocks_cached",
            "KV blocks indexed by the prefix cache (held or free)",
            stats.kv_blocks_cached as f64,
        ),
        (
            "ferrite_shards_up",
            "1 while the shards answer, 0 while they are unreachable (restarting)",
            if stats.shards_unreachable { 0.0 } else { 1.0 },
        ),
        (
            "ferrite_last_batch_size",
            "Requests in the most recent step",
            stats.last_batch_size as f64,
        ),
        (
            "ferrite_last_batch_tokens",
            "Tokens in the most recent step",
            stats.last_batch_tokens as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.gauge(name, help, value);
    }
    out.counter(
        "ferrite_preemptions_total",
        "Requests preempted for KV space",
        stats.preemptions_total,
    );
    let prefix_counters = [
        (
            "ferrite_prefix_cache_queries_tokens_total",
            "Prompt tokens looked up in the prefix cache when requests were admitted",
            stats.prefix_cache_query_tokens_total,
        ),
        (
            "ferrite_prefix_cache_hits_tokens_total",
            "Prompt tokens found in the prefix cache (not computed again)",
            stats.prefix_cache_hit_tokens_total,
        ),
        (
            "ferrite_prefix_cache_evictions_total",
            "Cached KV blocks dropped to make room",
            stats.prefix_cache_evicted_blocks_total,
        ),
        (
            "ferrite_steps_sent_ahead_total",
            "Steps sent while the shard still computed the step before (asynchronous scheduling)",
            stats.steps_sent_ahead_total,
        ),
        (
            "ferrite_shard_recoveries_total",
            "Times the shards came back after being unreachable",
            stats.shard_recoveries_total,
        ),
        (
            "ferrite_replayed_requests_total",
            "Running requests replayed on restarted shards",
            stats.replayed_requests_total,
        ),
        (
            "ferrite_prompt_tokens_computed_total",
            "Prompt tokens the shards computed (cached ones excluded)",
            stats.prompt_tokens_computed_total,
        ),
    ];
    for (name, help, value) in prefix_counters {
        out.counter(name, help, value);
    }
    out.counter(
        "ferrite_scheduler_steps_total",
        "Scheduler steps run",
        stats.steps_total,
    );
    let seconds = |ns: u64| ns as f64 / 1e9;
    let router_ns = stats
        .step_wall_ns_total
        .saturating_sub(stats.forward_ns_total);
    let sums = [
        (
            "ferrite_forward_seconds_total",
            "Shard-reported forward time, summed over steps",
            stats.forward_ns_total,
        ),
        (
            "ferrite_step_seconds_total",
            "Wall time of steps, summed",
            stats.step_wall_ns_total,
        ),
        (
            "ferrite_step_overhead_seconds_total",
            "Step wall time minus forward time (router + gRPC), summed",
            router_ns,
        ),
    ];
    for (name, help, ns) in sums {
        out.float_counter(name, help, seconds(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_tgi_names_and_kv_gauges() {
        let metrics = Metrics::default();
        metrics.request_received();
        metrics.request_received();
        metrics.request_failed("validation");
        metrics.request_succeeded(&RequestRecord {
            total: Duration::from_millis(30),
            generated_tokens: 3,
            input_tokens: 5,
            ..Default::default()
        });
        let stats = SchedulerStats {
            waiting_requests: 4,
            kv_blocks_total: 10,
            kv_blocks_free: 7,
            kv_blocks_cached: 5,
            prefix_cache_query_tokens_total: 40,
            prefix_cache_hit_tokens_total: 16,
            prompt_tokens_computed_total: 24,
            preemptions_total: 2,
            steps_sent_ahead_total: 9,
            ..Default::default()
        };
        let text = metrics.render(&stats);
        for line in [
            "tgi_request_count 2",
            "tgi_request_success 1",
            "tgi_request_failure{err=\"validation\"} 1",
            "tgi_request_duration_bucket{le=\"0.05\"} 1",
            "tgi_request_duration_count 1",
            "tgi_request_input_length_bucket{le=\"8\"} 1",
            "tgi_queue_size 4",
            "ferrite_kv_blocks_used 3",
            "ferrite_kv_blocks_free 7",
            "ferrite_kv_blocks_total 10",
            "ferrite_preemptions_total 2",
            "ferrite_kv_blocks_cached 5",
            "ferrite_prefix_cache_queries_tokens_total 40",
            "ferrite_prefix_cache_hits_tokens_total 16",
            "ferrite_prompt_tokens_computed_total 24",
            "ferrite_steps_sent_ahead_total 9",
            "# TYPE tgi_request_duration histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
