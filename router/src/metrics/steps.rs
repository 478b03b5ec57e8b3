//! Per-step metrics, by step kind (`method="prefill"` or `"decode"`, as TGI labels them):
//! how many steps ran and succeeded, their wall time in the router, the forward and sampling
//! time the shard reported, and how many requests and tokens each step carried. Written by the
//! scheduler task after every step, rendered by `/metrics`.

use super::histogram::{Histogram, HistogramSnapshot, SECONDS_BOUNDS, TOKEN_BOUNDS};
use super::text::PrometheusText;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMethod {
    /// A step that computes prompt tokens (possibly with decodes riding along).
    Prefill,
    /// A step of decodes only.
    Decode,
}

impl StepMethod {
    pub const ALL: [StepMethod; 2] = [StepMethod::Prefill, StepMethod::Decode];

    pub fn as_str(self) -> &'static str {
        match self {
            StepMethod::Prefill => "prefill",
            StepMethod::Decode => "decode",
        }
    }

    fn index(self) -> usize {
        match self {
            StepMethod::Prefill => 0,
            StepMethod::Decode => 1,
        }
    }
}

/// One step as the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepObservation {
    pub method: StepMethod,
    pub succeeded: bool,
    pub batch_size: usize,
    pub num_tokens: usize,
    pub step_wall_ns: u64,
    /// Shard-reported; 0 for a failed step.
    pub forward_ns: u64,
    pub sampling_ns: u64,
}

#[derive(Debug)]
struct MethodHistograms {
    duration_s: Histogram,
    forward_s: Histogram,
    sampling_s: Histogram,
    batch_size: Histogram,
    tokens: Histogram,
}

impl Default for MethodHistograms {
    fn default() -> Self {
        Self {
            duration_s: Histogram::new(SECONDS_BOUNDS),
            forward_s: Histogram::new(SECONDS_BOUNDS),
            sampling_s: Histogram::new(SECONDS_BOUNDS),
            batch_size: Histogram::new(TOKEN_BOUNDS),
            tokens: Histogram::new(TOKEN_BOUNDS),
        }
    }
}

/// The live histograms (interior mutability: observed through a shared reference).
#[derive(Debug, Default)]
pub struct StepMetrics {
    by_method: [MethodHistograms; 2],
}

/// What one method's steps add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodSnapshot {
    pub num_steps: u64,
    pub num_succeeded: u64,
    pub duration_s: HistogramSnapshot,
    pub forward_s: HistogramSnapshot,
    pub sampling_s: HistogramSnapshot,
    pub batch_size: HistogramSnapshot,
    pub tokens: HistogramSnapshot,
}

/// Snapshots indexed like `StepMethod::ALL`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMetricsSnapshot {
    pub by_method: [MethodSnapshot; 2],
}

