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
        for (bound, count) in &snapshot.buckets {
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {}", snapshot.count);
        let _ = writeln!(self.out, "{name}_sum {}", snapshot.sum);
        let _ = writeln!(self.out, "{name}_count {}", snapshot.count);
    }
}
