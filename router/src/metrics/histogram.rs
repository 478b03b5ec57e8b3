//! A Prometheus histogram: fixed upper bounds, cumulative counts on export.

use std::sync::Mutex;

/// Latencies in seconds, 1 ms .. 5 min.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Token counts, powers of two up to 128k.
pub const TOKEN_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0, 131072.0,
];

/// Small counts (e.g. speculative tokens accepted per decode), 0 .. 16.
pub const COUNT_BOUNDS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations <= bound), cumulative, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    bucket_counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let state = State {
            bucket_counts: vec![0; bounds.len() + 1],
            ..Default::default()
        };
        Self {
            bounds,
            state: Mutex::new(state),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.bucket_counts[bucket] += 1;
        state.sum += value;
        state.count += 1;
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&state.bucket_counts)
            .map(|(&bound, &count)| {
                cumulative += count;
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: state.sum,
            count: state.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_catches_the_rest() {
        let histogram = Histogram::new(&[1.0, 10.0]);
        for value in [0.5, 1.0, 5.0, 50.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(1.0, 2), (10.0, 3)]);
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum - 56.5).abs() < 1e-9);
    }
}