impl StepMetricsSnapshot {
    pub fn method(&self, method: StepMethod) -> &MethodSnapshot {
        &self.by_method[method.index()]
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl StepMetrics {
    pub fn observe(&self, step: &StepObservation) {
        let histograms = &self.by_method[step.method.index()];
        histograms.duration_s.observe(seconds(step.step_wall_ns));
        histograms.batch_size.observe(step.batch_size as f64);
        histograms.tokens.observe(step.num_tokens as f64);
        // A failed step has no shard timings: observing zeros would drag the quantiles down.
        if step.succeeded {
            histograms.forward_s.observe(seconds(step.forward_ns));
            histograms.sampling_s.observe(seconds(step.sampling_ns));
        }
    }

    pub fn snapshot(&self) -> StepMetricsSnapshot {
        let snapshot = |histograms: &MethodHistograms| {
            let duration_s = histograms.duration_s.snapshot();
            let forward_s = histograms.forward_s.snapshot();
            MethodSnapshot {
                num_steps: duration_s.count,
                num_succeeded: forward_s.count,
                duration_s,
                forward_s,
                sampling_s: histograms.sampling_s.snapshot(),
                batch_size: histograms.batch_size.snapshot(),
                tokens: histograms.tokens.snapshot(),
            }
        };
        StepMetricsSnapshot {
            by_method: [snapshot(&self.by_method[0]), snapshot(&self.by_method[1])],
        }
    }
}

type Select = fn(&MethodSnapshot) -> &HistogramSnapshot;
type Count = fn(&MethodSnapshot) -> u64;

pub(super) fn render_steps(out: &mut PrometheusText, steps: &StepMetricsSnapshot) {
    let counters: [(&str, &str, Count); 2] = [
        (
            "tgi_batch_inference_count",
            "Shard steps sent, by method",
            |m| m.num_steps,
        ),
        (
            "tgi_batch_inference_success",
            "Shard steps that succeeded, by method",
            |m| m.num_succeeded,
        ),
    ];
    for (name, help, value) in counters {
        let samples: Vec<(&str, u64)> = StepMethod::ALL
            .iter()
            .map(|&method| (method.as_str(), value(steps.method(method))))
            .collect();
        out.labeled_counter(name, help, "method", &samples);
    }
    let histograms: [(&str, &str, Select); 5] = [
        (
            "tgi_batch_inference_duration",
            "Wall time of a step seen from the router: RPC + forward + sampling (s)",
            |m| &m.duration_s,
        ),
        (
            "tgi_batch_forward_duration",
            "Model forward time of a step, reported by the shard (s)",
            |m| &m.forward_s,
        ),
        (
            "ferrite_step_sampling_seconds",
            "Sampling and logprob time of a step, reported by the shard (s)",
            |m| &m.sampling_s,
        ),
        ("ferrite_step_batch_size", "Requests in a step", |m| {
            &m.batch_size
        }),
        (
            "ferrite_step_tokens",
            "Tokens computed in a step (prompt chunks + one per decode)",
            |m| &m.tokens,
        ),
    ];
    for (name, help, select) in histograms {
        let series: Vec<(&str, &HistogramSnapshot)> = StepMethod::ALL
            .iter()
            .map(|&method| (method.as_str(), select(steps.method(method))))
            .collect();
        out.labeled_histograms(name, help, "method", &series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_counted_by_method_and_failures_keep_out_of_shard_timings() {
        let metrics = StepMetrics::default();
        let decode = StepObservation {
            method: StepMethod::Decode,
            succeeded: true,
            batch_size: 3,
            num_tokens: 3,
            step_wall_ns: 2_000_000,
            forward_ns: 1_500_000,
            sampling_ns: 100_000,
        };
        metrics.observe(&decode);
        metrics.observe(&StepObservation {
            succeeded: false,
            forward_ns: 0,
            ..decode
        });
        metrics.observe(&StepObservation {
            method: StepMethod::Prefill,
            num_tokens: 40,
            ..decode
        });
        let snapshot = metrics.snapshot();
        let decodes = snapshot.method(StepMethod::Decode);
        assert_eq!((decodes.num_steps, decodes.num_succeeded), (2, 1));
        assert_eq!(decodes.batch_size.sum, 6.0);
        assert!((decodes.forward_s.sum - 0.0015).abs() < 1e-12);
        let prefills = snapshot.method(StepMethod::Prefill);
        assert_eq!(prefills.num_steps, 1);
        assert_eq!(prefills.tokens.sum, 40.0);

        let mut out = PrometheusText::default();
        render_steps(&mut out, &snapshot);
        let text = out.finish();
        for line in [
            "tgi_batch_inference_count{method=\"decode\"} 2",
            "tgi_batch_inference_success{method=\"decode\"} 1",
            "tgi_batch_inference_count{method=\"prefill\"} 1",
            "ferrite_step_tokens_bucket{method=\"prefill\",le=\"64\"} 1",
            "ferrite_step_tokens_count{method=\"prefill\"} 1",
            "ferrite_step_batch_size_sum{method=\"decode\"} 6",
            "tgi_batch_forward_duration_count{method=\"decode\"} 1",
            "# TYPE ferrite_step_tokens histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
