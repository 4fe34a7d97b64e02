//! OTLP metrics → Prometheus text exposition (format 0.0.4), named as the OpenTelemetry
//! Collector's `prometheus` exporter names them with `resource_to_telemetry_conversion`
//! (deploy/README.md): dots become underscores, the unit is a suffix (`_seconds`), counters end
//! in `_total`, every resource attribute is a label. So the dashboard and alert rules in
//! deploy/ work on pyusdt's own `/metrics` as on a Collector's.
use std::collections::BTreeMap;
use std::fmt::Write;

use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, Metric};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// One metric family: its type, help and sample lines.
struct Family {
    kind: &'static str,
    help: String,
    lines: Vec<String>,
}

/// Renders the metrics of each resource as one exposition, families sorted by name.
pub fn render(resources: &[(&Resource, &[Metric])]) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (resource, metrics) in resources {
        let base: Vec<(String, String)> = resource.attributes.iter().filter_map(label).collect();
        for m in *metrics {
            add(&mut families, &base, m);
        }
    }
    let mut out = String::new();
    for (name, f) in families {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {name} {}", f.kind);
        for l in f.lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn add(families: &mut BTreeMap<String, Family>, base: &[(String, String)], m: &Metric) {
    let name = metric_name(&m.name, &m.unit);
    let labels = |attrs: &[KeyValue], extra: Option<(&str, String)>| {
        let mut own: Vec<(String, String)> = attrs.iter().filter_map(label).collect();
        if let Some((k, v)) = extra {
            own.push((k.to_string(), v));
        }
        // A resource label never merges into the point's own labels (a process's `le` would
        // corrupt the buckets), nor takes a name the scrape reserves. The traced process's
        // attributes are refused such names where they are read (model::env_attributes):
        // this keeps the exposition valid whatever the resource holds.
        let mut all: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| !reserved_label(k) && !own.iter().any(|(n, _)| n == k))
            .cloned()
            .collect();
        all.extend(own);
        format_labels(&all)
    };
    match &m.data {
        Some(Data::Sum(s)) => {
            let name = if s.is_monotonic {
                format!("{name}_total")
            } else {
                name
            };
            let f = family(
                families,
                &name,
                if s.is_monotonic { "counter" } else { "gauge" },
                m,
            );
            for p in &s.data_points {
                f.lines.push(format!(
                    "{name}{} {}",
                    labels(&p.attributes, None),
                    number(&p.value)
                ));
            }
        }
        Some(Data::Gauge(g)) => {
            let f = family(families, &name, "gauge", m);
            for p in &g.data_points {
                f.lines.push(format!(
                    "{name}{} {}",
                    labels(&p.attributes, None),
                    number(&p.value)
                ));
            }
        }
        Some(Data::Histogram(h)) => {
            let f = family(families, &name, "histogram", m);
            for p in &h.data_points {
                let mut cumulative = 0u64;
                for (i, count) in p.bucket_counts.iter().enumerate() {
                    cumulative += count;
                    let le = p
                        .explicit_bounds
                        .get(i)
                        .map_or_else(|| "+Inf".to_string(), |b| float(*b));
                    f.lines.push(format!(
                        "{name}_bucket{} {cumulative}",
                        labels(&p.attributes, Some(("le", le)))
                    ));
                }
                let l = labels(&p.attributes, None);
                f.lines
                    .push(format!("{name}_sum{l} {}", float(p.sum.unwrap_or(0.0))));
                f.lines.push(format!("{name}_count{l} {}", p.count));
            }
        }
        _ => {}
    }
}

fn family<'a>(
    families: &'a mut BTreeMap<String, Family>,
    name: &str,
    kind: &'static str,
    m: &Metric,
) -> &'a mut Family {
    families.entry(name.to_string()).or_insert_with(|| Family {
        kind,
        help: m.description.clone(),
        lines: Vec::new(),
    })
}

/// `cpython.gc.duration` in `s` → `cpython_gc_duration_seconds`; `{event}`-style units add
/// nothing (as the Collector does).
pub fn metric_name(name: &str, unit: &str) -> String {
    let base = sanitize(name);
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" => "ratio",
        _ => "",
    };
    if suffix.is_empty() || base.ends_with(suffix) {
        base
    } else {
        format!("{base}_{suffix}")
    }
}

/// Label names the scrape gives a meaning of its own: `le`, `quantile`, the target labels,
/// and `__…`.
fn reserved_label(name: &str) -> bool {
    matches!(name, "le" | "quantile" | "job" | "instance") || name.starts_with("__")
}

