//! One OTLP resource per traced process: `service.name` from the process's own
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (read from /proc/PID/environ, vetted by
//! `env_attributes`), process and runtime attributes, and the host.
//!
//! Over 500 lines only with its tests (110), which check the precedence of each source.
use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::attrs;
use super::env_attributes::FromEnvironment;
use crate::discover::process;

/// Bytes of /proc/PID/environ scanned for the OTEL_* variables (the kernel bounds an
/// environment too, but by the stack limit, which the process sets).
const MAX_ENVIRON_BYTES: u64 = 8 << 20;
/// Bytes of one environment entry read (the kernel's limit at exec, MAX_ARG_STRLEN; a
/// process can rewrite its environment since).
const MAX_ENTRY_BYTES: u64 = 128 << 10;
/// Bytes of a command line kept (`process.command_line`, opt-in).
const MAX_COMMAND_LINE_BYTES: usize = 4096;

/// What pyusdt knows of a process when it first sees one of its events.
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    /// What the process's own environment says (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES),
    /// bounded and vetted.
    pub env: FromEnvironment,
    pub executable_path: Option<String>,
    /// When the path is unknown (the process exited): the kernel's `comm` of the process.
    pub executable_name: Option<String>,
    pub command_line: Option<String>,
    /// CPython version of the interpreter file it runs, when known.
    pub runtime_version: Option<String>,
    /// `container.id` and, in Kubernetes, the pod's attributes (`k8s.*`).
    pub container: Vec<(String, String)>,
    /// `service.name` derived from the pod (annotation, labels, owner, pod name), used when
    /// the process does not set its own.
    pub k8s_service_name: Option<String>,
}

impl ProcessFacts {
    /// What the BPF side copied from the process at its first event (right even when it has
    /// exited since), completed from /proc/PID when `read_proc` (its PID is ours): the
    /// executable's path, and the environment when the copy was truncated.
    pub fn from_record(record: &crate::decode::ProcessRecord<'_>, read_proc: bool) -> Self {
        let proc_facts = read_proc
            .then(|| ProcessFacts::read(record.pid))
            .filter(|f| f.executable_path.is_some());
        let mut facts = ProcessFacts {
            pid: record.pid,
            command_line: record.command_line().map(bounded_command_line),
            executable_name: Some(record.comm.to_string()),
            ..Default::default()
        };
        match &proc_facts {
            // An incomplete copy may miss variables that /proc still has. An empty complete
            // one means the process has no OTEL_* variable (the BPF side copies only those).
            Some(p) if record.env_truncated => {
                facts.env = p.env.clone();
            }
            _ => facts.env = FromEnvironment::vet(record.environment()),
        }
        if let Some(p) = proc_facts {
            facts.executable_path = p.executable_path;
        }
        facts
    }

    /// The vetted environment of a described process, as `from_record` takes it, without the
    /// rest: for counting what it refused, once per description.
    pub fn environment_of(
        record: &crate::decode::ProcessRecord<'_>,
        read_proc: bool,
    ) -> FromEnvironment {
        if read_proc && (record.env_truncated || record.env.is_empty()) {
            if let Some(env) = read_environment(record.pid) {
                return env;
            }
        }
        FromEnvironment::vet(record.environment())
    }

    /// Adds the container and pod of the process, from its /proc/PID/cgroup: `container.id`
    /// whatever the runtime, and with `pods` (the node's pods, in Kubernetes) the pod's
    /// attributes and a `service.name` for it.
    pub fn add_container(&mut self, pods: Option<&crate::k8s::cache::PodCacheHandle>) {
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)) else {
            return;
        };
        if let Some((pod, name, id)) = pods.and_then(|p| p.lookup_cgroup(&cgroup)) {
            self.container = crate::k8s::metadata::attributes(&pod, id.as_deref().unwrap_or(""));
            self.k8s_service_name = Some(crate::k8s::metadata::service_name(
                &pod,
                name.as_deref().unwrap_or(""),
            ));
        } else if let Some(id) = crate::k8s::cgroup::container_id(&cgroup) {
            self.container = vec![(attrs::CONTAINER_ID.into(), id)];
        }
    }

    /// Reads /proc/PID (environ, exe, cmdline). A process that already exited yields only its PID.
    pub fn read(pid: u32) -> ProcessFacts {
        let mut facts = ProcessFacts {
            pid,
            ..Default::default()
        };
        if let Some(env) = read_environment(pid) {
            facts.env = env;
        }
        facts.executable_path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mut cmdline = Vec::new();
        facts.command_line = std::fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|f| {
                f.take(MAX_COMMAND_LINE_BYTES as u64 + 1)
                    .read_to_end(&mut cmdline)
            })
            .ok()
            .and_then(|_| process::join_argv(&cmdline))
            .map(bounded_command_line);
        facts
    }
}

