//! Kubernetes pod metadata against a real kube-rs client: the pod watch of `src/k8s/` talks HTTP
//! to an API server stand-in on 127.0.0.1 that answers list and watch requests as the API server
//! does, with Kubernetes JSON in tests/fixtures/k8s/.
//!
//! What this covers: the request kube-rs sends (the node's field selector, list then watch from
//! the list's resourceVersion), decoding of real Pod JSON, the pod/container/owner lookups by
//! container ID and cgroup text, service.name derivation for each kind of pod, MODIFIED and
//! DELETED events, and the error path (403, connection refused: logged once, retried, no panic).
//! What it does not: no cluster is available here, so the fixtures were written in the shape
//! of `GET /api/v1/pods` of a kind cluster (Kubernetes 1.30) rather than recorded from one (each
//! pod passed `kubernetes-validate --strict -k 1.30.0`, checked once by hand), and
//! authentication and TLS to a real API server are not exercised.
// The module is self-contained (it uses nothing else of pyusdt), so the test compiles it as is.
#[path = "../src/k8s/mod.rs"]
mod k8s;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s::cache::PodCacheHandle;
use k8s::metadata::{attributes, service_name, WorkloadKind};
use serde_json::Value;

const NODE: &str = "kind-worker";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k8s");
/// Long enough for a loaded 2-core CI machine; each wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// The container ID (without `containerd://`) of a container of a pod in the fixture JSON.
fn container_id_in(pod: &Value, container: &str) -> String {
    let status = &pod["status"];
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| status[k].as_array().into_iter().flatten())
        .find(|c| c["name"] == container)
        .and_then(|c| c["containerID"].as_str())
        .and_then(|id| id.strip_prefix("containerd://"))
        .unwrap_or_else(|| panic!("no container {container} in fixture"))
        .to_string()
}

fn pod_in<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("no pod {name} in fixture"))
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The API server stand-in.

/// One request as the server saw it: path and decoded query parameters.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    query: HashMap<String, String>,
}

impl Request {
    fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }
}

/// What the list endpoint answers: the PodList (filtered by the request's field selector, as
/// the API server does), or an error status.
#[derive(Clone)]
enum ListAnswer {
    Pods(Value),
    Status(u16, &'static str),
}

/// What the open watch stream sends next.
enum WatchMessage {
    /// One watch event, a `{"type":…,"object":…}` document.
    Event(String),
    /// The end of the response, as the API server ends a watch at its `timeoutSeconds`.
    End,
}

struct ApiServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    events: Sender<WatchMessage>,
}

impl ApiServer {
    fn start(answer: ListAnswer) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (events, receiver) = mpsc::channel::<WatchMessage>();
        let receiver = Arc::new(Mutex::new(receiver));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, receiver, answer) =
                    (Arc::clone(&log), Arc::clone(&receiver), answer.clone());
                std::thread::spawn(move || serve_connection(stream, &log, &receiver, &answer));
            }
        });
        ApiServer {
            url,
            requests,
            events,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("request log").clone()
    }

    /// Sends one watch event (a `{"type":…,"object":…}` document) to the open watch.
    fn send_event(&self, event: &Value) {
        let event = serde_json::to_string(event).expect("event serializes");
        self.events
            .send(WatchMessage::Event(event))
            .expect("watch stream alive");
    }

    fn end_watch(&self) {
        self.events
            .send(WatchMessage::End)
            .expect("watch stream alive");
    }
}

