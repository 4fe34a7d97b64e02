//! What a traced process's own `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` add to its
//! resource. The process chooses them, and they become labels on every `/metrics` series and
//! attributes of every OTLP resource: they are bounded in count and size, may not replace what
//! pyusdt derives itself (`process.*`, `host.*`, `k8s.*`, `container.*`, `telemetry.*`,
//! `service.instance.id`), and may not take a Prometheus label name that is reserved (`le`,
//! `quantile`, `job`, `instance`, `__…`) or that a metric's own attributes use. What is refused
//! is counted by reason (`pyusdt.resource.attributes.refused`).
use std::sync::atomic::{AtomicU64, Ordering};

use super::attrs;
use super::attrs::label_name;

/// Attributes a process may add (besides `service.name`).
pub const MAX_ATTRIBUTES: usize = 32;
/// Bytes of an attribute's key, and of a value (and of `OTEL_SERVICE_NAME`).
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 256;
/// Bytes of `OTEL_RESOURCE_ATTRIBUTES` read; entries beyond are refused as too long.
pub const MAX_VARIABLE_BYTES: usize = 4096;

/// Why an attribute from a process's environment was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Beyond `MAX_ATTRIBUTES`.
    TooMany,
    /// A key, value or the variable beyond its size bound.
    TooLong,
    /// A name pyusdt derives, a reserved label, or a metric's own attribute.
    Reserved,
    /// Malformed: no `=`, an empty key, control characters.
    Invalid,
    /// Its label name is taken by an earlier attribute (`a.b` then `a_b`).
    Duplicate,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::TooMany,
        Refusal::TooLong,
        Refusal::Reserved,
        Refusal::Invalid,
        Refusal::Duplicate,
    ];

    /// The `reason` attribute of `pyusdt.resource.attributes.refused`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooMany => "too_many",
            Refusal::TooLong => "too_long",
            Refusal::Reserved => "reserved",
            Refusal::Invalid => "invalid",
            Refusal::Duplicate => "duplicate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Refused attributes, per `Refusal` (in `Refusal::ALL` order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals(pub [u64; 5]);

impl Refusals {
    fn add(&mut self, why: Refusal, n: u64) {
        self.0[why.index()] += n;
    }