/// The Prometheus label name of an attribute; defined with the attributes (src/model/attrs.rs),
/// which check their own labels against it.
pub use crate::model::attrs::label_name;

/// Prometheus names and label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn sanitize(s: &str) -> String {
    label_name(s)
}

fn label(kv: &KeyValue) -> Option<(String, String)> {
    let v = match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => float(*d),
        _ => return None,
    };
    Some((sanitize(&kv.key), v))
}

fn format_labels(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    // Names that sanitise alike (`a.b`, `a_b`) would be duplicate labels, which make
    // Prometheus reject the whole scrape: their values are joined with `;`, as the Collector
    // does. Names Prometheus reserves (`__…`) get a `key` prefix.
    let mut merged: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        let k = if k.starts_with("__") {
            format!("key{k}")
        } else {
            k.clone()
        };
        match merged.iter_mut().find(|(name, _)| *name == k) {
            Some((_, existing)) if existing != v => {
                existing.push(';');
                existing.push_str(v);
            }
            Some(_) => {}
            None => merged.push((k, v.clone())),
        }
    }
    let parts: Vec<String> = merged
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Label values: backslash, double quote and newline escaped, as the format requires.
fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: &Option<number_data_point::Value>) -> String {
    match v {
        Some(number_data_point::Value::AsInt(i)) => i.to_string(),
        Some(number_data_point::Value::AsDouble(d)) => float(*d),
        None => "0".into(),
    }
}

fn float(f: f64) -> String {
    if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if f.is_nan() {
        "NaN".into()
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attrs;
    use crate::model::metrics::{counter, int_point, Temporality};

    #[test]
    fn names_follow_the_collector() {
        assert_eq!(
            metric_name("cpython.gc.duration", "s"),
            "cpython_gc_duration_seconds"
        );
        assert_eq!(
            metric_name("cpython.gc.collections", "{collection}"),
            "cpython_gc_collections"
        );
        assert_eq!(
            metric_name("pyusdt.function.sampling.ratio", "1"),
            "pyusdt_function_sampling_ratio"
        );
    }

    #[test]
    fn colliding_and_reserved_label_names_do_not_break_the_scrape() {
        let labels = vec![
            ("a_b".to_string(), "1".to_string()),
            ("a_b".to_string(), "2".to_string()),
            ("__name__".to_string(), "x".to_string()),
        ];
        assert_eq!(format_labels(&labels), "{a_b=\"1;2\",key__name__=\"x\"}");
    }

    #[test]
    fn resource_labels_never_replace_point_labels_or_reserved_ones() {
        let resource = Resource {
            attributes: vec![
                attrs::string("service.name", "s"),
                attrs::string("le", "x"),
                attrs::string("job", "j"),
                attrs::string("__name__", "n"),
                attrs::string("cpython.gc.generation", "9"),
            ],
            ..Default::default()
        };
        use opentelemetry_proto::tonic::metrics::v1::{Histogram, HistogramDataPoint};
        let m = Metric {
            name: "h".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![attrs::int("cpython.gc.generation", 2)],
                    count: 1,
                    sum: Some(0.5),
                    bucket_counts: vec![0, 1],
                    explicit_bounds: vec![0.1],
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let text = render(&[(&resource, std::slice::from_ref(&m))]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("h_seconds"), "{line}");
            assert!(!line.contains("=\"x\"") && !line.contains("job="), "{line}");
            assert!(
                !line.contains("__name__") && !line.contains("\"9\""),
                "{line}"
            );
            assert_eq!(
                line.matches("le=").count(),
                usize::from(line.contains("_bucket")),
                "{line}"
            );
        }
        assert!(
            text.contains(
                "h_seconds_bucket{service_name=\"s\",cpython_gc_generation=\"2\",le=\"+Inf\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn counters_carry_resource_and_point_labels() {
        let resource = Resource {
            attributes: vec![attrs::string("service.name", "shop \"eu\"")],
            ..Default::default()
        };
        let m = counter(
            "cpython.gc.collections",
            "Collections.",
            "{collection}",
            Temporality::Cumulative,
            vec![int_point(
                vec![attrs::int("cpython.gc.generation", 2)],
                7,
                0,
                0,
            )],
        );
        let text = render(&[(&resource, std::slice::from_ref(&m))]);
        assert!(
            text.contains("# TYPE cpython_gc_collections_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "cpython_gc_collections_total{service_name=\"shop \\\"eu\\\"\",cpython_gc_generation=\"2\"} 7"
            ),
            "{text}"
        );
    }
}
