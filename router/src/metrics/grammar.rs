//! Structured-output metrics: grammar compilations in the shards (time of the fresh ones),
//! cache hits and refusals.

use std::sync::atomic::{AtomicU64, Ordering};

use super::histogram::{Histogram, SECONDS_BOUNDS};
use super::text::PrometheusText;
use crate::proto;

#[derive(Debug)]
pub struct GrammarMetrics {
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    refused: AtomicU64,
    compile_duration_s: Histogram,
}

impl Default for GrammarMetrics {
    fn default() -> Self {
        Self {
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            compile_duration_s: Histogram::new(SECONDS_BOUNDS),
        }
    }
}

impl GrammarMetrics {
    /// One shard answer to CompileGrammar.
    pub fn observe(&self, answer: &proto::CompileGrammarResponse) {
        if !answer.error.is_empty() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        } else if answer.cache_hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.compiled.fetch_add(1, Ordering::Relaxed);
            self.compile_duration_s
                .observe(answer.compile_ns as f64 / 1e9);
        }
    }

    pub fn render(&self, out: &mut PrometheusText) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.counter(
            "ferrite_grammar_compiled_total",
            "Grammars compiled by the shards (cache misses)",
            load(&self.compiled),
        );
        out.counter(
            "ferrite_grammar_cache_hits_total",
            "Grammars found compiled in the shards' cache",
            load(&self.cache_hits),
        );
        out.counter(
            "ferrite_grammar_refused_total",
            "Grammars the shards refused (invalid, unsupported, past a limit)",
            load(&self.refused),
        );
        out.histogram(
            "ferrite_grammar_compile_duration_seconds",
            "Shard time compiling one grammar, cache misses (s)",
            &self.compile_duration_s.snapshot(),
        );
    }
}
