//! Prometheus metrics in the text exposition format: counters, gauges and
//! latency histograms, each series named by its labels.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    kind: Option<Kind>,
    values: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Histogram>,
}

/// A set of metrics, rendered by [`Metrics::render`] for `GET /metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn label_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    /// No metrics yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn with<T>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        f: impl FnOnce(&mut Family) -> T,
    ) -> T {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_default();
        family.help = help;
        family.kind = Some(kind);
        f(family)
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: u64) {
        self.with(name, help, Kind::Counter, |f| {
            *f.values.entry(label_text(labels)).or_default() += by as f64;
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.with(name, help, Kind::Gauge, |f| {
            f.values.insert(label_text(labels), value);
        });
    }

    /// Records a duration in a histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        took: Duration,
    ) {
        let secs = took.as_secs_f64();
        self.with(name, help, Kind::Histogram, |f| {
            let h = f.histograms.entry(label_text(labels)).or_default();
            for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
                if secs <= bound {
                    *count += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    /// A counter's or gauge's current value (0 if never set).
    pub fn value(&self, name: &'static str, labels: &[(&str, &str)]) -> f64 {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families
            .get(name)
            .and_then(|f| f.values.get(&label_text(labels)).copied())
            .unwrap_or(0.0)
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Some(Kind::Counter) => "counter",
                Some(Kind::Gauge) => "gauge",
                Some(Kind::Histogram) => "histogram",
                None => continue,
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &family.values {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
            for (labels, h) in &family.histograms {
                // `{a="b"}` -> `a="b",` to prepend to `le`.
                let inner = labels.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                for (count, bound) in h.counts.iter().zip(BUCKETS) {
                    let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{labels} {}", h.sum);
                let _ = writeln!(out, "{name}_count{labels} {}", h.count);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.add("x_total", "Things.", &[("cause", "replay")], 2);
        m.add("x_total", "Things.", &[("cause", "replay")], 1);
        m.set("depth", "Queue depth.", &[], 7.0);
        m.observe(
            "lat_seconds",
            "Latency.",
            &[("stage", "a")],
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE x_total counter\nx_total{cause=\"replay\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("depth 7\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{stage=\"a\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{stage=\"a\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_count{stage=\"a\"} 1\n"),
            "{text}"
        );
        assert_eq!(m.value("x_total", &[("cause", "replay")]), 3.0);
    }
}
