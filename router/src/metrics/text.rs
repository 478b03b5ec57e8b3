//! Prometheus text exposition format (version 0.0.4) writer.

use std::fmt::Write;

use super::histogram::HistogramSnapshot;

#[derive(Debug, Default)]
pub struct PrometheusText {
    out: String,
}

impl PrometheusText {
    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter with one label, one sample per label value.
    pub fn labeled_counter(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: &[(&str, u64)],
    ) {
        self.header(name, help, "counter");
        for (label_value, value) in samples {
            let _ = writeln!(self.out, "{name}{{{label}=\"{label_value}\"}} {value}");
        }
    }

    /// A counter whose value is not an integer (e.g. seconds summed).
    pub fn float_counter(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot) {
        self.header(name, help, "histogram");
        self.histogram_series(name, "", snapshot);
    }

    /// One histogram family with a label, one series per label value.
    pub fn labeled_histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: &[(&str, &HistogramSnapshot)],
    ) {
        self.header(name, help, "histogram");
        for (label_value, snapshot) in series {
            self.histogram_series(name, &format!("{label}=\"{label_value}\""), snapshot);
        }
    }

    /// `labels`: `key="value"` pairs already joined, or empty.
    fn histogram_series(&mut self, name: &str, labels: &str, snapshot: &HistogramSnapshot) {
        let prefix = if labels.is_empty() {
            String::new()
        } else {
            format!("{labels},")
        };
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        for (bound, count) in &snapshot.buckets {
            let _ = writeln!(self.out, "{name}_bucket{{{prefix}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            self.out,
            "{name}_bucket{{{prefix}le=\"+Inf\"}} {}",
            snapshot.count
        );
        let _ = writeln!(self.out, "{name}_sum{braced} {}", snapshot.sum);
        let _ = writeln!(self.out, "{name}_count{braced} {}", snapshot.count);
    }
}