/// HTTP/1.1 with keep-alive: kube-rs sends the list and then the watch, possibly on one connection.
fn serve_connection(
    stream: TcpStream,
    log: &Mutex<Vec<Request>>,
    events: &Mutex<Receiver<WatchMessage>>,
    answer: &ListAnswer,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut out = stream;
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        log.lock().expect("request log").push(request.clone());
        let written = if request.path != "/api/v1/pods" {
            respond(
                &mut out,
                404,
                &status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
        } else if request.is_watch() {
            return stream_events(&mut out, events);
        } else {
            match answer {
                ListAnswer::Pods(list) => respond(&mut out, 200, &filter_by_node(list, &request)),
                ListAnswer::Status(code, reason) => respond(
                    &mut out,
                    *code,
                    &status_json(*code, reason, "pods is forbidden: User \"system:serviceaccount:pyusdt:pyusdt\" cannot list resource \"pods\" in API group \"\" at the cluster scope"),
                ),
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// Reads a request head (GET requests have no body). `None` at end of stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1)?.to_string();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    Some(Request {
        path: path.to_string(),
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The API server applies `fieldSelector=spec.nodeName=<node>`; so does the stand-in.
fn filter_by_node(list: &Value, request: &Request) -> String {
    let mut list = list.clone();
    let node = request
        .query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    if let (Some(node), Some(items)) = (node, list["items"].as_array_mut()) {
        items.retain(|p| p["spec"]["nodeName"] == node.as_str());
    }
    list.to_string()
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "details": {"kind": "pods"},
        "code": code,
    })
    .to_string()
}

fn respond(out: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

/// A watch answer: chunked, one JSON event per line, open until the test process ends (the API
/// server keeps it open up to timeoutSeconds).
fn stream_events(out: &mut TcpStream, events: &Mutex<Receiver<WatchMessage>>) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return;
    }
    loop {
        let next = events
            .lock()
            .expect("event queue")
            .recv_timeout(Duration::from_millis(50));
        match next {
            Ok(WatchMessage::Event(event)) => {
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if out
                    .write_all(chunk.as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    return;
                }
            }
            Ok(WatchMessage::End) => {
                let _ = out.write_all(b"0\r\n\r\n").and_then(|_| out.flush());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn start_watch(url: &str) -> PodCacheHandle {
    let config = kube::Config::new(url.parse::<http::Uri>().expect("server URL"));
    k8s::watch::start_with(config, NODE).expect("pod watch starts")
}

// ---------------------------------------------------------------------------------------------
// Captured log lines, to check that a failure is reported once while it is retried.

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
}

/// Our warnings (not kube-rs's own) that contain `needle`.
fn warnings_containing(needle: &str) -> usize {
    let text = String::from_utf8_lossy(&logs().0.lock().expect("log buffer")).into_owned();
    text.lines()
        .filter(|l| l.contains(" WARN ") && l.contains("k8s: ") && l.contains(needle))
        .count()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn node_pods_are_listed_watched_and_looked_up() {
    logs();
    let list = fixture("podlist.json");
    let server = ApiServer::start(ListAnswer::Pods(list.clone()));
    let cache = start_watch(&server.url);
    wait_until("the first list is in the cache", || cache.is_synced());

    // The request kube-rs made: the node's pods only, list then watch from the list's version.
    wait_until("the watch request arrives", || {
        server.requests().iter().any(Request::is_watch)
    });
    let requests = server.requests();
    let first = &requests[0];
    assert_eq!(first.path, "/api/v1/pods", "{requests:?}");
    assert!(!first.is_watch(), "list first: {first:?}");
    assert_eq!(
        first.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=kind-worker"),
        "{first:?}"
    );
    // Served from the API server's watch cache, not etcd: resourceVersion=0, unpaged.
    assert_eq!(
        first.query.get("resourceVersion").map(String::as_str),
        Some("0"),
        "{first:?}"
    );
    assert_eq!(first.query.get("limit"), None, "{first:?}");
    let watch = requests
        .iter()
        .find(|r| r.is_watch())
        .expect("watch request");
    assert_eq!(
        watch.query.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=kind-worker")
    );
    assert_eq!(
        watch.query.get("resourceVersion").map(String::as_str),
        Some("48213"),
        "the watch resumes from the list's resourceVersion: {watch:?}"
    );
    // Only this node's pods (the fixture has 8, one on kind-worker2).
    assert_eq!(cache.len(), 7);
    let other_node = pod_in(&list, "checkout-6d9c7b8f5d-b9t4v");
    assert!(cache
        .lookup_by_container_id(&container_id_in(other_node, "app"))
        .is_none());

    // Deployment-owned pod with two containers and an init container.
    let checkout = pod_in(&list, "checkout-6d9c7b8f5d-x7k2p");
    let (pod, container) = cache
        .lookup_by_container_id(&container_id_in(checkout, "app"))
        .expect("checkout app container");
    assert_eq!(container, "app");
    assert_eq!(pod.pod_name, "checkout-6d9c7b8f5d-x7k2p");
    assert_eq!(pod.namespace, "shop");
    assert_eq!(pod.node_name, NODE);
    assert_eq!(pod.pod_uid, checkout["metadata"]["uid"].as_str().unwrap());
    assert_eq!(
        pod.controller,
        Some((WorkloadKind::ReplicaSet, "checkout-6d9c7b8f5d".into()))
    );
    assert_eq!(
        pod.owner,
        Some((WorkloadKind::Deployment, "checkout".into()))
    );
    assert_eq!(service_name(&pod, &container), "checkout");
    for sibling in ["log-shipper", "migrate"] {
        let (p, c) = cache
            .lookup_by_container_id(&container_id_in(checkout, sibling))
            .expect("sibling container");
        assert_eq!(
            (p.pod_name.as_str(), c.as_str()),
            (pod.pod_name.as_str(), sibling)
        );
    }
    let app_id = container_id_in(checkout, "app");
    let attrs: HashMap<String, String> = attributes(&pod, &app_id).into_iter().collect();
    let expected = [
        ("k8s.pod.name", "checkout-6d9c7b8f5d-x7k2p"),
        ("k8s.pod.uid", pod.pod_uid.as_str()),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", NODE),
        ("k8s.container.name", "app"),
        ("k8s.replicaset.name", "checkout-6d9c7b8f5d"),
        ("k8s.deployment.name", "checkout"),
        ("container.id", app_id.as_str()),
    ];
    assert_eq!(attrs.len(), expected.len(), "{attrs:?}");
    for (k, v) in expected {
        assert_eq!(attrs.get(k).map(String::as_str), Some(v), "{k}");
    }

    // The same pod found from a process's /proc/PID/cgroup (containerd, systemd driver, v2).
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{app_id}.scope\n",
        pod.pod_uid.replace('-', "_")
    );
    let (p, c, id) = cache.lookup_cgroup(&cgroup).expect("cgroup lookup");
    assert_eq!(
        (p.pod_name.as_str(), c.as_deref(), id.as_deref()),
        (pod.pod_name.as_str(), Some("app"), Some(app_id.as_str()))
    );
    // A container the kubelet has not reported yet: the pod is still found by its UID.
    let unreported = cgroup.replace(&app_id, &"e".repeat(64));
    let (p, c, _) = cache.lookup_cgroup(&unreported).expect("pod by UID");
    assert_eq!((p.pod_name.as_str(), c), (pod.pod_name.as_str(), None));

    // service.name and owner for each kind of pod.
    let cases = [
        // (pod, container, service.name, owner)
        (
            "ledger-0",
            "ledger",
            "ledger",
            Some((WorkloadKind::StatefulSet, "ledger")),
        ),
        (
            "nightly-report-29034720-4xq8w",
            "report",
            "nightly-report",
            Some((WorkloadKind::CronJob, "nightly-report")),
        ),
        ("debug-shell", "debug-shell", "debug-shell", None),
        (
            "payments-worker-5f4b8c7d9b-q2w8e",
            "worker",
            "payments", // the resource.opentelemetry.io/service.name annotation
            Some((WorkloadKind::Deployment, "payments-worker")),
        ),
        (
            "inventory-api-78c5d9b6f4-lm3zt",
            "api",
            "inventory-prod", // app.kubernetes.io/instance before app.kubernetes.io/name
            Some((WorkloadKind::Deployment, "inventory-api")),
        ),
        (
            "prometheus-node-exporter-8r7xt",
            "node-exporter",
            "node-exporter", // app.kubernetes.io/name before the DaemonSet's name
            Some((WorkloadKind::DaemonSet, "prometheus-node-exporter")),
        ),
    ];
    for (pod_name, container_name, service, owner) in cases {
        let id = container_id_in(pod_in(&list, pod_name), container_name);
        let (pod, container) = cache
            .lookup_by_container_id(&id)
            .unwrap_or_else(|| panic!("{pod_name} in cache"));
        assert_eq!(pod.pod_name, pod_name);
        assert_eq!(container, container_name);
        assert_eq!(service_name(&pod, &container), service, "{pod_name}");
        assert_eq!(
            pod.owner.as_ref().map(|(k, n)| (*k, n.as_str())),
            owner,
            "{pod_name}"
        );
    }
    let report = cache
        .lookup_by_container_id(&container_id_in(
            pod_in(&list, "nightly-report-29034720-4xq8w"),
            "report",
        ))
        .expect("report pod")
        .0;
    let report_attrs = attributes(&report, "");
    assert!(report_attrs.contains(&("k8s.job.name".into(), "nightly-report-29034720".into())));
    assert!(report_attrs.contains(&("k8s.cronjob.name".into(), "nightly-report".into())));

    // MODIFIED: checkout's app container restarted with a new ID.
    let modified = fixture("watch-modified.json");
    let new_id = container_id_in(&modified["object"], "app");
    assert_ne!(new_id, app_id);
    server.send_event(&modified);
    wait_until("the restarted container is known", || {
        cache.lookup_by_container_id(&new_id).is_some()
    });
    assert!(
        cache.lookup_by_container_id(&app_id).is_none(),
        "old ID forgotten"
    );
    assert_eq!(
        cache
            .lookup_by_container_id(&new_id)
            .map(|(p, c)| (p.pod_name.clone(), c)),
        Some(("checkout-6d9c7b8f5d-x7k2p".into(), "app".into()))
    );

    // The API server ends the watch (its timeoutSeconds): kube watches again from the last
    // resourceVersion it saw, that of the MODIFIED event, without a new list.
    let watches = |s: &ApiServer| s.requests().into_iter().filter(Request::is_watch).count();
    let lists_before = server.requests().len() - watches(&server);
    server.end_watch();
    wait_until("the watch is resumed", || watches(&server) == 2);
    let resumed = server
        .requests()
        .into_iter()
        .rfind(Request::is_watch)
        .unwrap();
    assert_eq!(
        resumed.query.get("resourceVersion").map(String::as_str),
        Some(
            modified["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
        ),
        "{resumed:?}"
    );
    assert_eq!(
        server.requests().len() - watches(&server),
        lists_before,
        "no re-list"
    );

    // DELETED: the report Job's pod goes away.
    let deleted = fixture("watch-deleted.json");
    let report_uid = deleted["object"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cache.lookup_by_pod_uid(&report_uid).is_some());
    server.send_event(&deleted);
    wait_until("the deleted pod is gone", || {
        cache.lookup_by_pod_uid(&report_uid).is_none()
    });
    assert_eq!(cache.len(), 6);
}

#[test]
fn forbidden_is_reported_once_and_retried() {
    logs();
    let server = ApiServer::start(ListAnswer::Status(403, "Forbidden"));
    let cache = start_watch(&server.url);
    // kube's backoff retries after ≈0.8 s, then ≈1.6 s: wait for the second retry.
    wait_until("the list is retried twice", || server.requests().len() >= 3);
    assert!(!cache.is_synced());
    assert_eq!(cache.len(), 0);
    assert_eq!(
        warnings_containing("403 Forbidden"),
        1,
        "one warning for the episode"
    );
    assert_eq!(
        warnings_containing("needs get, list and watch on pods"),
        1,
        "the warning says what to do"
    );
}

#[test]
fn unreachable_api_server_is_reported_once_and_retried() {
    logs();
    // A port that was just free: connections are refused.
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        format!("http://{}", listener.local_addr().expect("local addr"))
    };
    let cache = start_watch(&url);
    let needle = format!("cannot reach the API server at {url}");
    wait_until("the failure is logged", || {
        warnings_containing(&needle) == 1
    });
    // Two more attempts (≈0.8 s, ≈1.6 s with jitter) must not log it again at warning level.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(warnings_containing(&needle), 1);
    assert!(!cache.is_synced());
    let text = String::from_utf8_lossy(&logs().0.lock().expect("log buffer")).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("still failing") && l.contains(&url)),
        "retries are logged at debug"
    );
}

#[test]
fn no_kubernetes_no_metadata() {
    // This test binary runs outside a cluster: without the pod environment there is no watch.
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
        && std::env::var_os("KUBECONFIG").is_none()
    {
        assert!(k8s::watch::start().is_none());
    }
}