    pub fn get(&self, why: Refusal) -> u64 {
        self.0[why.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Refusals of the whole run, counted once per process description (`count`).
static REFUSED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Adds a process description's refusals to the run's counts.
pub fn count(r: &Refusals) {
    for (total, n) in REFUSED.iter().zip(r.0) {
        total.fetch_add(n, Ordering::Relaxed);
    }
}

/// The run's refusals so far.
pub fn counted() -> Refusals {
    Refusals(REFUSED.each_ref().map(|v| v.load(Ordering::Relaxed)))
}

/// Label names a process's attribute may not take (after Prometheus sanitising): Prometheus's
/// own, and the scrape's target labels.
const RESERVED_LABELS: [&str; 4] = ["le", "quantile", "job", "instance"];
/// Attributes pyusdt derives (as label-name prefixes): the process may not spoof them.
const DERIVED_PREFIXES: [&str; 5] = ["process_", "host_", "k8s_", "container_", "telemetry_"];
const DERIVED_NAMES: [&str; 2] = ["service_instance_id", "service_name"];

/// Whether a (sanitised) label name is one a process's attribute may not take.
fn reserved(label: &str) -> bool {
    label.starts_with("__")
        || RESERVED_LABELS.contains(&label)
        || DERIVED_NAMES.contains(&label)
        || DERIVED_PREFIXES.iter().any(|p| label.starts_with(p))
        || attrs::is_point_attribute_label(label)
}

/// The vetted environment of a process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FromEnvironment {
    /// `OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name: Option<String>,
    /// The other attributes, at most `MAX_ATTRIBUTES`, in the order given.
    pub attributes: Vec<(String, String)>,
    pub refused: Refusals,
}

impl FromEnvironment {
    /// From the process's `KEY=VALUE` environment entries (the last of a repeated variable
    /// wins, as in Python's `os.environ`, where OpenTelemetry's SDK reads them).
    pub fn vet<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> FromEnvironment {
        let (mut service, mut attributes) = (None, None);
        for (k, v) in vars {
            match k {
                "OTEL_SERVICE_NAME" if !v.is_empty() => service = Some(v),
                "OTEL_RESOURCE_ATTRIBUTES" if !v.is_empty() => attributes = Some(v),
                _ => {}
            }
        }
        FromEnvironment::from_variables(service, attributes)
    }

    pub fn from_variables(service: Option<&str>, attributes: Option<&str>) -> FromEnvironment {
        let mut out = FromEnvironment::default();
        let mut attributes_service = None;
        if let Some(list) = attributes {
            out.parse_list(list, &mut attributes_service);
        }
        out.service_name = match service {
            Some(s) if s.len() > MAX_VALUE_BYTES => {
                out.refused.add(Refusal::TooLong, 1);
                None
            }
            Some(s) if s.chars().any(char::is_control) => {
                out.refused.add(Refusal::Invalid, 1);
                None
            }
            Some(s) => Some(s.to_string()),
            None => None,
        }
        .or(attributes_service);
        out
    }

    /// `key1=value1,key2=value2` with percent-encoded values; `service.name` goes to
    /// `service`.
    fn parse_list(&mut self, list: &str, service: &mut Option<String>) {
        let mut kept = list;
        if list.len() > MAX_VARIABLE_BYTES {
            // Up to the last whole entry within the bound; what follows is counted, not read.
            let mut end = MAX_VARIABLE_BYTES;
            while !list.is_char_boundary(end) {
                end -= 1;
            }
            let cut = list[..end].rfind(',').unwrap_or(0);
            kept = &list[..cut];
            let rest = list[cut..]
                .split(',')
                .filter(|e| !e.trim().is_empty())
                .count();
            self.refused.add(Refusal::TooLong, rest as u64);
        }
        let mut labels: Vec<String> = Vec::new();
        for entry in kept.split(',') {
            if entry.trim().is_empty() {
                continue;
            }
            match self.vet_entry(entry, &labels) {
                Ok((key, value, _)) if key == attrs::SERVICE_NAME => {
                    if service.is_none() {
                        *service = Some(value);
                    } else {
                        self.refused.add(Refusal::Duplicate, 1);
                    }
                }
                Ok(_) if self.attributes.len() >= MAX_ATTRIBUTES => {
                    self.refused.add(Refusal::TooMany, 1)
                }
                Ok((key, value, label)) => {
                    labels.push(label);
                    self.attributes.push((key, value));
                }
                Err(why) => self.refused.add(why, 1),
            }
        }
    }

    /// One `key=value` entry: (key, decoded value, label name) or why it is refused.
    fn vet_entry(
        &self,
        entry: &str,
        labels: &[String],
    ) -> Result<(String, String, String), Refusal> {
        let (key, value) = entry.split_once('=').ok_or(Refusal::Invalid)?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(Refusal::Invalid);
        }
        // Percent-encoding makes a value at most three times shorter.
        if key.len() > MAX_KEY_BYTES || value.len() > 3 * MAX_VALUE_BYTES {
            return Err(Refusal::TooLong);
        }
        let value = percent_decode(value);
        if value.len() > MAX_VALUE_BYTES {
            return Err(Refusal::TooLong);
        }
        if value.chars().any(char::is_control) {
            return Err(Refusal::Invalid);
        }
        if key == attrs::SERVICE_NAME {
            return Ok((key.to_string(), value, String::new()));
        }
        let label = label_name(key);
        if reserved(&label) {
            return Err(Refusal::Reserved);
        }
        if labels.contains(&label) {
            return Err(Refusal::Duplicate);
        }
        Ok((key.to_string(), value, label))
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vet(attributes: &str) -> FromEnvironment {
        FromEnvironment::from_variables(None, Some(attributes))
    }

    #[test]
    fn derived_and_reserved_names_are_refused() {
        let e = vet(
            "le=x,quantile=q,job=j,instance=i,__name__=n,process.pid=1,process_pid=1,\
             host.name=evil,k8s.pod.name=x,container.id=c,telemetry.sdk.name=s,\
             service.instance.id=i,service_name=s,cpython.gc.generation=9,outcome=o,\
             deployment.environment=prod",
        );
        assert_eq!(
            e.attributes,
            vec![("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(e.refused.get(Refusal::Reserved), 15);
        assert_eq!(e.refused.total(), 15);
    }

    #[test]
    fn counts_and_sizes_are_bounded() {
        let many: Vec<String> = (0..10_000).map(|i| format!("a{i}=v")).collect();
        let e = vet(&many.join(","));
        assert_eq!(e.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(e.attributes[0], ("a0".into(), "v".into()));
        // Those within the variable's first 4 KiB beyond the 32nd, and those after it.
        assert_eq!(e.refused.total(), 10_000 - MAX_ATTRIBUTES as u64);
        assert!(e.refused.get(Refusal::TooLong) > 0);
        assert!(e.refused.get(Refusal::TooMany) > 0);

        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        let e = vet(&format!("{long_key}=1,a={long_value},b=ok"));
        assert_eq!(e.attributes, vec![("b".into(), "ok".into())]);
        assert_eq!(e.refused.get(Refusal::TooLong), 2);

        let e = FromEnvironment::from_variables(Some(&long_value), Some("service.name=x"));
        assert_eq!(e.service_name.as_deref(), Some("x"));
        assert_eq!(e.refused.get(Refusal::TooLong), 1);
    }

    #[test]
    fn malformed_and_colliding_entries_are_counted() {
        let e = vet("broken,=x,a.b=1,a_b=2,c=%zz,d=bad%07,bad\nkey=1,x{y}=\"z\"");
        assert_eq!(
            e.attributes,
            vec![
                ("a.b".into(), "1".into()),
                ("c".into(), "%zz".into()),
                ("x{y}".into(), "\"z\"".into()),
            ]
        );
        assert_eq!(e.refused.get(Refusal::Invalid), 4);
        assert_eq!(e.refused.get(Refusal::Duplicate), 1);
    }

    #[test]
    fn the_service_name_variable_wins() {
        let e = FromEnvironment::vet(
            [
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=attrs,team=a%20b"),
                ("OTEL_SERVICE_NAME", "shop"),
            ]
            .into_iter(),
        );
        assert_eq!(e.service_name.as_deref(), Some("shop"));
        assert_eq!(e.attributes, vec![("team".into(), "a b".into())]);
    }
}