/// The OTEL_* variables of /proc/PID/environ, vetted. Entries are read one at a time, at most
/// `MAX_ENTRY_BYTES` of each (the rest of a longer one is skipped), and only the two variables
/// used are kept; empty ones are ignored, as in `FromEnvironment::vet`.
fn read_environment(pid: u32) -> Option<FromEnvironment> {
    let file = std::fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut reader = std::io::BufReader::new(file.take(MAX_ENVIRON_BYTES));
    let (mut service, mut attributes) = (None, None);
    let mut entry = Vec::new();
    loop {
        entry.clear();
        match (&mut reader)
            .take(MAX_ENTRY_BYTES)
            .read_until(0, &mut entry)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let kv = match entry.strip_suffix(&[0]) {
            Some(kv) => kv,
            None => {
                // Cut at the bound: the rest of the entry is not read into memory.
                let _ = reader.skip_until(0);
                &entry
            }
        };
        let value = |prefix: &[u8]| {
            kv.strip_prefix(prefix)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if let Some(v) = value(b"OTEL_SERVICE_NAME=") {
            service = Some(v);
        } else if let Some(v) = value(b"OTEL_RESOURCE_ATTRIBUTES=") {
            attributes = Some(v);
        }
    }
    Some(FromEnvironment::from_variables(
        service.as_deref(),
        attributes.as_deref(),
    ))
}

/// A command line cut to `MAX_COMMAND_LINE_BYTES` (at a character boundary).
fn bounded_command_line(mut c: String) -> String {
    if c.len() > MAX_COMMAND_LINE_BYTES {
        let mut end = MAX_COMMAND_LINE_BYTES;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// Builds the resource of a process. `with_command_line`: `process.command_line` is opt-in
/// (command lines can carry secrets).
pub fn build(facts: &ProcessFacts, host_name: &str, with_command_line: bool) -> Resource {
    let mut attributes: Vec<KeyValue> = Vec::new();
    let exe_name = facts
        .executable_path
        .as_deref()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| facts.executable_name.clone());
    let service_name = facts
        .env
        .service_name
        .clone()
        .or_else(|| facts.k8s_service_name.clone())
        .unwrap_or_else(|| match &exe_name {
            Some(n) => format!("unknown_service:{n}"),
            None => "unknown_service".into(),
        });
    attributes.push(attrs::string(attrs::SERVICE_NAME, service_name));
    attributes.push(attrs::int(attrs::PROCESS_PID, i64::from(facts.pid)));
    if let Some(path) = &facts.executable_path {
        attributes.push(attrs::string(attrs::PROCESS_EXECUTABLE_PATH, path.clone()));
    }
    if let Some(name) = exe_name {
        attributes.push(attrs::string(attrs::PROCESS_EXECUTABLE_NAME, name));
    }
    attributes.push(attrs::string(attrs::PROCESS_RUNTIME_NAME, "cpython"));
    if let Some(v) = &facts.runtime_version {
        attributes.push(attrs::string(attrs::PROCESS_RUNTIME_VERSION, v.clone()));
    }
    if !host_name.is_empty() {
        attributes.push(attrs::string(attrs::HOST_NAME, host_name));
    }
    for (k, v) in &facts.container {
        attributes.push(attrs::string(k, v.clone()));
    }
    // A process outside any pod (or whose pod is not known yet) still runs on this node.
    if !attributes.iter().any(|kv| kv.key == attrs::K8S_NODE_NAME) {
        if let Some(node) = node_name() {
            attributes.push(attrs::string(attrs::K8S_NODE_NAME, node));
        }
    }
    if with_command_line {
        if let Some(c) = &facts.command_line {
            // Command lines carry secrets (--password …): redacted, like audit arguments.
            attributes.push(attrs::string(
                attrs::PROCESS_COMMAND_LINE,
                super::redact::redact(c).into_owned(),
            ));
        }
    }
    // The process's own attributes never take a name pyusdt derives (env_attributes refuses
    // those namespaces); a pod label or annotation that does is dropped here too.
    for (k, v) in &facts.env.attributes {
        if !attributes.iter().any(|kv| kv.key == *k) {
            attributes.push(attrs::string(k, v.clone()));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The resource pyusdt reports its own telemetry under.
pub fn own(host_name: &str) -> Resource {
    let mut attributes = vec![
        attrs::string(attrs::SERVICE_NAME, "pyusdt"),
        attrs::string(attrs::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
        attrs::int(attrs::PROCESS_PID, i64::from(std::process::id())),
    ];
    if !host_name.is_empty() {
        attributes.push(attrs::string(attrs::HOST_NAME, host_name));
    }
    if let Some(node) = node_name() {
        attributes.push(attrs::string(attrs::K8S_NODE_NAME, node));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (the OTEL_RESOURCE_ATTRIBUTES format)
/// of pyusdt's own environment (trusted: a traced process's goes through `env_attributes`).
/// Malformed entries are skipped, as the specification asks.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| {
                (
                    k.to_string(),
                    super::env_attributes::percent_decode(v.trim()),
                )
            })
        })
        .collect()
}

/// This host's name, as `host.name` wants it: in Kubernetes the node's name (the agent's pod
/// has its own UTS namespace, whose hostname is the pod's, e.g. `pyusdt-x7k2p`), else the
/// kernel's hostname.
pub fn host_name() -> String {
    node_name().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// The node's name from `K8S_NODE_NAME` (the DaemonSet sets it from `spec.nodeName`), when it
/// is a valid Kubernetes node name.
pub fn node_name() -> Option<String> {
    valid_node_name(&std::env::var(crate::k8s::watch::NODE_NAME_ENV).ok()?)
}

/// A DNS subdomain (RFC 1123, at most 253 characters), as Kubernetes requires of node names;
/// anything else is ignored rather than exported.
fn valid_node_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    ok.then(|| name.to_string())
}

/// Resources of the processes seen so far, read once per process.
pub struct Resources {
    by_pid: HashMap<u32, Resource>,
    /// False when event PIDs belong to another PID namespace: /proc/PID would be another process.
    read_proc: bool,
    host_name: String,
    with_command_line: bool,
    /// Finds the CPython version of a process (from the interpreter files it maps).
    runtime_version: Box<dyn Fn(u32) -> Option<String>>,
    /// The node's pods (agent in Kubernetes): pod attributes and service.name per process.
    pods: Option<crate::k8s::cache::PodCacheHandle>,
}

impl Resources {
    pub fn new(
        with_command_line: bool,
        runtime_version: Box<dyn Fn(u32) -> Option<String>>,
    ) -> Resources {
        Resources {
            by_pid: HashMap::new(),
            read_proc: true,
            host_name: host_name(),
            with_command_line,
            runtime_version,
            pods: None,
        }
    }

    /// Adds pod metadata to the resources of processes seen from now on.
    pub fn set_pods(&mut self, pods: crate::k8s::cache::PodCacheHandle) {
        self.pods = Some(pods);
    }

    /// Records what is known of a process (its BPF description), with its container and pod.
    pub fn seed(&mut self, mut facts: ProcessFacts) {
        if self.read_proc {
            facts.add_container(self.pods.as_ref());
        }
        let r = build(&facts, &self.host_name, self.with_command_line);
        self.by_pid.insert(facts.pid, r);
    }

    /// Stops reading /proc for processes (their PIDs are not ours).
    pub fn never_read_proc(&mut self) {
        self.read_proc = false;
    }

    /// As `seed`, looking up the runtime version when the facts lack it.
    pub fn seed_with_version(&mut self, mut facts: ProcessFacts) {
        if facts.runtime_version.is_none() && self.read_proc {
            facts.runtime_version = (self.runtime_version)(facts.pid);
        }
        self.seed(facts);
    }

    pub fn get(&mut self, pid: u32) -> &Resource {
        let Resources {
            by_pid,
            read_proc,
            host_name,
            with_command_line,
            runtime_version,
            pods,
        } = self;
        // Without a BPF description (the ring buffer had no room for it): /proc, if it is ours.
        by_pid.entry(pid).or_insert_with(|| {
            let facts = if *read_proc {
                let mut f = ProcessFacts::read(pid);
                f.runtime_version = runtime_version(pid);
                f.add_container(pods.as_ref());
                f
            } else {
                ProcessFacts {
                    pid,
                    ..Default::default()
                }
            };
            build(&facts, host_name, *with_command_line)
        })
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// Forgets a process that exited (its PID may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["node-1", "ip-10-0-0-5.eu-west-1.compute.internal", "a"] {
            assert_eq!(valid_node_name(good).as_deref(), Some(good));
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "Node",
            "-a",
            "a-",
            "a..b",
            "a b",
            "a/b",
            "n\n",
            long.as_str(),
        ] {
            assert_eq!(valid_node_name(bad), None, "{bad:?}");
        }
    }

    fn get<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                    Some(s.as_str())
                }
                _ => None,
            }
        })
    }

    #[test]
    fn service_name_precedence() {
        let mut f = ProcessFacts {
            pid: 7,
            executable_path: Some("/usr/bin/python3.11".into()),
            ..Default::default()
        };
        assert_eq!(
            get(&build(&f, "h", false), "service.name"),
            Some("unknown_service:python3.11")
        );
        f.env = FromEnvironment::from_variables(
            None,
            Some("service.name=from-attrs,deployment.environment=prod%20eu"),
        );
        let r = build(&f, "h", false);
        assert_eq!(get(&r, "service.name"), Some("from-attrs"));
        assert_eq!(get(&r, "deployment.environment"), Some("prod eu"));
        f.env = FromEnvironment::from_variables(
            Some("checkout"),
            Some("service.name=from-attrs,deployment.environment=prod%20eu"),
        );
        let r = build(&f, "h", false);
        assert_eq!(get(&r, "service.name"), Some("checkout"));
        assert_eq!(
            r.attributes
                .iter()
                .filter(|kv| kv.key == "service.name")
                .count(),
            1
        );
        assert_eq!(get(&r, "process.command_line"), None);
    }

    #[test]
    fn the_environment_is_read_from_proc_and_vetted() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("FILLER", "x".repeat(100 << 10))
            .env("OTEL_SERVICE_NAME", "from-proc")
            .env("OTEL_RESOURCE_ATTRIBUTES", "team=a,le=x,host.name=evil")
            .spawn()
            .unwrap();
        // Until the child has exec'd (and the kernel has set its new environment up), its
        // environment is the test's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let env = loop {
            let env = read_environment(child.id());
            let done = env.as_ref().is_some_and(|e| e.service_name.is_some());
            if done || std::time::Instant::now() > deadline {
                break env;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        let env = env.unwrap();
        assert_eq!(env.service_name.as_deref(), Some("from-proc"));
        assert_eq!(env.attributes, vec![("team".into(), "a".into())]);
        assert_eq!(env.refused.total(), 2);
    }

    #[test]
    fn resource_attribute_parsing_skips_malformed() {
        let v = parse_resource_attributes("a=1,broken,=x, b = 2%2C3 ,c=%zz");
        assert_eq!(
            v,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2,3".into()),
                ("c".into(), "%zz".into())
            ]
        );
    }
}
